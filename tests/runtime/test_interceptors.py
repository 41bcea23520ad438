"""The error and identity interceptors, on a real server with a servicer written to fail."""

from __future__ import annotations

import grpc
import pytest

from parley.sessions.v1 import sessions_pb2 as pb
from parley.sessions.v1 import sessions_service_pb2 as api
from parley.sessions.v1 import sessions_service_pb2_grpc as api_grpc
from services.runtime import errors
from services.runtime.interceptors import current_identity
from services.runtime.status import error_details, from_rpc_error
from tests.conftest import channel_to, serve_app


class FailingServicer(api_grpc.SessionServiceServicer):
    """Each RPC fails in its own way, to see what callers receive."""

    async def GetSession(self, request, context):
        if request.session_id == "whoami":
            return pb.Session(id="x", user_id=current_identity().user_id)
        if request.session_id == "bug":
            raise KeyError("database password is hunter2")
        if request.session_id == "busy":
            raise errors.ResourceExhausted("too many requests", reason="RATE_LIMITED", retry_after=2.5,
                                           metadata={"limit": "60/min"})
        raise errors.InvalidArgument.for_field("session_id", "is not valid")

    async def ExportSession(self, request, context):
        yield api.ExportSessionResponse(data=b"first")
        raise errors.Unavailable("backend went away", reason="BACKEND_DOWN")


class FailingApp:
    service_names = ("parley.sessions.v1.SessionService",)

    def register(self, server):
        api_grpc.add_SessionServiceServicer_to_server(FailingServicer(), server)

    async def aclose(self):
        pass


@pytest.fixture(scope="module")
async def stub(identity_public_key):
    running = await serve_app(FailingApp(), "failing", identity_public_key)
    channel = channel_to(running)
    yield api_grpc.SessionServiceStub(channel)
    await channel.close()
    await running.stop(0)


async def call(stub, session_id, metadata):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetSession(api.GetSessionRequest(session_id=session_id), metadata=metadata)
    return caught.value


async def test_field_errors_carry_error_info_and_bad_request(stub, as_user):
    error = await call(stub, "anything", as_user("u1"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error_details(from_rpc_error(error))
    assert details["ErrorInfo"].reason == "INVALID_FIELD" and details["ErrorInfo"].domain == "parley.dev"
    assert [(v.field, v.description) for v in details["BadRequest"].field_violations] == [("session_id", "is not valid")]


async def test_limits_carry_retry_info(stub, as_user):
    error = await call(stub, "busy", as_user("u1"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error_details(from_rpc_error(error))
    assert details["RetryInfo"].retry_delay.seconds == 2 and details["RetryInfo"].retry_delay.nanos == 500_000_000
    assert dict(details["ErrorInfo"].metadata) == {"limit": "60/min"}


async def test_unexpected_exceptions_become_a_bare_internal(stub, as_user, caplog):
    error = await call(stub, "bug", as_user("u1"))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in error.details() and "KeyError" not in error.details()
    assert "Traceback" not in error.details()


async def test_stream_failures_after_data_end_with_a_rich_status(stub, as_user):
    stream = stub.ExportSession(api.ExportSessionRequest(session_id="s"), metadata=as_user("u1"))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in stream:
            received.append(chunk.data)
    assert received == [b"first"]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_details(from_rpc_error(caught.value))["ErrorInfo"].reason == "BACKEND_DOWN"


async def test_the_verified_identity_reaches_the_servicer(stub, as_user):
    session = await stub.GetSession(api.GetSessionRequest(session_id="whoami"), metadata=as_user("alice@example"))
    assert session.user_id == "alice@example"


async def test_unimplemented_methods_stay_unimplemented(stub, as_user):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListSessions(api.ListSessionsRequest(), metadata=as_user("u1"))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
