"""User A asking for anything of user B's gets NOT_FOUND, exactly as for an id that does not
exist; and calls without a valid gateway identity are refused."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from parley.sessions.v1 import sessions_pb2 as pb
from parley.sessions.v1 import sessions_service_pb2 as api
from services.runtime.identity import IdentityMinter, generate_private_key_pem
from tests.conftest import expect_error, rich_error


@pytest.fixture(scope="module")
async def b_session(sessions_stub, as_user):
    me = as_user("iso-b")
    session = await sessions_stub.CreateSession(api.CreateSessionRequest(title="B's"), metadata=me)
    message = await sessions_stub.CreateMessage(
        api.CreateMessageRequest(session_id=session.id, role=pb.ROLE_USER, content=[pb.ContentPart(text="b")]), metadata=me
    )
    return session, message


def calls_on(stub, session_id: str, message_id: str):
    """Every RPC that names a session (and message), as name → awaitable factory."""
    return {
        "GetSession": lambda md: stub.GetSession(api.GetSessionRequest(session_id=session_id), metadata=md),
        "UpdateSession": lambda md: stub.UpdateSession(
            api.UpdateSessionRequest(session=pb.Session(id=session_id, title="x"), update_mask=FieldMask(paths=["title"])),
            metadata=md),
        "DeleteSession": lambda md: stub.DeleteSession(api.DeleteSessionRequest(session_id=session_id), metadata=md),
        "CreateMessage": lambda md: stub.CreateMessage(
            api.CreateMessageRequest(session_id=session_id, role=pb.ROLE_USER, content=[pb.ContentPart(text="x")]), metadata=md),
        "ListMessages": lambda md: stub.ListMessages(api.ListMessagesRequest(session_id=session_id), metadata=md),
        "GetMessage": lambda md: stub.GetMessage(api.GetMessageRequest(session_id=session_id, message_id=message_id), metadata=md),
        "DeleteMessage": lambda md: stub.DeleteMessage(
            api.DeleteMessageRequest(session_id=session_id, message_id=message_id), metadata=md),
        "SubmitFeedback": lambda md: stub.SubmitFeedback(
            api.SubmitFeedbackRequest(session_id=session_id, message_id=message_id, rating=pb.RATING_THUMBS_UP), metadata=md),
        "ExportSession": lambda md: _drain(stub.ExportSession(api.ExportSessionRequest(session_id=session_id), metadata=md)),
    }


async def _drain(stream):
    return [chunk async for chunk in stream]


async def test_other_users_resources_look_exactly_like_missing_ones(sessions_stub, as_user, b_session):
    session, message = b_session
    intruder = as_user("iso-a")
    theirs = calls_on(sessions_stub, session.id, message.id)
    missing = calls_on(sessions_stub, str(uuid.uuid4()), str(uuid.uuid4()))
    for name in theirs:
        with pytest.raises(grpc.aio.AioRpcError) as on_theirs:
            await theirs[name](intruder)
        with pytest.raises(grpc.aio.AioRpcError) as on_missing:
            await missing[name](intruder)
        code_theirs, reason_theirs, _ = rich_error(on_theirs.value)
        code_missing, reason_missing, _ = rich_error(on_missing.value)
        assert code_theirs == grpc.StatusCode.NOT_FOUND, name
        assert (code_theirs, reason_theirs) == (code_missing, reason_missing), name

    # And B's data is untouched by all of that.
    owner = as_user("iso-b")
    still = await sessions_stub.GetSession(api.GetSessionRequest(session_id=session.id), metadata=owner)
    assert still.title == "B's" and still.message_count == 1
    messages = await sessions_stub.ListMessages(api.ListMessagesRequest(session_id=session.id), metadata=owner)
    assert [m.id for m in messages.messages] == [message.id] and not messages.messages[0].HasField("feedback")


async def test_listing_shows_only_own_sessions(sessions_stub, as_user, b_session):
    mine = await sessions_stub.CreateSession(api.CreateSessionRequest(title="A's"), metadata=as_user("iso-list-a"))
    listed = await sessions_stub.ListSessions(api.ListSessionsRequest(page_size=100), metadata=as_user("iso-list-a"))
    assert [s.id for s in listed.sessions] == [mine.id]


async def test_calls_without_a_valid_identity_are_unauthenticated(sessions_stub, b_session, identity_private_key):
    session, _ = b_session
    request = api.GetSessionRequest(session_id=session.id)
    forger = IdentityMinter(generate_private_key_pem())  # not the gateway's key
    expired = IdentityMinter(identity_private_key, ttl_seconds=-60)
    for metadata in [
        (),
        (("x-parley-identity", "not-a-token"),),
        forger.metadata("iso-b"),
        expired.metadata("iso-b"),
        (("authorization", "Bearer whatever"),),
    ]:
        reason, _ = await expect_error(sessions_stub.GetSession(request, metadata=metadata), grpc.StatusCode.UNAUTHENTICATED)
        assert reason in ("IDENTITY_MISSING", "IDENTITY_INVALID")
