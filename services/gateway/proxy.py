"""Forwarding: every public method of the backends, served under its own name and passed on
as raw bytes (no deserialising on the way through, no buffering of streams).

Each call passes the gate (credential, scope, limits), its request passes input hygiene,
and it goes to the backend with the caller's remaining deadline, the trace context, a
request id and a minted internal identity instead of the caller's credential. A client that
cancels cancels the backend call. A backend that cannot be reached answers UNAVAILABLE
naming it; any other backend status is relayed unchanged, rich details included.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError
from grpc.aio import EOF, AbortError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace

from parley.llm.v1 import llm_service_pb2
from services.gateway.gate import Gate
from services.gateway.hygiene import control_character_violations, redact_prompt
from services.gateway.models import Principal
from services.gateway.routes import PROMPT_METHODS, USAGE_METHODS, Route
from services.runtime import errors
from services.runtime.identity import METADATA_KEY
from services.runtime.status import to_grpc_status

log = logging.getLogger("parley.gateway.proxy")

REQUEST_ID_KEY = "x-request-id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_DETAILS_KEY = "grpc-status-details-bin"
_TRACE_KEYS = ("traceparent", "tracestate", "baggage")


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # A restarted backend is found again within a couple of seconds.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


@dataclass
class Backend:
    name: str
    target: str | None
    service: str
    channel: grpc.aio.Channel | None = None
    _callables: dict[str, object] = field(default_factory=dict)

    def connect(self, max_message_bytes: int) -> None:
        if self.target:
            self.channel = grpc.aio.insecure_channel(self.target, options=channel_options(max_message_bytes))

    def callable(self, route: Route):
        found = self._callables.get(route.path)
        if found is None:
            if self.channel is None:
                raise errors.Unavailable(f"the {self.name} service is not configured on this gateway",
                                         reason="BACKEND_NOT_CONFIGURED", metadata={"backend": self.name})
            if route.client_streaming and route.server_streaming:
                found = self.channel.stream_stream(route.path)
            elif route.client_streaming:
                found = self.channel.stream_unary(route.path)
            elif route.server_streaming:
                found = self.channel.unary_stream(route.path)
            else:
                found = self.channel.unary_unary(route.path)
            self._callables[route.path] = found
        return found

    def unavailable(self, detail: str = "") -> errors.Unavailable:
        return errors.Unavailable(
            f"the {self.name} service is unavailable ({self.target}); try again shortly"
            + (f": {detail[:200]}" if detail else ""),
            reason="BACKEND_UNAVAILABLE", metadata={"backend": self.name}, retry_after=1.0,
        )

    async def check(self, timeout: float) -> bool:
        if self.channel is None:
            return False
        try:
            reply = await health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=self.service), timeout=timeout
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def aclose(self) -> None:
        if self.channel is not None:
            await self.channel.close()


def _tokens_in(route: Route, message: bytes) -> int:
    """Model tokens reported by the final event of a stream (or a unary response)."""
    try:
        if USAGE_METHODS.get(route.path) == "stream":
            event = llm_service_pb2.StreamGenerateResponse.FromString(message)
            if event.WhichOneof("event") != "finish":
                return 0
            usage = event.finish.usage
        else:
            usage = llm_service_pb2.GenerateResponse.FromString(message).usage
    except DecodeError:
        return 0
    return usage.total_tokens or usage.input_tokens + usage.output_tokens


class Proxy(grpc.GenericRpcHandler):
    """The forwarding handlers. They map their own errors and start their own spans (the
    app lists their prefixes as self-managed), because the shared interceptors would add a
    wrapper per streamed message; the mapping is the same `to_grpc_status`."""

    def __init__(self, routes: Mapping[str, Route], backends: Mapping[str, Backend], gate: Gate) -> None:
        self._gate = gate
        self._backends = backends
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        for path, route in routes.items():
            if route.client_streaming and route.server_streaming:
                handler = grpc.stream_stream_rpc_method_handler(self._bidi(route))
            elif route.client_streaming:
                handler = grpc.stream_unary_rpc_method_handler(self._client_streaming(route))
            elif route.server_streaming:
                handler = grpc.unary_stream_rpc_method_handler(self._server_streaming(route))
            else:
                handler = grpc.unary_unary_rpc_method_handler(self._unary(route))
            self._handlers[path] = handler

    def service(self, handler_call_details):
        return self._handlers.get(handler_call_details.method)

    @staticmethod
    def prefixes(routes: Mapping[str, Route]) -> tuple[str, ...]:
        return tuple(sorted({f"/{route.service}/" for route in routes.values()}))

    # --- the parts every call shares ---------------------------------------------------

    async def _enter(self, route: Route, context) -> tuple[Principal, list[tuple[str, str]], object]:
        """Authenticates and authorises; the metadata for the backend and the span (or None)."""
        authorization = request_id = None
        trace_headers: dict[str, str] = {}
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value
            elif key == REQUEST_ID_KEY:
                request_id = value
            elif key in _TRACE_KEYS:
                trace_headers[key] = value
        try:
            principal = await self._gate.authenticate(authorization)
            self._gate.authorize(principal, route.scope, route.service)
        except (errors.Unauthenticated, errors.PermissionDenied) as error:
            log.info("refused %s: %s", route.path, error.reason)
            raise
        if not request_id or not _REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex
        metadata = [(METADATA_KEY, self._gate.identity(principal)), (REQUEST_ID_KEY, request_id)]
        span = None
        provider = trace.get_tracer_provider()
        if hasattr(provider, "add_span_processor"):  # the SDK is installed: spans go somewhere
            parent = propagate.extract(trace_headers)
            span = provider.get_tracer("parley.gateway").start_span(
                route.path[1:], context=parent, kind=trace.SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": route.service, "rpc.method": route.method,
                            "parley.backend": route.backend, "parley.request_id": request_id},
            )
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span, parent))
            metadata.extend(carrier.items())
        else:  # no spans here: the caller's trace context goes on unchanged
            metadata.extend(trace_headers.items())
        return principal, metadata, span

    def _inspect(self, route: Route, principal: Principal, request: bytes, index: int = 0) -> bytes:
        """Size limit, control characters and the PII policy; the request to forward."""
        if len(request) > route.max_request_bytes:
            raise errors.InvalidArgument(
                f"the request is {len(request)} bytes; {route.method} accepts at most {route.max_request_bytes}",
                reason="REQUEST_TOO_LARGE", metadata={"max_bytes": str(route.max_request_bytes)},
            )
        if index > 0:  # later messages of a client stream are data chunks
            return request
        try:
            message = route.request_class.FromString(request)
        except DecodeError:
            raise errors.InvalidArgument(f"the request is not a valid {route.request_class.DESCRIPTOR.full_name}",
                                         reason="REQUEST_MALFORMED") from None
        violations = control_character_violations(message)
        if violations:
            errors.collect(violations)
        if principal.redact_prompt_pii and route.path in PROMPT_METHODS and redact_prompt(message):
            return message.SerializeToString()
        return request

    async def _relay(self, context, backend: Backend, exc: grpc.aio.AioRpcError) -> None:
        code = exc.code()
        trailing = tuple(
            (k, v) for k, v in (exc.trailing_metadata() or ()) if not k.startswith("grpc-") or k == _DETAILS_KEY
        )
        if code == grpc.StatusCode.UNAVAILABLE and not any(k == _DETAILS_KEY for k, _ in trailing):
            # Not the backend's own answer: the connection failed or broke.
            log.warning("backend %s unavailable: %s", backend.name, exc.details())
            raise backend.unavailable()
        await context.abort(code, exc.details() or "", trailing)

    @staticmethod
    async def _fail(context, route: Route, exc: BaseException, span) -> None:
        """Ends the call with the rich status of a domain error, or a bare INTERNAL."""
        if span is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        if not isinstance(exc, errors.ParleyError):
            log.error("unhandled error in %s", route.path, exc_info=exc)
            exc = errors.Internal("internal error; the server log has the details", reason="INTERNAL")
        status = to_grpc_status(exc)
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def _record_usage(self, route: Route, principal: Principal, last: bytes | None) -> None:
        if last is None or route.path not in USAGE_METHODS:
            return
        subjects = self._gate.subjects(principal)
        if any(s.limits.tokens_per_minute for s in subjects):
            await self._gate.limiter.record_tokens(subjects, _tokens_in(route, last))

    # --- one behaviour per cardinality -------------------------------------------------

    def _unary(self, route: Route):
        backend = self._backends[route.backend]

        async def forward(request: bytes, context) -> bytes:
            span = None
            try:
                principal, metadata, span = await self._enter(route, context)
                request = self._inspect(route, principal, request)
                await self._gate.admit(principal, stream=False)
                call = backend.callable(route)(request, metadata=metadata, timeout=context.time_remaining())
                try:
                    response = await call
                except grpc.aio.AioRpcError as exc:
                    await self._relay(context, backend, exc)
                except asyncio.CancelledError:
                    call.cancel()
                    raise
                await self._record_usage(route, principal, response)
                return response
            except (AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - domain errors and the last line of defence
                await self._fail(context, route, exc, span)
            finally:
                if span is not None:
                    span.end()

        return forward

    def _server_streaming(self, route: Route):
        backend = self._backends[route.backend]

        async def forward(request: bytes, context) -> AsyncIterator[bytes]:
            span = call = admission = principal = None
            last = None
            try:
                principal, metadata, span = await self._enter(route, context)
                request = self._inspect(route, principal, request)
                admission = await self._gate.admit(principal, stream=True)
                call = backend.callable(route)(request, metadata=metadata, timeout=context.time_remaining())
                read = call.read
                while True:
                    message = await read()
                    if message is EOF:
                        break
                    last = message
                    yield message
            except grpc.aio.AioRpcError as exc:
                try:
                    await self._relay(context, backend, exc)
                except errors.ParleyError as error:
                    await self._fail(context, route, error, span)
            except (AbortError, asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001
                await self._fail(context, route, exc, span)
            finally:
                if call is not None and not call.done():
                    call.cancel()  # the client went away: stop the backend (and its vendor) too
                if admission is not None:
                    await self._gate.limiter.release(admission)
                if principal is not None:
                    await self._record_usage(route, principal, last)
                if span is not None:
                    span.end()

        return forward

    def _client_streaming(self, route: Route):
        backend = self._backends[route.backend]

        async def forward(request_iterator, context) -> bytes:
            span = None
            failure: list[errors.ParleyError] = []
            try:
                principal, metadata, span = await self._enter(route, context)
                await self._gate.admit(principal, stream=False)
                call = None

                async def requests():
                    index = 0
                    async for message in request_iterator:
                        try:
                            message = self._inspect(route, principal, message, index)
                        except errors.ParleyError as error:
                            failure.append(error)
                            call.cancel()
                            return
                        index += 1
                        yield message

                call = backend.callable(route)(requests(), metadata=metadata, timeout=context.time_remaining())
                try:
                    return await call
                except grpc.aio.AioRpcError as exc:
                    await self._relay(context, backend, exc)
                except asyncio.CancelledError:
                    if failure:
                        raise failure[0] from None
                    call.cancel()
                    raise
            except (AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001
                await self._fail(context, route, exc, span)
            finally:
                if span is not None:
                    span.end()

        return forward

    def _bidi(self, route: Route):
        backend = self._backends[route.backend]

        async def forward(request_iterator, context) -> AsyncIterator[bytes]:
            span = call = admission = None
            try:
                principal, metadata, span = await self._enter(route, context)
                admission = await self._gate.admit(principal, stream=True)

                async def requests():
                    index = 0
                    async for message in request_iterator:
                        yield self._inspect(route, principal, message, index)
                        index += 1

                call = backend.callable(route)(requests(), metadata=metadata, timeout=context.time_remaining())
                async for message in call:
                    yield message
            except grpc.aio.AioRpcError as exc:
                try:
                    await self._relay(context, backend, exc)
                except errors.ParleyError as error:
                    await self._fail(context, route, error, span)
            except (AbortError, asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001
                await self._fail(context, route, exc, span)
            finally:
                if call is not None and not call.done():
                    call.cancel()
                if admission is not None:
                    await self._gate.limiter.release(admission)
                if span is not None:
                    span.end()

        return forward
