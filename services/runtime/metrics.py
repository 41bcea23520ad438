"""Metrics for every process: one OpenTelemetry MeterProvider, exposed for Prometheus on the
service's metrics port and, when asked, pushed over OTLP; and one server interceptor that
measures every call and writes its one structured log line.

- Metrics port: `PARLEY_<SERVICE>_METRICS_PORT`, default the gRPC port + 1000 (gateway 51051,
  llm 51052, …), `off` to expose nothing; on the service's listen address. `GET /metrics`.
- OTLP: with `OTEL_METRICS_EXPORTER=otlp` the same metrics also go to the OTLP endpoint of the
  standard `OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT` variables (Jaeger takes only traces, so
  this is off unless asked).
- Per call (`CallInterceptor`): `rpc.server.call.duration` (seconds, by `rpc.service`,
  `rpc.method` and `rpc.response.status_code`, the status name) and one `parley.rpc` log line
  with the method, status, duration, user id and trace and span ids. Never a message's content.

Instruments are created on the global meter API, so code may record before (or without)
`setup_metrics`: until a MeterProvider is installed they are no-ops.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from dataclasses import dataclass

import grpc
from opentelemetry import metrics, trace

from services.runtime.config import DEFAULT_PORTS, ConfigError, env_int, env_str
from services.runtime.telemetry import serving_task

log = logging.getLogger("parley.metrics")
call_log = logging.getLogger("parley.rpc.calls")

# Health checks and reflection are polled constantly: they would drown the calls that matter.
_INFRASTRUCTURE = ("/grpc.health.", "/grpc.reflection.")
METRICS_PORT_OFFSET = 1000

# Bucket bounds in seconds, from a cache hit to a long generation.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# The GenAI semantic conventions' token buckets.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)

_meter = metrics.get_meter("parley.rpc")
_call_duration = _meter.create_histogram(
    "rpc.server.call.duration", unit="s", description="Duration of gRPC calls served, by method and status")


def metrics_port(service: str) -> int | None:
    """Where this service exposes /metrics, or None when it exposes nothing."""
    name = f"PARLEY_{service.upper()}_METRICS_PORT"
    raw = env_str(name)
    if raw is not None and raw.lower() in ("off", "none", "false", "no"):
        return None
    grpc_port = env_int(f"PARLEY_{service.upper()}_PORT", DEFAULT_PORTS.get(service, 0), minimum=0)
    default = grpc_port + METRICS_PORT_OFFSET if grpc_port else 0
    port = env_int(name, default, minimum=0)
    if port > 65535:
        raise ConfigError(f"{name} must be a TCP port, got {port}")
    return port or None


def metrics_host(service: str) -> str:
    return env_str(f"PARLEY_{service.upper()}_HOST", env_str("PARLEY_HOST", "127.0.0.1"))


def _views():
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    seconds = ExplicitBucketHistogramAggregation(LATENCY_BUCKETS)
    tokens = ExplicitBucketHistogramAggregation(TOKEN_BUCKETS)
    return [
        View(instrument_unit="s", aggregation=seconds),
        View(instrument_unit="{token}", aggregation=tokens),
    ]


_provider = None
_endpoint_port: int | None = None


def setup_metrics(service: str, *, port: int | None | str = "env", extra_readers: tuple = ()) -> int | None:
    """Installs the process's MeterProvider and starts the /metrics endpoint, once per process
    (later calls return the same port). Returns the port it listens on (None: not exposed). A
    port that cannot be bound is logged, not fatal: the service still serves. `extra_readers`
    (a test's in-memory reader) see the same instruments: OpenTelemetry takes only the first
    global MeterProvider of a process, so a second one could never be installed beside it."""
    global _provider, _endpoint_port
    if _provider is not None:
        return _endpoint_port
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource

    readers = [PrometheusMetricReader(), *extra_readers]
    exporters = {e.strip() for e in (env_str("OTEL_METRICS_EXPORTER", "") or "").split(",")}
    if "otlp" in exporters:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", f"parley-{service}")})
    _provider = MeterProvider(resource=resource, metric_readers=readers, views=_views())
    metrics.set_meter_provider(_provider)
    chosen = metrics_port(service) if port == "env" else port
    if chosen is None:
        return None
    from prometheus_client import start_http_server

    host = metrics_host(service)
    try:
        server, _ = start_http_server(chosen, addr=host)
    except OSError as exc:
        log.error("metrics: cannot listen on %s:%d (%s); set PARLEY_%s_METRICS_PORT", host, chosen, exc.strerror,
                  service.upper())
        return None
    _endpoint_port = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, _endpoint_port)
    return _endpoint_port


# --- per call -------------------------------------------------------------------------------


@dataclass
class _Call:
    """What the call's log line needs that only inner layers know (who the caller is)."""

    user_id: str | None = None
    # Set when the handler raised past every error mapping (gRPC then answers UNKNOWN).
    failed: bool = False
    # The span of a handler that traces itself (the gateway's forwarding), for the log line.
    span: object | None = None


_current_call: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("parley_call", default=None)


def note_caller(user_id: str, span=None) -> None:
    """Called by whatever authenticates a call (the identity interceptor, the gateway): the
    user id goes into the call's log line, and so do the ids of `span`, the call's own span
    when its handler starts one itself."""
    call = _current_call.get()
    if call is not None:
        call.user_id = user_id
        if span is not None:
            call.span = span


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Duration and outcome of every call, and its log line, measured from when the handler
    starts until gRPC reports the call done (the last message sent, or the call cancelled).

    It adds no work per streamed message: the outcome comes from a done-callback. For methods
    the tracing interceptor wraps (everything but `own_prefixes`), a streaming handler is
    passed through as it is, since that wrapper (an async generator) is what gRPC iterates;
    methods under `own_prefixes` (handlers that trace themselves, like the gateway's
    forwarding) get an async generator of their own."""

    def __init__(self, own_prefixes: tuple[str, ...] = ()) -> None:
        self._skip = _INFRASTRUCTURE
        self._own = own_prefixes
        self._labels: dict[str, tuple[str, str]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self._skip):
            return handler
        service, name = self._labels.get(method) or self._labels.setdefault(method, _split(method))
        begin = self._begin(method, service, name)
        if handler.unary_unary or handler.stream_unary:
            behavior = handler.unary_unary or handler.stream_unary

            async def unary(request, context):
                call = begin(context)
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    call.failed = True
                    raise

            make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            return make(unary, handler.request_deserializer, handler.response_serializer)
        behavior = handler.unary_stream or handler.stream_stream
        if method.startswith(self._own):
            async def streaming(request, context):
                begin(context)
                async for response in behavior(request, context):
                    yield response
        else:
            def streaming(request, context):
                begin(context)
                return behavior(request, context)
        make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        return make(streaming, handler.request_deserializer, handler.response_serializer)

    @staticmethod
    def _begin(method: str, service: str, name: str):
        def begin(context) -> None:
            started = time.perf_counter()
            call = _Call()
            _current_call.set(call)
            span = trace.get_current_span().get_span_context()
            # gRPC runs done-callbacks before it records a cancellation on the context; the
            # call's task knows it was cancelled (the client left, or its deadline passed).
            task = serving_task()

            def done(finished) -> None:
                duration = time.perf_counter() - started
                status = _status_of(finished, task, call)
                _call_duration.record(duration, {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name,
                                                 "rpc.response.status_code": status})
                level = logging.DEBUG if status == "OK" and method in _quiet_when_ok else logging.INFO
                if call_log.isEnabledFor(level):
                    fields = {"rpc.method": method, "rpc.status": status, "duration_ms": round(duration * 1000, 3)}
                    if call.user_id is not None:
                        fields["user_id"] = call.user_id
                    ids = call.span.get_span_context() if call.span is not None else span
                    if ids.is_valid:
                        fields["trace_id"] = format(ids.trace_id, "032x")
                        fields["span_id"] = format(ids.span_id, "016x")
                    call_log.log(level, "%s %s %.1fms", method, status, duration * 1000, extra={"fields": fields})

            context.add_done_callback(done)
            return call

        return begin


_BY_NUMBER = {status.value[0]: status.name for status in grpc.StatusCode}

# Methods that a background loop calls every second or so (an engine's queue scan): a successful
# call of one is logged at DEBUG, so INFO logs show traffic, not polling. Still measured.
_quiet_when_ok: set[str] = set()


def log_quietly_when_ok(*methods: str) -> None:
    """Marks full method names (`/package.Service/Method`) as routine polls (see above)."""
    _quiet_when_ok.update(methods)


def _status_of(context, task: asyncio.Task | None, call: _Call) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return _BY_NUMBER.get(code, "UNKNOWN")
    if (task is not None and task.cancelling()) or context.cancelled():
        return "CANCELLED"
    return "UNKNOWN" if call.failed else "OK"


# --- domain metrics: one instrument each, recorded by a one-line call where the work happens --

_parley = metrics.get_meter("parley")
_file_processing = _parley.create_histogram(
    "parley.files.processing.duration", unit="s",
    description="Background processing of a file (kind=file: extraction) or a store entry (kind=entry: chunking "
                "and embedding), by outcome: processed, failed (the item is marked failed) or retried")


def file_processed(kind: str, outcome: str, seconds: float) -> None:
    _file_processing.record(seconds, {"kind": kind, "outcome": outcome})


# The llm service's reliability (its calls, tokens, cost, latency and queue depth come from
# services/llm/metrics.py). Labelled by provider: a bounded set, unlike model ids.
_retries = _parley.create_counter(
    "parley.llm.retries", unit="{retry}",
    description="Vendor attempts retried after a retryable failure, by provider and error kind")
_fallbacks = _parley.create_counter(
    "parley.llm.fallbacks", unit="{fallback}",
    description="Calls that moved on to the next model of their chain, by the provider left")
_cooldowns = _parley.create_counter("parley.llm.cooldowns", unit="{cooldown}",
                                    description="Deployments put into cooldown after consecutive failures, by provider")
_budget_checks = _parley.create_counter(
    "parley.llm.budget.checks", unit="{check}",
    description="Budget checks before model calls by state: ok, near_limit (90% used or more) or exceeded")
BUDGET_NEAR = 0.9


def llm_retried(provider: str, error_kind: str) -> None:
    _retries.add(1, {"gen_ai.provider.name": provider, "error.type": error_kind})


def llm_fell_back(provider: str) -> None:
    _fallbacks.add(1, {"gen_ai.provider.name": provider})


def llm_cooled_down(model_id: str) -> None:
    _cooldowns.add(1, {"gen_ai.provider.name": model_id.partition("/")[0]})


def budget_checked(used_fraction: float) -> None:
    """`used_fraction`: the most used of the caller's budgets (spent / limit)."""
    state = "exceeded" if used_fraction >= 1 else "near_limit" if used_fraction >= BUDGET_NEAR else "ok"
    _budget_checks.add(1, {"state": state})


# Runs of the assistants engine, and the sandbox's executions.
_runs = _parley.create_counter(
    "parley.assistants.runs", unit="{run}",
    description="Runs that ended, by status (completed, failed, cancelled, incomplete, expired)")
_run_duration = _parley.create_histogram("parley.assistants.run.duration", unit="s",
                                         description="From a run's start to its end, by status")


def run_ended(status: str, seconds: float | None) -> None:
    _runs.add(1, {"status": status})
    if seconds is not None:
        _run_duration.record(seconds, {"status": status})


_executions = _parley.create_histogram(
    "parley.sandbox.execution.duration", unit="s",
    description="Code executions in a sandbox, by outcome: ok, error (the code raised) or stopped (a wall stopped it)")
_walls = _parley.create_counter(
    "parley.sandbox.stops", unit="{stop}",
    description="Executions a sandbox wall stopped or cut, by wall: memory, cpu, wall_time, disk, output")


def sandbox_executed(outcome) -> None:
    """`outcome`: the sandbox kernel's Outcome of one execution. Also marks the current span
    (the ExecuteCode call's) with the outcome and the walls that stopped the code."""
    walls = [name for name, hit in (
        ("memory", outcome.memory_exceeded), ("cpu", outcome.timed_out and outcome.time_limit == "cpu"),
        ("wall_time", outcome.timed_out and outcome.time_limit != "cpu"), ("disk", outcome.disk_exceeded),
        ("output", outcome.output_flooded)) if hit]
    for wall in walls:
        _walls.add(1, {"wall": wall})
    result = "stopped" if walls else "error" if outcome.error_name else "ok"
    _executions.record(outcome.duration_seconds, {"outcome": result})
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("parley.sandbox.outcome", result)
        if walls:
            span.set_attribute("parley.sandbox.stopped_by", walls)
