"""Forwarding through the gateway to the real sessions service: unary and server-streaming
calls, metadata and identity, internal RPCs not routed, reflection and health."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from parley.files.v1 import files_service_pb2 as fapi
from parley.files.v1 import files_service_pb2_grpc as fgrpc
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from tests.conftest import expect_error
from tests.gateway.conftest import bearer, gateway_settings, start_gateway


async def test_unary_and_stream_reach_sessions_as_the_keys_user(gw_channel, make_key):
    secret = await make_key("route-user", ["sessions"])
    stub = sgrpc.SessionServiceStub(gw_channel)
    session = await stub.CreateSession(sapi.CreateSessionRequest(title="through the gateway"), metadata=bearer(secret))
    assert session.user_id == "route-user"
    fetched = await stub.GetSession(sapi.GetSessionRequest(session_id=session.id), metadata=bearer(secret))
    assert fetched.title == "through the gateway"
    chunks = [c async for c in stub.ExportSession(
        sapi.ExportSessionRequest(session_id=session.id, format=sapi.EXPORT_FORMAT_MARKDOWN), metadata=bearer(secret))]
    assert b"through the gateway" in b"".join(c.data for c in chunks)


async def test_backend_errors_are_relayed_with_their_details(gw_channel, make_key):
    secret = await make_key("route-user", ["sessions"])
    stub = sgrpc.SessionServiceStub(gw_channel)
    reason, _ = await expect_error(
        stub.GetSession(sapi.GetSessionRequest(session_id="0190a0f0-0000-7000-8000-000000000000"),
                        metadata=bearer(secret)), grpc.StatusCode.NOT_FOUND)
    assert reason == "SESSION_NOT_FOUND"


async def test_internal_services_are_not_routed(gw_channel, make_key):
    from parley.runstore.v1 import runstore_service_pb2 as rapi
    from parley.runstore.v1 import runstore_service_pb2_grpc as rgrpc

    secret = await make_key("route-admin", ["admin"])
    stub = rgrpc.RunStoreServiceStub(gw_channel)
    for call in (stub.ListRunEvents(rapi.ListRunEventsRequest(run_id="x"), metadata=bearer(secret)),
                 stub.GetRun(rapi.GetRunRequest(run_id="x"), metadata=bearer(secret))):
        await expect_error(call, grpc.StatusCode.UNIMPLEMENTED)


async def test_direct_backend_call_without_gateway_identity_is_refused(sessions_backend, make_key):
    secret = await make_key("route-user", ["sessions"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sessions_backend.port}") as channel:
        stub = sgrpc.SessionServiceStub(channel)
        await expect_error(stub.ListSessions(sapi.ListSessionsRequest()), grpc.StatusCode.UNAUTHENTICATED)
        # An API key is no identity to a backend either.
        await expect_error(stub.ListSessions(sapi.ListSessionsRequest(), metadata=bearer(secret)),
                           grpc.StatusCode.UNAUTHENTICATED)


@pytest.fixture
async def gateway_with_files_down(admin_url, identity_private_key, sessions_backend):
    running = await start_gateway(gateway_settings(admin_url, identity_private_key, targets={
        "llm": None, "sessions": f"127.0.0.1:{sessions_backend.port}", "files": "127.0.0.1:1", "assistants": None}))
    yield running
    await running.stop(0.5)


async def test_unreachable_backend_answers_unavailable_naming_it(gateway_with_files_down, make_key):
    secret = await make_key("route-user", ["files"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_with_files_down.port}") as channel:
        stub = fgrpc.FileServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListFiles(fapi.ListFilesRequest(), metadata=bearer(secret), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "files" in caught.value.details()
        health = health_pb2_grpc.HealthStub(channel)
        files = await health.Check(health_pb2.HealthCheckRequest(service="parley.files.v1.FileService"))
        assert files.status == health_pb2.HealthCheckResponse.NOT_SERVING
        sessions = await health.Check(health_pb2.HealthCheckRequest(service="parley.sessions.v1.SessionService"))
        assert sessions.status == health_pb2.HealthCheckResponse.SERVING


async def test_unconfigured_backend_answers_unavailable(gw_channel, make_key):
    from parley.assistants.v1 import assistants_service_pb2 as aapi
    from parley.assistants.v1 import assistants_service_pb2_grpc as agrpc

    secret = await make_key("route-user", ["assistants"])
    reason, _ = await expect_error(
        agrpc.AssistantServiceStub(gw_channel).ListAssistants(aapi.ListAssistantsRequest(), metadata=bearer(secret)),
        grpc.StatusCode.UNAVAILABLE)
    assert reason == "BACKEND_NOT_CONFIGURED"


async def test_health_reports_each_backend(gw_channel, gateway):
    stub = health_pb2_grpc.HealthStub(gw_channel)
    overall = await stub.Check(health_pb2.HealthCheckRequest())
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    sessions = await stub.Check(health_pb2.HealthCheckRequest(service="parley.sessions.v1.SessionService"))
    assert sessions.status == health_pb2.HealthCheckResponse.SERVING
    for service in ("parley.llm.v1.LLMService", "parley.files.v1.FileService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assistants = await stub.Check(health_pb2.HealthCheckRequest(service="parley.assistants.v1.AssistantService"))
    assert assistants.status == health_pb2.HealthCheckResponse.NOT_SERVING  # not configured here


async def test_reflection_lists_public_services_only(gw_channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(gw_channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for response in stub.ServerReflectionInfo(requests()):
        names |= {s.name for s in response.list_services_response.service}
    assert {"parley.llm.v1.LLMService", "parley.sessions.v1.SessionService", "parley.files.v1.FileService",
            "parley.gateway.v1.ApiKeyService"} <= names
