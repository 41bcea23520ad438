"""The seed's six integration results, over gRPC against a real server and PostgreSQL."""

from __future__ import annotations

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from parley.sessions.v1 import sessions_pb2 as pb
from parley.sessions.v1 import sessions_service_pb2 as api
from tests.conftest import expect_error


def text(value: str) -> list[pb.ContentPart]:
    return [pb.ContentPart(text=value)]


async def test_the_seed_flow(sessions_stub, as_user):
    me = as_user("seed-user")

    # 1. Create a chat session.
    session = await sessions_stub.CreateSession(api.CreateSessionRequest(title="Planning", metadata={"team": "core"}), metadata=me)
    assert session.id and session.title == "Planning"
    assert session.status == pb.SESSION_STATUS_ACTIVE
    assert session.user_id == "seed-user"

    # 2. Add user and assistant messages.
    question = await sessions_stub.CreateMessage(
        api.CreateMessageRequest(session_id=session.id, role=pb.ROLE_USER, content=text("What is RLS?")), metadata=me
    )
    answer = await sessions_stub.CreateMessage(
        api.CreateMessageRequest(session_id=session.id, role=pb.ROLE_ASSISTANT, content=text("Row-level security.")),
        metadata=me,
    )
    assert question.role == pb.ROLE_USER and answer.role == pb.ROLE_ASSISTANT

    # 3. Fetch the messages of the session, in order.
    listed = await sessions_stub.ListMessages(api.ListMessagesRequest(session_id=session.id), metadata=me)
    assert [m.id for m in listed.messages] == [question.id, answer.id]
    assert listed.messages[0].content[0].text == "What is RLS?"
    assert not listed.next_page_token

    # 4. List the user's sessions.
    second = await sessions_stub.CreateSession(api.CreateSessionRequest(title="Second"), metadata=me)
    sessions = await sessions_stub.ListSessions(api.ListSessionsRequest(), metadata=me)
    assert [s.id for s in sessions.sessions][:2] == [second.id, session.id]  # newest first
    fetched = await sessions_stub.GetSession(api.GetSessionRequest(session_id=session.id), metadata=me)
    assert fetched.message_count == 2

    # 5. Update the session's status.
    archived = await sessions_stub.UpdateSession(
        api.UpdateSessionRequest(session=pb.Session(id=session.id, status=pb.SESSION_STATUS_ARCHIVED),
                                 update_mask=FieldMask(paths=["status"])),
        metadata=me,
    )
    assert archived.status == pb.SESSION_STATUS_ARCHIVED
    assert archived.title == "Planning"  # not in the mask, untouched
    only_archived = await sessions_stub.ListSessions(api.ListSessionsRequest(status=pb.SESSION_STATUS_ARCHIVED), metadata=me)
    assert [s.id for s in only_archived.sessions] == [session.id]

    # 6. Delete the session: its messages go too.
    await sessions_stub.DeleteSession(api.DeleteSessionRequest(session_id=session.id), metadata=me)
    await expect_error(sessions_stub.GetSession(api.GetSessionRequest(session_id=session.id), metadata=me), grpc.StatusCode.NOT_FOUND)
    await expect_error(
        sessions_stub.GetMessage(api.GetMessageRequest(session_id=session.id, message_id=answer.id), metadata=me),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_messages_are_gone_from_the_database_after_delete(sessions_stub, as_user, admin_url):
    import asyncpg

    me = as_user("cascade-user")
    session = await sessions_stub.CreateSession(api.CreateSessionRequest(title="short-lived"), metadata=me)
    for i in range(3):
        await sessions_stub.CreateMessage(
            api.CreateMessageRequest(session_id=session.id, role=pb.ROLE_USER, content=text(f"m{i}")), metadata=me
        )
    await sessions_stub.DeleteSession(api.DeleteSessionRequest(session_id=session.id), metadata=me)
    conn = await asyncpg.connect(admin_url)
    try:
        left = await conn.fetchval("SELECT count(*) FROM sessions.messages WHERE session_id = $1", __import__("uuid").UUID(session.id))
    finally:
        await conn.close()
    assert left == 0


async def test_update_title_and_metadata_and_close(sessions_stub, as_user):
    me = as_user("updater")
    session = await sessions_stub.CreateSession(api.CreateSessionRequest(title="old", metadata={"a": "1"}), metadata=me)
    updated = await sessions_stub.UpdateSession(
        api.UpdateSessionRequest(session=pb.Session(id=session.id, title="new", metadata={"b": "2"}),
                                 update_mask=FieldMask(paths=["title", "metadata"])),
        metadata=me,
    )
    assert updated.title == "new" and dict(updated.metadata) == {"b": "2"}
    assert updated.update_time.ToDatetime() >= session.update_time.ToDatetime()

    # Without a mask, the populated fields are written (AIP-134).
    closed = await sessions_stub.UpdateSession(
        api.UpdateSessionRequest(session=pb.Session(id=session.id, status=pb.SESSION_STATUS_CLOSED)), metadata=me
    )
    assert closed.status == pb.SESSION_STATUS_CLOSED and closed.title == "new"

    # A closed session keeps its history but takes no new messages.
    reason, _ = await expect_error(
        sessions_stub.CreateMessage(api.CreateMessageRequest(session_id=session.id, role=pb.ROLE_USER, content=text("hi")), metadata=me),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason == "SESSION_CLOSED"


async def test_sessions_are_searched_by_title(sessions_stub, as_user):
    """Case-insensitive substring of the title, newest first, paginated; LIKE's wildcards are
    plain text; another user's matching sessions stay invisible; the token is bound to the text."""
    me, other = as_user("title-search-user"), as_user("title-search-other")
    made = {}
    for title in ("Refund policy", "refunds in 2024", "Shipping", "100% off", "a_b", "axb"):
        made[title] = (await sessions_stub.CreateSession(api.CreateSessionRequest(title=title), metadata=me)).id
    await sessions_stub.CreateSession(api.CreateSessionRequest(title="Refund for someone else"), metadata=other)

    async def search(text: str, **options) -> api.ListSessionsResponse:
        return await sessions_stub.ListSessions(api.ListSessionsRequest(title_contains=text, **options), metadata=me)

    assert [s.id for s in (await search("REFUND")).sessions] == [made["refunds in 2024"], made["Refund policy"]]
    assert [s.title for s in (await search("%")).sessions] == ["100% off"]
    assert [s.title for s in (await search("_")).sessions] == ["a_b"]
    assert (await search("nothing like it")).sessions == []
    assert len((await search("")).sessions) == 6

    first = await search("refund", page_size=1)
    assert [s.id for s in first.sessions] == [made["refunds in 2024"]] and first.next_page_token
    second = await search("refund", page_size=1, page_token=first.next_page_token)
    assert [s.id for s in second.sessions] == [made["Refund policy"]] and not second.next_page_token
    reason, fields = await expect_error(search("ship", page_token=first.next_page_token),
                                        grpc.StatusCode.INVALID_ARGUMENT)
    assert reason == "PAGE_TOKEN_MISMATCH" and fields == ["page_token"]
    _, fields = await expect_error(search("two\nlines"), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields == ["title_contains"]
