"""The bootstrap's per-call measurements on a real server: latency histograms by method and
outcome on the /metrics endpoint, and one structured log line per call — with the user id and
trace ids, never the request's content. Settings: the metrics port and the log level per
service."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request

import grpc
import pytest

from parley.sessions.v1 import sessions_pb2, sessions_service_pb2, sessions_service_pb2_grpc
from services.runtime import errors, metrics
from services.runtime.config import ConfigError
from services.runtime.logs import JsonFormatter, setup_logging
from tests.conftest import channel_to, serve_app

SECRET_TITLE = "my secret plans for alice@example.com"


class _Sessions(sessions_service_pb2_grpc.SessionServiceServicer):
    async def CreateSession(self, request, context):
        return sessions_pb2.Session(id="s-1", title=request.title)

    async def GetSession(self, request, context):
        raise errors.NotFound("no such session", reason="SESSION_NOT_FOUND")

    async def ExportSession(self, request, context):
        for part in (b"a", b"b", b"c"):
            yield sessions_service_pb2.ExportSessionResponse(data=part)
        if request.session_id == "slow":
            await asyncio.sleep(60)


class _App:
    service_names = ("parley.sessions.v1.SessionService",)

    def register(self, server) -> None:
        sessions_service_pb2_grpc.add_SessionServiceServicer_to_server(_Sessions(), server)

    async def aclose(self) -> None:
        pass


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one series name in Prometheus' text format."""
    from prometheus_client.parser import text_string_to_metric_families

    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found.append((sample.labels, sample.value))
    return found


def count_of(text: str, method: str, status: str) -> float:
    return sum(value for labels, value in samples(text, "rpc_server_call_duration_seconds_count")
               if labels.get("rpc_method") == method and labels.get("rpc_response_status_code") == status
               and labels.get("rpc_service") == "parley.sessions.v1.SessionService")


async def test_each_call_is_measured_by_method_and_outcome_and_logged_once(metrics_endpoint, identity_public_key,
                                                                            as_user, caplog):
    running = await serve_app(_App(), "sessions", identity_public_key)
    before = scrape(metrics_endpoint)
    caplog.set_level(logging.INFO, logger="parley.rpc.calls")
    try:
        async with channel_to(running) as channel:
            stub = sessions_service_pb2_grpc.SessionServiceStub(channel)
            await stub.CreateSession(sessions_service_pb2.CreateSessionRequest(title=SECRET_TITLE),
                                     metadata=as_user("alice"))
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetSession(sessions_service_pb2.GetSessionRequest(session_id="x"), metadata=as_user("alice"))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetSession(sessions_service_pb2.GetSessionRequest(session_id="x"))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            chunks = [r.data async for r in stub.ExportSession(
                sessions_service_pb2.ExportSessionRequest(session_id="s-1"), metadata=as_user("bob"))]
            assert chunks == [b"a", b"b", b"c"]
            # A client that leaves mid-stream: the call counts as CANCELLED.
            slow = stub.ExportSession(sessions_service_pb2.ExportSessionRequest(session_id="slow"),
                                      metadata=as_user("bob"))
            await slow.read()
            slow.cancel()
            for _ in range(200):
                if any(r.fields["rpc.status"] == "CANCELLED" for r in caplog.records if hasattr(r, "fields")):
                    break
                await asyncio.sleep(0.05)
    finally:
        await running.stop(0)
    after = scrape(metrics_endpoint)
    for method, status in [("CreateSession", "OK"), ("GetSession", "NOT_FOUND"), ("GetSession", "UNAUTHENTICATED"),
                           ("ExportSession", "OK"), ("ExportSession", "CANCELLED")]:
        assert count_of(after, method, status) == count_of(before, method, status) + 1, (method, status)
    buckets = [labels["le"] for labels, _ in samples(after, "rpc_server_call_duration_seconds_bucket")
               if labels.get("rpc_method") == "CreateSession"]
    assert "0.005" in buckets and "+Inf" in buckets  # seconds, not the SDK's millisecond defaults

    # Only this test's server: other suites' in-process servers (a run store answering an
    # engine's ClaimRuns) may log calls of their own meanwhile.
    lines = [r for r in caplog.records if r.name == "parley.rpc.calls"
             and r.fields["rpc.method"].startswith("/parley.sessions.v1.SessionService/")]
    by_status = {(r.fields["rpc.method"], r.fields["rpc.status"]): r for r in lines}
    assert len(lines) == 5, [r.fields for r in lines]
    created = by_status[("/parley.sessions.v1.SessionService/CreateSession", "OK")]
    assert created.fields["user_id"] == "alice" and created.fields["duration_ms"] >= 0
    assert "user_id" not in by_status[("/parley.sessions.v1.SessionService/GetSession", "UNAUTHENTICATED")].fields
    assert by_status[("/parley.sessions.v1.SessionService/ExportSession", "CANCELLED")].fields["user_id"] == "bob"
    for record in lines:  # the test process traces (tests/conftest.py): each line names its span
        assert len(record.fields["trace_id"]) == 32 and len(record.fields["span_id"]) == 16
        formatted = JsonFormatter("sessions").format(record)
        assert SECRET_TITLE not in formatted and "alice@example.com" not in formatted
        entry = json.loads(formatted)
        assert entry["rpc.method"] == record.fields["rpc.method"] and entry["trace_id"] == record.fields["trace_id"]


async def test_a_routine_poll_is_logged_at_debug_when_it_succeeds_and_still_measured(metrics_endpoint,
                                                                                     identity_public_key, as_user,
                                                                                     caplog):
    method = "/parley.sessions.v1.SessionService/CreateSession"
    metrics.log_quietly_when_ok(method)
    running = await serve_app(_App(), "sessions", identity_public_key)
    before = scrape(metrics_endpoint)
    caplog.set_level(logging.DEBUG, logger="parley.rpc.calls")
    try:
        async with channel_to(running) as channel:
            stub = sessions_service_pb2_grpc.SessionServiceStub(channel)
            await stub.CreateSession(sessions_service_pb2.CreateSessionRequest(title="t"), metadata=as_user("alice"))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.CreateSession(sessions_service_pb2.CreateSessionRequest(title="t"))  # no identity
            for _ in range(100):
                if len([r for r in caplog.records if r.name == "parley.rpc.calls"
                        and r.fields["rpc.method"] == method]) >= 2:
                    break
                await asyncio.sleep(0.05)
    finally:
        metrics._quiet_when_ok.discard(method)
        await running.stop(0)
    levels = {r.fields["rpc.status"]: r.levelno for r in caplog.records
              if r.name == "parley.rpc.calls" and r.fields["rpc.method"] == method}
    assert levels == {"OK": logging.DEBUG, "UNAUTHENTICATED": logging.INFO}  # a failing poll still shows
    assert count_of(scrape(metrics_endpoint), "CreateSession", "OK") == count_of(before, "CreateSession", "OK") + 1


def test_the_metrics_port_defaults_to_the_grpc_port_plus_1000_and_can_be_turned_off(monkeypatch):
    monkeypatch.delenv("PARLEY_LLM_METRICS_PORT", raising=False)
    monkeypatch.delenv("PARLEY_LLM_PORT", raising=False)
    assert metrics.metrics_port("llm") == 51052
    monkeypatch.setenv("PARLEY_LLM_PORT", "6000")
    assert metrics.metrics_port("llm") == 7000
    monkeypatch.setenv("PARLEY_LLM_METRICS_PORT", "9464")
    assert metrics.metrics_port("llm") == 9464
    monkeypatch.setenv("PARLEY_LLM_METRICS_PORT", "off")
    assert metrics.metrics_port("llm") is None
    monkeypatch.setenv("PARLEY_LLM_METRICS_PORT", "lots")
    with pytest.raises(ConfigError, match="PARLEY_LLM_METRICS_PORT"):
        metrics.metrics_port("llm")
    monkeypatch.setenv("PARLEY_LLM_METRICS_PORT", "70000")
    with pytest.raises(ConfigError, match="PARLEY_LLM_METRICS_PORT"):
        metrics.metrics_port("llm")


def test_the_log_level_is_set_per_service_over_the_global_one(monkeypatch):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        monkeypatch.setenv("PARLEY_LOG_LEVEL", "WARNING")
        monkeypatch.setenv("PARLEY_FILES_LOG_LEVEL", "DEBUG")
        setup_logging("files")
        assert root.level == logging.DEBUG
        setup_logging("llm")
        assert root.level == logging.WARNING
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
