"""Keyset pagination, deletion, feedback and export of messages."""

from __future__ import annotations

import json

import grpc
import pytest

from parley.sessions.v1 import sessions_pb2 as pb
from parley.sessions.v1 import sessions_service_pb2 as api
from parley.sessions.v1 import sessions_service_pb2_grpc as api_grpc
from tests.conftest import expect_error


@pytest.fixture(scope="module")
async def conversation(sessions_stub, as_user):
    """A session with 25 messages alternating user/assistant, some of them from a run."""
    me = as_user("msg-user")
    session = await sessions_stub.CreateSession(api.CreateSessionRequest(title="Long talk"), metadata=me)
    ids = []
    for i in range(25):
        created = await sessions_stub.CreateMessage(
            api.CreateMessageRequest(
                session_id=session.id,
                role=pb.ROLE_USER if i % 2 == 0 else pb.ROLE_ASSISTANT,
                content=[pb.ContentPart(text=f"message {i}")],
                run_id="run_7" if i >= 20 else "",
            ),
            metadata=me,
        )
        ids.append(created.id)
    return session, ids


async def _all_pages(stub, me, **request):
    seen, token, pages = [], "", 0
    while True:
        page = await stub.ListMessages(api.ListMessagesRequest(page_token=token, **request), metadata=me)
        seen += [m.id for m in page.messages]
        pages += 1
        token = page.next_page_token
        if not token:
            return seen, pages


async def test_pages_walk_every_message_once_in_either_order(sessions_stub, as_user, conversation):
    session, ids = conversation
    me = as_user("msg-user")
    ascending, pages = await _all_pages(sessions_stub, me, session_id=session.id, page_size=7)
    assert ascending == ids and pages == 4
    descending, _ = await _all_pages(sessions_stub, me, session_id=session.id, page_size=10, order=api.SORT_ORDER_DESCENDING)
    assert descending == ids[::-1]
    of_run, _ = await _all_pages(sessions_stub, me, session_id=session.id, page_size=2, run_id="run_7")
    assert of_run == ids[20:]


async def test_pages_stay_consistent_while_messages_arrive(sessions_stub, as_user):
    me = as_user("msg-live")
    session = await sessions_stub.CreateSession(api.CreateSessionRequest(), metadata=me)
    first = [
        (await sessions_stub.CreateMessage(api.CreateMessageRequest(session_id=session.id, role=pb.ROLE_USER,
                                                                    content=[pb.ContentPart(text=str(i))]), metadata=me)).id
        for i in range(4)
    ]
    page = await sessions_stub.ListMessages(api.ListMessagesRequest(session_id=session.id, page_size=3), metadata=me)
    late = await sessions_stub.CreateMessage(api.CreateMessageRequest(session_id=session.id, role=pb.ROLE_USER,
                                                                      content=[pb.ContentPart(text="late")]), metadata=me)
    rest = await sessions_stub.ListMessages(
        api.ListMessagesRequest(session_id=session.id, page_size=3, page_token=page.next_page_token), metadata=me
    )
    assert [m.id for m in page.messages] + [m.id for m in rest.messages] == first + [late.id]


async def test_delete_message(sessions_stub, as_user):
    me = as_user("msg-del")
    session = await sessions_stub.CreateSession(api.CreateSessionRequest(), metadata=me)
    keep, drop = [
        await sessions_stub.CreateMessage(api.CreateMessageRequest(session_id=session.id, role=pb.ROLE_USER,
                                                                   content=[pb.ContentPart(text=t)]), metadata=me)
        for t in ("keep", "drop")
    ]
    await sessions_stub.DeleteMessage(api.DeleteMessageRequest(session_id=session.id, message_id=drop.id), metadata=me)
    listed = await sessions_stub.ListMessages(api.ListMessagesRequest(session_id=session.id), metadata=me)
    assert [m.id for m in listed.messages] == [keep.id]
    assert (await sessions_stub.GetSession(api.GetSessionRequest(session_id=session.id), metadata=me)).message_count == 1
    await expect_error(
        sessions_stub.DeleteMessage(api.DeleteMessageRequest(session_id=session.id, message_id=drop.id), metadata=me),
        grpc.StatusCode.NOT_FOUND,
    )
    # A message id under the wrong session is not found either.
    other = await sessions_stub.CreateSession(api.CreateSessionRequest(), metadata=me)
    await expect_error(
        sessions_stub.DeleteMessage(api.DeleteMessageRequest(session_id=other.id, message_id=keep.id), metadata=me),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_feedback_is_set_replaced_and_shown_on_the_message(sessions_stub, as_user, conversation):
    session, ids = conversation
    me = as_user("msg-user")
    first = await sessions_stub.SubmitFeedback(
        api.SubmitFeedbackRequest(session_id=session.id, message_id=ids[1], rating=pb.RATING_THUMBS_DOWN, comment="wrong"),
        metadata=me,
    )
    assert first.rating == pb.RATING_THUMBS_DOWN
    second = await sessions_stub.SubmitFeedback(
        api.SubmitFeedbackRequest(session_id=session.id, message_id=ids[1], rating=pb.RATING_THUMBS_UP, comment="fixed"),
        metadata=me,
    )
    assert second.create_time == first.create_time and second.comment == "fixed"
    message = await sessions_stub.GetMessage(api.GetMessageRequest(session_id=session.id, message_id=ids[1]), metadata=me)
    assert message.feedback.rating == pb.RATING_THUMBS_UP and message.feedback.comment == "fixed"
    _, fields = await expect_error(
        sessions_stub.SubmitFeedback(api.SubmitFeedbackRequest(session_id=session.id, message_id=ids[1]), metadata=me),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert fields == ["rating"]
    _, fields = await expect_error(
        sessions_stub.SubmitFeedback(api.SubmitFeedbackRequest(session_id=session.id, message_id=ids[1], rating=9), metadata=me),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert fields == ["rating"]


async def _export(stub, me, session_id, fmt):
    chunks = [c async for c in stub.ExportSession(api.ExportSessionRequest(session_id=session_id, format=fmt), metadata=me)]
    return chunks, b"".join(c.data for c in chunks)


async def test_export_json_and_markdown(sessions_stub, as_user, conversation):
    session, ids = conversation
    me = as_user("msg-user")
    chunks, body = await _export(sessions_stub, me, session.id, api.EXPORT_FORMAT_JSON)
    assert chunks[0].media_type == "application/json" and chunks[0].filename.endswith(".json")
    document = json.loads(body)
    assert document["session"]["id"] == session.id and document["session"]["title"] == "Long talk"
    assert [m["id"] for m in document["messages"]] == ids
    assert document["messages"][0] == {**document["messages"][0], "role": "user",
                                       "content": [{"type": "text", "text": "message 0"}]}

    chunks, body = await _export(sessions_stub, me, session.id, api.EXPORT_FORMAT_MARKDOWN)
    markdown = body.decode()
    assert chunks[0].media_type == "text/markdown"
    assert markdown.startswith("# Long talk\n")
    assert markdown.index("message 3") < markdown.index("message 12") < markdown.index("message 24")
    assert markdown.count("### User") == 13 and markdown.count("### Assistant") == 12


async def test_export_of_a_large_session_streams_in_chunks(sessions_stub, as_user):
    me = as_user("msg-export-big")
    session = await sessions_stub.CreateSession(api.CreateSessionRequest(title="big"), metadata=me)
    paragraph = "Lorem ipsum dolor sit amet. " * 2000  # ~56 KB
    for _ in range(6):
        await sessions_stub.CreateMessage(api.CreateMessageRequest(session_id=session.id, role=pb.ROLE_USER,
                                                                   content=[pb.ContentPart(text=paragraph)]), metadata=me)
    chunks, body = await _export(sessions_stub, me, session.id, api.EXPORT_FORMAT_JSON)
    assert len(chunks) >= 5 and all(len(c.data) <= 64 * 1024 for c in chunks)
    assert chunks[1].media_type == ""  # metadata only on the first chunk
    assert [m["content"][0]["text"] for m in json.loads(body)["messages"]] == [paragraph] * 6


async def test_a_slow_export_reader_holds_no_database_connection(admin_url, identity_public_key, as_user, monkeypatch):
    """An export reads its messages page by page, each page in its own transaction: while the
    reader pauses, every pooled connection is free, and the document is still whole."""
    import services.sessions.domain as domain
    from services.sessions.app import build_app
    from tests.conftest import channel_to, serve_app
    from tests.sessions.conftest import sessions_settings

    monkeypatch.setattr(domain, "EXPORT_PAGE_MESSAGES", 2)
    app = await build_app(sessions_settings(admin_url, pool_size=2))
    running = await serve_app(app, "sessions", identity_public_key)
    channel = channel_to(running)
    try:
        stub = api_grpc.SessionServiceStub(channel)
        me, user_id = as_user("msg-slow-reader"), "msg-slow-reader"
        session = await stub.CreateSession(api.CreateSessionRequest(title="slow"), metadata=me)
        paragraph = "Lorem ipsum dolor sit amet. " * 2000  # ~56 KB: a 64 KiB chunk fills after two
        for i in range(5):
            await stub.CreateMessage(api.CreateMessageRequest(session_id=session.id, role=pb.ROLE_USER,
                                                              content=[pb.ContentPart(text=f"{i} {paragraph}")]),
                                     metadata=me)
        _, _, chunks = await app.sessions.export_session(user_id, session.id, api.EXPORT_FORMAT_JSON)
        body = bytearray(await chunks.__anext__())
        pool = app.db.pool
        assert pool.get_idle_size() == pool.get_size(), "a paused export keeps a connection"
        # Meanwhile the service answers other calls, even with a pool of two.
        assert (await stub.GetSession(api.GetSessionRequest(session_id=session.id), metadata=me)).id == session.id
        async for chunk in chunks:
            body += chunk
            assert pool.get_idle_size() == pool.get_size()
        texts = [m["content"][0]["text"] for m in json.loads(bytes(body))["messages"]]
        assert texts == [f"{i} {paragraph}" for i in range(5)]
    finally:
        await channel.close()
        await running.stop(0)
