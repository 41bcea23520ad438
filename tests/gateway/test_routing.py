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


async def test_the_sandbox_is_not_routed_either(gw_channel, make_key):
    secret = await make_key("route-admin", ["admin"])
    for path in ("/parley.sandbox.v1.SandboxService/Execute", "/parley.sandbox.v1.SandboxService/CreateSession"):
        await expect_error(gw_channel.unary_unary(path)(b"", metadata=bearer(secret)), grpc.StatusCode.UNIMPLEMENTED)


def test_routes_cover_the_public_services_only_and_assistants_go_to_their_engine(monkeypatch):
    from services.gateway.app import GatewaySettings
    from services.gateway.routes import build_routes

    routes = build_routes()
    assert {r.service for r in routes.values()} == {
        "parley.llm.v1.LLMService", "parley.sessions.v1.SessionService", "parley.files.v1.FileService",
        "parley.assistants.v1.AssistantService"}
    assert all(r.backend == "assistants" for r in routes.values() if r.service.startswith("parley.assistants."))
    assert "/parley.assistants.v1.AssistantService/StreamRun" in routes
    assert not any(path.startswith(("/parley.runstore.", "/parley.sandbox.")) for path in routes)
    monkeypatch.setenv("PARLEY_IDENTITY_PRIVATE_KEY", "unused")
    monkeypatch.delenv("PARLEY_ASSISTANTS_TARGET", raising=False)
    assert GatewaySettings.from_env().targets["assistants"] == "127.0.0.1:50056"
    monkeypatch.setenv("PARLEY_ASSISTANTS_TARGET", "10.0.0.7:7000")
    assert GatewaySettings.from_env().targets["assistants"] == "10.0.0.7:7000"


async def test_direct_backend_call_without_gateway_identity_is_refused(sessions_backend, make_key):
    secret = await make_key("route-user", ["sessions"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sessions_backend.port}") as channel:
        stub = sgrpc.SessionServiceStub(channel)
        await expect_error(stub.ListSessions(sapi.ListSessionsRequest()), grpc.StatusCode.UNAUTHENTICATED)
        # An API key is no identity to a backend either.
        await expect_error(stub.ListSessions(sapi.ListSessionsRequest(), metadata=bearer(secret)),
                           grpc.StatusCode.UNAUTHENTICATED)


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


class MetadataRecorder(grpc.aio.ServerInterceptor):
    """Notes what a backend receives (an observation hook on the real sessions service)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def intercept_service(self, continuation, handler_call_details):
        if not handler_call_details.method.startswith("/grpc."):
            self.seen.append(dict(handler_call_details.invocation_metadata or ()))
        return await continuation(handler_call_details)


async def test_backend_gets_identity_request_id_and_trace_context_but_not_the_credential(
        admin_url, identity_private_key, identity_public_key, make_key):
    from services.runtime.identity import IdentityVerifier
    from services.runtime.server import start_server
    from services.sessions.app import SessionsSettings
    from services.sessions.app import build_app as build_sessions_app
    from tests.conftest import server_settings

    recorder = MetadataRecorder()
    app = await build_sessions_app(SessionsSettings(
        admin_url=admin_url, database_url=None, role_password=None, pool_size=2, max_message_bytes=1024 * 1024,
        retention_days=0.0, retention_interval_seconds=3600.0))
    backend = await start_server(app, server_settings("sessions", identity_public_key),
                                 verifier=IdentityVerifier(identity_public_key), extra_interceptors=[recorder])
    running = await start_gateway(gateway_settings(admin_url, identity_private_key, targets={
        "llm": None, "sessions": f"127.0.0.1:{backend.port}", "files": None, "assistants": None}))
    try:
        secret = await make_key("meta-user", ["sessions"])
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            await sgrpc.SessionServiceStub(channel).ListSessions(
                sapi.ListSessionsRequest(), timeout=30,
                metadata=(*bearer(secret), ("traceparent", traceparent), ("x-request-id", "req-123")))
        seen = recorder.seen[-1]
        assert "authorization" not in seen
        assert seen["x-parley-identity"].startswith("eyJ")
        assert seen["x-request-id"] == "req-123"
        assert seen["traceparent"].split("-")[1] == trace_id  # the same trace, whether or not we add a span
    finally:
        await running.stop(0.5)
        await backend.stop(0.5)
