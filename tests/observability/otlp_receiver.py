"""An OTLP receiver for tests and the tracing benchmark: the real
`opentelemetry.proto.collector.trace.v1.TraceService` (and `...metrics.v1.MetricsService`) over
gRPC on a free loopback port, keeping every span (with its service's name) and the names of
the metrics it is sent, for the test to read."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    span: trace_pb2.Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def name(self) -> str:
        return self.span.name

    def attributes(self) -> dict[str, object]:
        return {kv.key: _value(kv.value) for kv in self.span.attributes}


def _value(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request, context):
        self._receiver._add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request, context):
        names = {(next((kv.value.string_value for kv in rm.resource.attributes if kv.key == "service.name"), ""),
                  metric.name)
                 for rm in request.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics}
        with self._receiver._lock:
            self._receiver.metric_names |= names
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpReceiver:
    """`with OtlpReceiver() as receiver:` — `receiver.endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT takes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.requests = 0
        # (service.name, metric name) of every metric received.
        self.metric_names: set[tuple[str, str]] = set()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                   options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop(0)

    def _add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            service = next((kv.value.string_value for kv in resource_spans.resource.attributes
                            if kv.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                received.extend(ReceivedSpan(service, span) for span in scope_spans.spans)
        with self._lock:
            self._spans.extend(received)
            self.requests += 1

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self.requests = 0
        # (service.name, metric name) of every metric received.
        self.metric_names: set[tuple[str, str]] = set()

    def wait_for(self, condition: Callable[[list[ReceivedSpan]], bool], timeout: float = 60.0) -> list[ReceivedSpan]:
        """Waits (bounded) until `condition(spans)` holds; returns the spans either way."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.spans()
            if condition(spans):
                return spans
            time.sleep(0.1)
        return self.spans()
