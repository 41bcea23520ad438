"""W3C trace context crosses every gRPC hop: a client span and the server span it caused
share one trace, and the database calls of that RPC hang below it."""

from __future__ import annotations

import grpc

from parley.sessions.v1 import sessions_service_pb2 as api
from parley.sessions.v1 import sessions_service_pb2_grpc as api_grpc
from services.runtime.telemetry import client_interceptors
from tests.conftest import span_exporter


async def test_trace_context_propagates_to_the_server_and_database(sessions_server, as_user):
    span_exporter.clear()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sessions_server.port}", interceptors=client_interceptors())
    try:
        stub = api_grpc.SessionServiceStub(channel)
        await stub.CreateSession(api.CreateSessionRequest(title="traced"), metadata=as_user("tracer"))
    finally:
        await channel.close()
    spans = span_exporter.get_finished_spans()
    rpc = [s for s in spans if s.name == "/parley.sessions.v1.SessionService/CreateSession"]
    client = next(s for s in rpc if s.kind.name == "CLIENT")
    server = next(s for s in rpc if s.kind.name == "SERVER")
    assert server.context.trace_id == client.context.trace_id
    assert server.parent.span_id == client.context.span_id
    database = [s for s in spans if s.context.trace_id == client.context.trace_id and s.attributes.get("db.system")]
    assert database, "asyncpg spans should join the RPC's trace"
    # Message content and identities never land in span attributes.
    for span in spans:
        for value in span.attributes.values():
            assert "x-parley-identity" not in str(value) and "traced" not in str(value)
