"""Bad input gets INVALID_ARGUMENT (or NOT_FOUND) naming the field, never INTERNAL, and
leaves nothing half-written."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from parley.sessions.v1 import sessions_pb2 as pb
from parley.sessions.v1 import sessions_service_pb2 as api
from tests.conftest import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
async def session(sessions_stub, as_user):
    return await sessions_stub.CreateSession(api.CreateSessionRequest(title="target"), metadata=as_user("val-user"))


@pytest.fixture
def me(as_user):
    return as_user("val-user")


def message(session_id: str, **fields) -> api.CreateMessageRequest:
    fields.setdefault("role", pb.ROLE_USER)
    fields.setdefault("content", [pb.ContentPart(text="ok")])
    return api.CreateMessageRequest(session_id=session_id, **fields)


async def test_malformed_ids(sessions_stub, me):
    for bad in ["", "123", "not-a-uuid", "' OR 1=1 --", "0" * 36]:
        _, fields = await expect_error(sessions_stub.GetSession(api.GetSessionRequest(session_id=bad), metadata=me), INVALID)
        assert fields == ["session_id"]
    _, fields = await expect_error(
        sessions_stub.GetMessage(api.GetMessageRequest(session_id="x", message_id="y"), metadata=me), INVALID
    )
    assert fields == ["session_id"]


@pytest.mark.parametrize("size", [-1, 101, 2**31 - 1])
async def test_page_sizes_out_of_range(sessions_stub, me, session, size):
    _, fields = await expect_error(sessions_stub.ListSessions(api.ListSessionsRequest(page_size=size), metadata=me), INVALID)
    assert fields == ["page_size"]
    _, fields = await expect_error(
        sessions_stub.ListMessages(api.ListMessagesRequest(session_id=session.id, page_size=size), metadata=me), INVALID
    )
    assert fields == ["page_size"]


async def test_forged_and_foreign_page_tokens(sessions_stub, me, as_user, session):
    other = await sessions_stub.CreateSession(api.CreateSessionRequest(), metadata=me)
    for _ in range(3):
        await sessions_stub.CreateMessage(message(session.id), metadata=me)
    page = await sessions_stub.ListMessages(api.ListMessagesRequest(session_id=session.id, page_size=1), metadata=me)
    assert page.next_page_token
    for forged in ["garbage!!", "eyJub3QiOiJ0aGlzIn0", page.next_page_token[:-3] + "abc"]:
        reason, fields = await expect_error(
            sessions_stub.ListMessages(api.ListMessagesRequest(session_id=session.id, page_token=forged), metadata=me), INVALID
        )
        assert fields == ["page_token"], forged
    # A real token, used for another session, another order or by another user, is stale.
    for request, metadata in [
        (api.ListMessagesRequest(session_id=other.id, page_token=page.next_page_token), me),
        (api.ListMessagesRequest(session_id=session.id, page_token=page.next_page_token,
                                 order=api.SORT_ORDER_DESCENDING), me),
    ]:
        reason, fields = await expect_error(sessions_stub.ListMessages(request, metadata=metadata), INVALID)
        assert reason == "PAGE_TOKEN_MISMATCH" and fields == ["page_token"]
    sessions_page = await sessions_stub.ListSessions(api.ListSessionsRequest(page_size=1), metadata=me)
    assert sessions_page.next_page_token
    reason, _ = await expect_error(
        sessions_stub.ListSessions(api.ListSessionsRequest(page_token=sessions_page.next_page_token),
                                   metadata=as_user("someone-else")), INVALID)
    assert reason == "PAGE_TOKEN_MISMATCH"
    reason, _ = await expect_error(
        sessions_stub.ListSessions(api.ListSessionsRequest(page_token=sessions_page.next_page_token,
                                                           status=pb.SESSION_STATUS_ACTIVE), metadata=me), INVALID)
    assert reason == "PAGE_TOKEN_MISMATCH"


async def test_oversized_content_is_rejected_and_not_stored(sessions_stub, me, session):
    before = await sessions_stub.GetSession(api.GetSessionRequest(session_id=session.id), metadata=me)
    big = "x" * (1024 * 1024 + 1)
    reason, fields = await expect_error(
        sessions_stub.CreateMessage(message(session.id, content=[pb.ContentPart(text=big)]), metadata=me), INVALID
    )
    assert fields == ["content"]
    # Split across parts it is still one message over the limit.
    half = "y" * (512 * 1024 + 1)
    await expect_error(
        sessions_stub.CreateMessage(message(session.id, content=[pb.ContentPart(text=half), pb.ContentPart(text=half)]),
                                    metadata=me), INVALID
    )
    # Exactly at the limit is fine.
    at_limit = await sessions_stub.CreateMessage(message(session.id, content=[pb.ContentPart(text="z" * 1024 * 1024)]),
                                                 metadata=me)
    after = await sessions_stub.GetSession(api.GetSessionRequest(session_id=session.id), metadata=me)
    assert after.message_count == before.message_count + 1
    fetched = await sessions_stub.GetMessage(api.GetMessageRequest(session_id=session.id, message_id=at_limit.id), metadata=me)
    assert len(fetched.content[0].text) == 1024 * 1024


async def test_unknown_enum_values(sessions_stub, me, session):
    _, fields = await expect_error(sessions_stub.CreateMessage(message(session.id, role=42), metadata=me), INVALID)
    assert fields == ["role"]
    _, fields = await expect_error(sessions_stub.CreateMessage(message(session.id, role=pb.ROLE_UNSPECIFIED), metadata=me), INVALID)
    assert fields == ["role"]
    _, fields = await expect_error(sessions_stub.ListSessions(api.ListSessionsRequest(status=9), metadata=me), INVALID)
    assert fields == ["status"]
    _, fields = await expect_error(
        sessions_stub.UpdateSession(api.UpdateSessionRequest(session=pb.Session(id=session.id, status=7),
                                                             update_mask=FieldMask(paths=["status"])), metadata=me),
        INVALID,
    )
    assert fields == ["session.status"]
    _, fields = await expect_error(
        sessions_stub.ListMessages(api.ListMessagesRequest(session_id=session.id, order=5), metadata=me), INVALID
    )
    assert fields == ["order"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in sessions_stub.ExportSession(api.ExportSessionRequest(session_id=session.id, format=3), metadata=me):
            pass
    assert caught.value.code() == INVALID


async def test_too_much_metadata(sessions_stub, me, session):
    too_many = {f"k{i}": "v" for i in range(17)}
    _, fields = await expect_error(sessions_stub.CreateSession(api.CreateSessionRequest(metadata=too_many), metadata=me), INVALID)
    assert fields == ["metadata"]
    _, fields = await expect_error(
        sessions_stub.CreateSession(api.CreateSessionRequest(metadata={"k" * 65: "v"}), metadata=me), INVALID
    )
    assert fields and fields[0].startswith("metadata[")
    _, fields = await expect_error(
        sessions_stub.CreateMessage(message(session.id, metadata={"k": "v" * 513}), metadata=me), INVALID
    )
    assert fields and fields[0].startswith("metadata[")
    # Exactly at the limits is accepted.
    ok = {f"{i:0>64}": "v" * 512 for i in range(16)}
    created = await sessions_stub.CreateSession(api.CreateSessionRequest(metadata=ok), metadata=me)
    assert len(created.metadata) == 16


async def test_field_rules_for_messages(sessions_stub, me, session):
    cases = [
        (message(session.id, content=[]), "content"),
        (message(session.id, content=[pb.ContentPart()]), "content[0]"),
        (message(session.id, content=[pb.ContentPart(text="nul\x00byte")]), "content[0].text"),
        (message(session.id, content=[pb.ContentPart(image_url=pb.ImageUrl(url="javascript:alert(1)"))]),
         "content[0].image_url.url"),
        (message(session.id, role=pb.ROLE_TOOL), "tool_call_id"),
        (message(session.id, tool_call_id="call_1"), "tool_call_id"),
        (message(session.id, tool_calls=[pb.ToolCall(id="c", name="f", arguments="{}")]), "tool_calls"),
        (message(session.id, attachments=[pb.Attachment(file_id="../../etc/passwd")]), "attachments[0].file_id"),
    ]
    before = await sessions_stub.GetSession(api.GetSessionRequest(session_id=session.id), metadata=me)
    for request, field in cases:
        _, fields = await expect_error(sessions_stub.CreateMessage(request, metadata=me), INVALID)
        assert field in fields, (field, fields)
    after = await sessions_stub.GetSession(api.GetSessionRequest(session_id=session.id), metadata=me)
    assert after.message_count == before.message_count

    # The valid shapes of each role are accepted.
    call = await sessions_stub.CreateMessage(
        message(session.id, role=pb.ROLE_ASSISTANT, content=[],
                tool_calls=[pb.ToolCall(id="call_1", name="lookup", arguments='{"q": 1}')]), metadata=me)
    assert call.tool_calls[0].name == "lookup"
    result = await sessions_stub.CreateMessage(message(session.id, role=pb.ROLE_TOOL, tool_call_id="call_1"), metadata=me)
    assert result.tool_call_id == "call_1"
    multi = await sessions_stub.CreateMessage(
        message(session.id, content=[pb.ContentPart(text="look"),
                                     pb.ContentPart(image_url=pb.ImageUrl(url="https://example.com/a.png",
                                                                          detail=pb.IMAGE_DETAIL_LOW)),
                                     pb.ContentPart(image_file=pb.ImageFile(file_id="file-abc"))],
                attachments=[pb.Attachment(file_id="file-abc", tools=["file_search"])]), metadata=me)
    fetched = await sessions_stub.GetMessage(api.GetMessageRequest(session_id=session.id, message_id=multi.id), metadata=me)
    assert [p.WhichOneof("part") for p in fetched.content] == ["text", "image_url", "image_file"]
    assert fetched.content[1].image_url.detail == pb.IMAGE_DETAIL_LOW
    assert fetched.attachments[0].tools == ["file_search"]


async def test_bad_updates(sessions_stub, me, session):
    _, fields = await expect_error(
        sessions_stub.UpdateSession(api.UpdateSessionRequest(session=pb.Session(id=session.id, title="x"),
                                                             update_mask=FieldMask(paths=["user_id"])), metadata=me), INVALID)
    assert fields == ["update_mask"]
    _, fields = await expect_error(
        sessions_stub.UpdateSession(api.UpdateSessionRequest(session=pb.Session(id=session.id)), metadata=me), INVALID)
    assert fields == ["update_mask"]
    _, fields = await expect_error(
        sessions_stub.UpdateSession(api.UpdateSessionRequest(session=pb.Session(id=session.id, title="a\nb"),
                                                             update_mask=FieldMask(paths=["title"])), metadata=me), INVALID)
    assert fields == ["session.title"]
    unchanged = await sessions_stub.GetSession(api.GetSessionRequest(session_id=session.id), metadata=me)
    assert unchanged.title == "target"
