"""OpenTelemetry for every process: one tracer provider, W3C propagation, gRPC and asyncpg
spans. Spans are exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the
exporter reads the standard `OTEL_*` variables itself) and neither `OTEL_SDK_DISABLED=true`
nor `OTEL_TRACES_EXPORTER=none` turns export off.

Without an exporter the SDK is not installed: the instrumentation then makes non-recording
spans, which still carry the W3C trace context from hop to hop but cost next to nothing on
the request path."""

from __future__ import annotations

import asyncio
import contextvars
import os

import grpc
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_configured = False


def setup_telemetry(service: str, extra_processor: SpanProcessor | None = None) -> None:
    """Install the tracer provider once per process. `extra_processor` lets tests collect spans."""
    global _configured
    if _configured:
        if extra_processor is not None:
            trace.get_tracer_provider().add_span_processor(extra_processor)  # type: ignore[attr-defined]
        return
    exporting = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    # The standard switches turn export off even with an endpoint set.
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or os.environ.get("OTEL_TRACES_EXPORTER") == "none":
        exporting = False
    if exporting or extra_processor is not None:
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", f"parley-{service}")})
        provider = TracerProvider(resource=resource)
        if exporting:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        if extra_processor is not None:
            provider.add_span_processor(extra_processor)
        trace.set_tracer_provider(provider)
    try:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().instrument()
    except ImportError:  # services without a database don't install asyncpg's instrumentation
        pass
    _configured = True


def _not_infrastructure():
    # Health and reflection are polled constantly and the health Watch writes with
    # context.write, which OpenTelemetry's aio wrapper does not support.
    return filters.negate(
        filters.any_of(filters.service_prefix("grpc.health."), filters.service_prefix("grpc.reflection."))
    )


_INFRASTRUCTURE = ("/grpc.health.", "/grpc.reflection.")


def server_interceptor(skip_prefixes: tuple[str, ...] = ()):
    """Server spans for every method but infrastructure and `skip_prefixes` (methods whose
    handlers trace themselves). The filter runs on every call, so it is one startswith."""
    skipped = (*_INFRASTRUCTURE, *skip_prefixes)
    traced = aio_server_interceptor(filter_=lambda details: not details.method.startswith(skipped))
    return _StreamsInTheirOwnContext(traced, skipped)


class _StreamsInTheirOwnContext(grpc.aio.ServerInterceptor):
    """OpenTelemetry's aio wrapper of a server stream attaches the span's context inside an
    async generator. When the client goes away while gRPC is sending, gRPC drops that
    generator without closing it; the event loop closes it later from another context, and
    the detach fails ("Failed to detach context", with a traceback in the log). Running
    every step of the stream, and its closing, in one context of its own keeps attach and
    detach together."""

    def __init__(self, traced: grpc.aio.ServerInterceptor, skipped: tuple[str, ...]) -> None:
        self._traced = traced
        self._skipped = skipped

    async def intercept_service(self, continuation, handler_call_details):
        handler = await self._traced.intercept_service(continuation, handler_call_details)
        if handler is None or not handler.response_streaming or handler_call_details.method.startswith(self._skipped):
            return handler
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _in_own_context(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            _in_own_context(handler.stream_stream), handler.request_deserializer, handler.response_serializer
        )


# The task serving a call, for code that runs inside a stream's steps (each its own task).
_serving_task: contextvars.ContextVar[asyncio.Task | None] = contextvars.ContextVar("parley_serving_task", default=None)


def serving_task() -> asyncio.Task | None:
    """The task gRPC runs the current call in (the one a client's cancellation reaches)."""
    return _serving_task.get() or asyncio.current_task()


def _in_own_context(behavior):
    async def handle(request, context):
        _serving_task.set(asyncio.current_task())
        own = contextvars.copy_context()
        stream = behavior(request, context)
        try:
            while True:
                # A task runs in exactly the context it is given; cancelling this handler
                # cancels the step it waits for.
                response = await asyncio.create_task(_next(stream), context=own)
                if response is _END:
                    return
                yield response
        finally:
            await asyncio.create_task(_close(stream), context=own)

    return handle


_END = object()


async def _next(stream):
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return _END


async def _close(stream) -> None:
    await stream.aclose()


def client_interceptors():
    """For channels from one Parley service to another: carries the trace context along."""
    return aio_client_interceptors(filter_=_not_infrastructure())


def current_trace_parent() -> str:
    """The W3C `traceparent` of the current span, or "": stored with background work (a file
    to process) so that the work continues the trace of the call that asked for it."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


def context_of(trace_parent: str):
    """The OpenTelemetry context that continues `trace_parent` (None for ""): pass it as the
    `context` of background work's first span."""
    return propagate.extract({"traceparent": trace_parent}) if trace_parent else None
