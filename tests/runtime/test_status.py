"""Error statuses stay inside gRPC's 16 KiB metadata limit whatever the caller sent."""

from __future__ import annotations

import grpc
import pytest

from parley.sessions.v1 import sessions_service_pb2 as api
from parley.sessions.v1 import sessions_service_pb2_grpc as api_grpc
from services.runtime import errors
from services.runtime.errors import FieldViolation
from services.runtime.status import STATUS_MAX_BYTES, error_details, from_rpc_error, to_status_proto
from tests.conftest import channel_to, serve_app


def _echoing_error(value: str, violations: int) -> errors.InvalidArgument:
    """An error quoting the caller's input everywhere it can: message, violations, metadata."""
    found = [FieldViolation(f"messages[{i}].model {value}", f"unknown model {value!r}") for i in range(violations)]
    error = errors.InvalidArgument(message="; ".join(f"{v.field}: {v.description}" for v in found),
                                   reason="INVALID_FIELDS", field_violations=found)
    error.metadata.update({f"model-{i}-{value}": value for i in range(40)})
    return error


class EchoingServicer(api_grpc.SessionServiceServicer):
    async def GetSession(self, request, context):
        raise _echoing_error(request.session_id, violations=int(request.session_id[:3] or 1))


class EchoingApp:
    service_names = ("parley.sessions.v1.SessionService",)

    def register(self, server):
        api_grpc.add_SessionServiceServicer_to_server(EchoingServicer(), server)

    async def aclose(self):
        pass


@pytest.mark.parametrize("text", ["m" * 20_000, "é☃" * 10_000, "\U0001F600" * 8_000])
def test_a_status_quoting_huge_input_stays_small(text):
    status = to_status_proto(_echoing_error(text, violations=500))
    assert status.ByteSize() <= STATUS_MAX_BYTES
    assert len(status.message.encode()) <= 1024
    bad_request = error_details(status)["BadRequest"]
    # The first violations are kept (cut) and the count of the rest said.
    assert bad_request.field_violations[0].field.startswith("messages[0].model ")
    assert "more violations not listed" in bad_request.field_violations[-1].description


def test_a_small_status_is_unchanged():
    error = errors.InvalidArgument.for_field("title", "is too long")
    error.metadata["limit"] = "200"
    status = to_status_proto(error)
    assert status.message == "title: is too long"
    details = error_details(status)
    assert [v.field for v in details["BadRequest"].field_violations] == ["title"]
    assert dict(details["ErrorInfo"].metadata) == {"limit": "200"}


@pytest.fixture(scope="module")
async def stub():
    running = await serve_app(EchoingApp(), "echoing", None)
    channel = channel_to(running)
    yield api_grpc.SessionServiceStub(channel)
    await channel.close()
    await running.stop(0)


@pytest.mark.parametrize("session_id", ["500" + "x" * 20_000, "001" + "ü" * 20_000])
async def test_the_caller_gets_the_invalid_argument_not_stream_removed(stub, session_id):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetSession(api.GetSessionRequest(session_id=session_id))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    status = from_rpc_error(caught.value)
    assert status is not None and error_details(status)["ErrorInfo"].reason == "INVALID_FIELDS"
