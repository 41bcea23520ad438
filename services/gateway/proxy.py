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
from google.protobuf.message import DecodeError, Message
from grpc._cython import cygrpc
from grpc.aio import EOF, AbortError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace

from parley.files.v1.files_service_pb2 import GetFileRequest
from parley.llm.v1 import llm_service_pb2
from services.gateway.gate import Gate
from services.gateway.hygiene import control_character_violations, redact_prompt
from services.gateway.models import Principal
from services.gateway.ownership import MAX_FILES_PER_REQUEST, FileReferences, malformed, not_yours, too_many_files
from services.gateway.routes import PROMPT_METHODS, USAGE_METHODS, Route
from services.runtime import audit, errors
from services.runtime.identity import METADATA_KEY
from services.runtime.metrics import note_caller
from services.runtime.status import to_grpc_status

log = logging.getLogger("parley.gateway.proxy")

REQUEST_ID_KEY = "x-request-id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_DETAILS_KEY = "grpc-status-details-bin"
_TRACE_KEYS = ("traceparent", "tracestate", "baggage")
GET_FILE = "/parley.files.v1.FileService/GetFile"
# Backend calls never go out without a deadline: the caller's, or this at most.
DEFAULT_MAX_DEADLINE_SECONDS = 3600.0
# First messages larger than this are inspected on a worker thread.
INSPECT_INLINE_BYTES = 256 * 1024
# How much of a refused upload the gateway reads (and drops) before answering anyway.
DRAIN_MAX_BYTES = 64 * 1024 * 1024


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
            if route.client_streaming:
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

    def __init__(self, routes: Mapping[str, Route], backends: Mapping[str, Backend], gate: Gate,
                 max_deadline_seconds: float = DEFAULT_MAX_DEADLINE_SECONDS) -> None:
        self._gate = gate
        self._backends = backends
        self._routes = routes
        self._max_deadline = max_deadline_seconds
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        # Requests that may name files of the caller's (checked before forwarding); the
        # files service checks its own.
        self._file_references: dict[str, FileReferences] = {}
        for path, route in routes.items():
            if route.client_streaming and route.server_streaming:
                # No contract has one; forwarding it needs a handler written (and tested) for it.
                raise ValueError(f"{path} is bidirectional: the gateway does not forward such methods")
            if route.client_streaming:
                handler = grpc.stream_unary_rpc_method_handler(self._client_streaming(route))
            elif route.server_streaming:
                handler = grpc.unary_stream_rpc_method_handler(self._server_streaming(route))
            else:
                handler = grpc.unary_unary_rpc_method_handler(self._unary(route))
            self._handlers[path] = handler
            references = FileReferences(route.request_class.DESCRIPTOR)
            if references and route.backend != "files":
                self._file_references[path] = references

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
        if not request_id or not _REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex
        audit.begin_call((), context, request_id)  # the self-managed calls start their audit context here
        try:
            principal = await self._gate.authenticate_call(authorization, context, route.path)
        except errors.Unauthenticated as error:
            log.info("refused %s: %s", route.path, error.reason)
            raise
        try:
            self._gate.authorize(principal, route.scope, route.service)
        except errors.PermissionDenied as error:
            log.info("refused %s: %s", route.path, error.reason)
            self._gate.denied(principal, error, route.path, context)
            raise
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
        note_caller(principal.user_id, span)  # the call's log line (services/runtime/metrics.py)
        return principal, metadata, span

    def _timeout(self, context) -> float:
        """The caller's remaining time, capped: no backend call goes out without a deadline."""
        remaining = context.time_remaining()
        if remaining is None or remaining > self._max_deadline:
            return self._max_deadline
        return remaining

    def _inspect(self, route: Route, principal: Principal, request: bytes, index: int = 0
                 ) -> tuple[bytes, Message | None]:
        """Size limit, control characters and the PII policy: the request to forward, and the
        decoded first message."""
        if len(request) > route.max_request_bytes:
            raise errors.InvalidArgument(
                f"the request is {len(request)} bytes; {route.method} accepts at most {route.max_request_bytes}",
                reason="REQUEST_TOO_LARGE", metadata={"max_bytes": str(route.max_request_bytes)},
            )
        try:
            message = route.request_class.FromString(request)
        except DecodeError:
            raise errors.InvalidArgument(f"the request is not a valid {route.request_class.DESCRIPTOR.full_name}",
                                         reason="REQUEST_MALFORMED") from None
        if index > 0:  # later messages of a client stream are data chunks: decodable is enough
            return request, None
        violations = control_character_violations(message)
        if violations:
            errors.collect(violations)
        if principal.redact_prompt_pii and route.path in PROMPT_METHODS and redact_prompt(message):
            return message.SerializeToString(), message
        return request, message

    async def _inspected(self, route: Route, principal: Principal, request: bytes, index: int = 0
                         ) -> tuple[bytes, Message | None]:
        """`_inspect`, off the event loop for large first messages (prompts of up to 32 MiB
        take tens of milliseconds to decode and walk; other calls must not wait for that)."""
        if index == 0 and INSPECT_INLINE_BYTES < len(request) <= route.max_request_bytes:
            return await asyncio.to_thread(self._inspect, route, principal, request, index)
        return self._inspect(route, principal, request, index)

    async def _check_files(self, route: Route, message: Message | None, metadata, timeout: float) -> None:
        """Every file id in the request names a file of the caller's (see ownership.py)."""
        references = self._file_references.get(route.path)
        if references is None or message is None:
            return
        found = references.collect(message)
        if not found:
            return
        if len(found) > MAX_FILES_PER_REQUEST:
            raise too_many_files(found)
        files = self._backends.get("files")
        if files is None:
            raise errors.Unavailable("this gateway cannot check file ids: no files service is configured",
                                     reason="BACKEND_NOT_CONFIGURED", metadata={"backend": "files"})
        get_file = files.callable(self._routes[GET_FILE])

        async def check(file_id: str, path: str) -> None:
            try:
                await get_file(GetFileRequest(file_id=file_id).SerializeToString(), metadata=metadata, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise not_yours(file_id, path) from None
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise malformed(path) from None
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise files.unavailable() from None
                log.warning("checking a file id at the files service answered %s", exc.code().name)
                raise errors.Unavailable("cannot check file ids right now; try again shortly",
                                         reason="FILE_CHECK_FAILED", retry_after=1.0) from None

        async with asyncio.TaskGroup() as group:
            for file_id, path in found.items():
                group.create_task(check(file_id, path))

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
        if isinstance(exc, ExceptionGroup):  # failed file checks of a task group: the first says what is wrong
            exc = next((e for e in exc.exceptions if isinstance(e, errors.ParleyError)), exc)
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
                request, message = await self._inspected(route, principal, request)
                await self._gate.admit(principal, stream=False)
                timeout = self._timeout(context)
                await self._check_files(route, message, metadata, timeout)
                call = backend.callable(route)(request, metadata=metadata, timeout=timeout)
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
            except Exception as exc:  # noqa: BLE001 - domain errors (and groups of them), the last line of defence
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
                request, message = await self._inspected(route, principal, request)
                admission = await self._gate.admit(principal, stream=True)
                timeout = self._timeout(context)
                await self._check_files(route, message, metadata, timeout)
                call = backend.callable(route)(request, metadata=metadata, timeout=timeout)
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
        """Uploads. The caller's messages are written to the backend one by one as they
        arrive. A refusal (the gateway's, or the backend's while the caller is still
        sending) is delivered only after the caller's stream has been read to its end (up to
        DRAIN_MAX_BYTES): grpc-aio clients that write into a stream the server has already
        finished can replace the server's status with `INTERNAL: Internal error from Core`
        (grpc/grpc#36066), the gateway's own client to the backend included; see _write."""
        backend = self._backends[route.backend]

        async def forward(request_iterator, context) -> bytes:
            span = call = None
            requests = request_iterator.__aiter__()
            try:
                principal, metadata, span = await self._enter(route, context)
                await self._gate.admit(principal, stream=False)
                call = backend.callable(route)(metadata=metadata, timeout=self._timeout(context))
                await call.wait_for_connection()
                index = 0
                async for request in requests:
                    try:
                        request, _ = await self._inspected(route, principal, request, index)
                    except errors.ParleyError:
                        call.cancel()
                        await _drain(requests)
                        raise
                    index += 1
                    if not await _write(call, request):
                        await _drain(requests)  # the backend has answered: read what it says below
                        break
                else:
                    await _done_writing(call)
                try:
                    return await call
                except grpc.aio.AioRpcError as exc:
                    await self._relay(context, backend, exc)
            except grpc.aio.AioRpcError as exc:  # from wait_for_connection: the backend never took the call
                try:
                    await self._relay(context, backend, exc)
                except errors.ParleyError as error:
                    await self._fail(context, route, error, span)
            except (AbortError, asyncio.CancelledError):
                if call is not None:
                    call.cancel()
                raise
            except Exception as exc:  # noqa: BLE001
                if call is not None:
                    call.cancel()
                await self._fail(context, route, exc, span)
            finally:
                if span is not None:
                    span.end()

        return forward


async def _write(call, message: bytes) -> bool:
    """Writes one message to a client-streaming backend call; False once the backend has
    finished the call (its status is then what awaiting the call answers).

    `StreamUnaryCall.write` turns a write that fails because the backend already finished
    into a local `INTERNAL: Internal error from Core`, replacing the backend's real status
    (grpc/grpc#36066). The underlying core call's send reports the failure without touching
    the status, so the gateway uses it where it exists (tests/gateway/test_uploads.py repeats
    refused uploads to prove the status survives)."""
    if call.done():
        return False
    core = getattr(call, "_cython_call", None)
    try:
        if core is not None and hasattr(core, "send_serialized_message"):
            await core.send_serialized_message(message)
        else:  # another grpc: its public write (which may have the race)
            await call.write(message)
    except (cygrpc.InternalError, cygrpc.ExecuteBatchError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
        return False
    return True


async def _done_writing(call) -> None:
    """Half-closes a backend call; one the backend has already finished answers by its status."""
    try:
        await call.done_writing()
    except (cygrpc.InternalError, cygrpc.ExecuteBatchError):
        pass


async def _drain(requests, max_bytes: int | None = None) -> None:
    """Reads and drops the rest of a caller's stream (bounded), so that the refusal that
    follows reaches a caller that has finished writing."""
    limit = DRAIN_MAX_BYTES if max_bytes is None else max_bytes
    drained = 0
    try:
        async for message in requests:
            drained += len(message)
            if drained > limit:
                return
    except Exception:  # noqa: BLE001 - a caller that breaks off while being drained: nothing to keep
        return
