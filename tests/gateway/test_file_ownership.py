"""File ids entering through the gateway must name the caller's own files: another user's
file in a message's attachments or images answers NOT_FOUND naming the field, exactly like
a file that does not exist, and nothing is stored. Requests without file ids never reach
the files service."""

from __future__ import annotations

import grpc
import pytest

from parley.files.v1 import files_pb2
from parley.files.v1 import files_service_pb2 as fapi
from parley.files.v1 import files_service_pb2_grpc as fgrpc
from parley.sessions.v1 import sessions_pb2 as spb
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from services.gateway.ownership import FileReferences
from tests.conftest import expect_error
from tests.gateway.conftest import bearer

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")
MISSING = "0190a0f0-0000-7000-8000-000000000000"


async def _upload(channel, secret: str, data: bytes, filename: str, purpose) -> str:
    async def requests():
        yield fapi.UploadFileRequest(metadata=fapi.UploadFileMetadata(filename=filename, purpose=purpose))
        yield fapi.UploadFileRequest(chunk=data)

    return (await fgrpc.FileServiceStub(channel).UploadFile(requests(), metadata=bearer(secret))).id


@pytest.fixture
async def two_users(gw_channel, make_key):
    """Alice's files, and a session of Mallory's into which she tries to put them."""
    alice = await make_key("owner-alice", ["sessions", "files"])
    mallory = await make_key("owner-mallory", ["sessions", "files"])
    doc = await _upload(gw_channel, alice, b"alice's private notes\n", "notes.txt", files_pb2.FILE_PURPOSE_ASSISTANTS)
    picture = await _upload(gw_channel, alice, PNG, "face.png", files_pb2.FILE_PURPOSE_VISION)
    own = await _upload(gw_channel, mallory, b"mallory's own notes\n", "mine.txt", files_pb2.FILE_PURPOSE_ASSISTANTS)
    session = await sgrpc.SessionServiceStub(gw_channel).CreateSession(sapi.CreateSessionRequest(title="m"),
                                                                       metadata=bearer(mallory))
    return {"alice": alice, "mallory": mallory, "doc": doc, "picture": picture, "own": own, "session": session.id}


def _message(session_id: str, *, attachments=(), images=()) -> sapi.CreateMessageRequest:
    content = [spb.ContentPart(text="look at this")]
    content += [spb.ContentPart(image_file=spb.ImageFile(file_id=i)) for i in images]
    attached = [spb.Attachment(file_id=a, tools=["file_search"]) for a in attachments]
    return sapi.CreateMessageRequest(session_id=session_id, role=spb.ROLE_USER, content=content, attachments=attached)


async def _stored(channel, secret, session_id) -> list:
    reply = await sgrpc.SessionServiceStub(channel).ListMessages(sapi.ListMessagesRequest(session_id=session_id),
                                                                  metadata=bearer(secret))
    return list(reply.messages)


async def test_another_users_attachment_is_not_found_and_nothing_is_stored(gw_channel, two_users):
    u = two_users
    stub = sgrpc.SessionServiceStub(gw_channel)
    reason, fields = await expect_error(
        stub.CreateMessage(_message(u["session"], attachments=[u["own"], u["doc"]]), metadata=bearer(u["mallory"])),
        grpc.StatusCode.NOT_FOUND)
    assert (reason, fields) == ("FILE_NOT_FOUND", ["attachments[1].file_id"])
    assert await _stored(gw_channel, u["mallory"], u["session"]) == []


async def test_another_users_image_is_not_found(gw_channel, two_users):
    u = two_users
    stub = sgrpc.SessionServiceStub(gw_channel)
    reason, fields = await expect_error(
        stub.CreateMessage(_message(u["session"], images=[u["picture"]]), metadata=bearer(u["mallory"])),
        grpc.StatusCode.NOT_FOUND)
    assert (reason, fields) == ("FILE_NOT_FOUND", ["content[1].image_file.file_id"])
    assert await _stored(gw_channel, u["mallory"], u["session"]) == []


async def test_a_file_that_does_not_exist_answers_the_same(gw_channel, two_users):
    u = two_users
    stub = sgrpc.SessionServiceStub(gw_channel)
    reason, fields = await expect_error(
        stub.CreateMessage(_message(u["session"], attachments=[MISSING]), metadata=bearer(u["mallory"])),
        grpc.StatusCode.NOT_FOUND)
    assert (reason, fields) == ("FILE_NOT_FOUND", ["attachments[0].file_id"])
    _, fields = await expect_error(
        stub.CreateMessage(_message(u["session"], attachments=["not-a-file-id"]), metadata=bearer(u["mallory"])),
        grpc.StatusCode.INVALID_ARGUMENT)
    assert fields == ["attachments[0].file_id"]
    assert await _stored(gw_channel, u["mallory"], u["session"]) == []


async def test_the_callers_own_files_are_accepted(gw_channel, two_users):
    u = two_users
    stub = sgrpc.SessionServiceStub(gw_channel)
    # Alice's own files, in her own session.
    session = await stub.CreateSession(sapi.CreateSessionRequest(title="a"), metadata=bearer(u["alice"]))
    created = await stub.CreateMessage(_message(session.id, attachments=[u["doc"], u["doc"]], images=[u["picture"]]),
                                       metadata=bearer(u["alice"]))
    assert [a.file_id for a in created.attachments] == [u["doc"], u["doc"]]
    assert created.content[1].image_file.file_id == u["picture"]


async def test_only_requests_naming_files_ask_the_files_service(gateway_with_files_down, make_key):
    secret = await make_key("owner-files-down", ["sessions"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_with_files_down.port}") as channel:
        stub = sgrpc.SessionServiceStub(channel)
        session = await stub.CreateSession(sapi.CreateSessionRequest(title="no files"), metadata=bearer(secret))
        await stub.CreateMessage(_message(session.id), metadata=bearer(secret), timeout=10)
        reason, _ = await expect_error(
            stub.CreateMessage(_message(session.id, attachments=[MISSING]), metadata=bearer(secret), timeout=10),
            grpc.StatusCode.UNAVAILABLE)
        assert reason == "BACKEND_UNAVAILABLE"
        assert len(await _stored(channel, secret, session.id)) == 1


def test_file_ids_are_found_at_any_depth_of_any_public_request():
    from parley.assistants.v1 import assistants_service_pb2 as aapi

    references = FileReferences(aapi.CreateRunRequest.DESCRIPTOR)
    request = aapi.CreateRunRequest()
    message = request.additional_messages.add()
    message.attachments.add(file_id="f1")
    message.content.add().image_file.file_id = "f2"
    request.tool_resources.code_interpreter.file_ids.extend(["f3", "f1"])
    assert references.collect(request) == {  # each id with the first field naming it, in field order
        "f1": "tool_resources.code_interpreter.file_ids[1]",
        "f2": "additional_messages[0].content[0].image_file.file_id",
        "f3": "tool_resources.code_interpreter.file_ids[0]",
    }
    assert not FileReferences(sapi.ListSessionsRequest.DESCRIPTOR)
