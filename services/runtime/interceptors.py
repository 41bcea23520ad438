"""The server interceptors every Parley service runs: error mapping and internal identity.

The error mapping also starts each call's audit context (request id, peer) and records every
domain PermissionDenied of every service in the service's audit log, once, here.

Both wrap the servicer's behaviour; streaming handlers are async generators (they `yield`,
never `context.write`), so one wrapper shape per cardinality is enough.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc.aio import AbortError

from services.runtime import audit, errors
from services.runtime.identity import METADATA_KEY, Identity, IdentityVerifier
from services.runtime.metrics import note_caller
from services.runtime.request_check import check_request, tolerant_deserializer
from services.runtime.status import to_grpc_status

log = logging.getLogger("parley.rpc")

# Infrastructure services that must answer without an identity and must not be wrapped
# (the health servicer's Watch writes with `context.write`).
UNGUARDED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

_current_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("parley_identity", default=None)
_current_token: contextvars.ContextVar[str] = contextvars.ContextVar("parley_identity_token", default="")


def current_identity() -> Identity:
    """The verified caller of the RPC being served."""
    identity = _current_identity.get()
    if identity is None:
        raise errors.Unauthenticated("no verified identity for this call", reason="IDENTITY_MISSING")
    return identity


def forwarded_identity() -> tuple[tuple[str, str], ...]:
    """The verified caller's own identity, as metadata for a call this service makes to
    another internal service on the caller's behalf (the engine asking the sandbox to delete
    a user's sandboxes for the administrator who asked it): nothing is minted or widened."""
    token = _current_token.get()
    if not token:
        raise errors.Unauthenticated("no verified identity for this call", reason="IDENTITY_MISSING")
    return ((METADATA_KEY, token),)


def is_unguarded(method: str) -> bool:
    return method.startswith(UNGUARDED_PREFIXES)


Wrapper = Callable[[Callable], Callable]


def wrap_handler(handler: grpc.RpcMethodHandler, unary: Wrapper, streaming: Wrapper) -> grpc.RpcMethodHandler:
    """A copy of `handler` whose behaviour is wrapped by `unary` or `streaming`, by response kind."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            streaming(handler.unary_stream), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        streaming(handler.stream_stream), handler.request_deserializer, handler.response_serializer
    )


async def _abort(context: grpc.aio.ServicerContext, error: errors.ParleyError) -> None:
    status = to_grpc_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _abort_unexpected(context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
    if isinstance(exc, NotImplementedError):  # the generated base servicer's default
        await _abort(context, errors.Unimplemented(f"{method} is not implemented by this server", reason="UNIMPLEMENTED"))
    # The stack trace goes to the log with the method; the caller gets no internals.
    log.error("unhandled error in %s", method, exc_info=exc)
    await _abort(context, errors.Internal("internal error; the server log has the details", reason="INTERNAL"))


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns domain errors into rich statuses and anything unexpected into a bare INTERNAL,
    and audits permission denials (with an audit log: `audit_log`).

    Methods under `skip_prefixes` map their own errors (the gateway's forwarding handlers,
    which cannot afford a wrapper per streamed message)."""

    def __init__(self, skip_prefixes: tuple[str, ...] = (), audit_log: audit.AuditLog | None = None) -> None:
        self._skip = (*UNGUARDED_PREFIXES, *skip_prefixes)
        self._audit = audit_log if audit_log is not None else audit.AuditLog.discarding()

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(self._skip):
            return handler
        metadata = handler_call_details.invocation_metadata
        return wrap_handler(handler, lambda b: self._unary(method, metadata, b),
                            lambda b: self._streaming(method, metadata, b))

    def _denied(self, method: str, error: errors.PermissionDenied) -> None:
        self._audit.record(audit.Kind.PERMISSION_DENIED, outcome=audit.Outcome.DENIED, resource=method,
                           source=audit.call_source(),
                           details={"reason": error.reason, **{k: v for k, v in error.metadata.items() if k == "scope"}})

    def _unary(self, method: str, metadata, behavior: Callable[..., Awaitable]):
        async def handle(request, context):
            audit.begin_call(metadata, context)
            try:
                return await behavior(request, context)
            except errors.ParleyError as error:
                if isinstance(error, errors.PermissionDenied):
                    self._denied(method, error)
                await _drain_requests(request)
                await _abort(context, error)
            except (AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - last line of defence
                await _abort_unexpected(context, method, exc)

        return handle

    def _streaming(self, method: str, metadata, behavior: Callable):
        async def handle(request, context):
            audit.begin_call(metadata, context)
            try:
                async for response in behavior(request, context):
                    yield response
            except errors.ParleyError as error:
                if isinstance(error, errors.PermissionDenied):
                    self._denied(method, error)
                await _abort(context, error)
            except (AbortError, asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001
                await _abort_unexpected(context, method, exc)

        return handle


# How much of a refused client stream is read before the refusal is sent (see _drain_requests).
DRAIN_MAX_BYTES = 16 * 1024 * 1024
DRAIN_MAX_SECONDS = 5.0


async def _drain_requests(requests) -> None:
    """Reads and drops the rest of a refused client stream (bounded in bytes and time) before
    the refusal is sent. A grpc-aio client still writing when the server finishes the call
    gets a local `INTERNAL: Internal error from Core` instead of the server's status
    (grpc/grpc#36066); once it has finished writing, it reads the real one."""
    if not hasattr(requests, "__anext__"):  # a unary request: nothing to drain
        return
    drained = 0
    try:
        async with asyncio.timeout(DRAIN_MAX_SECONDS):
            async for message in requests:
                drained += message.ByteSize() if hasattr(message, "ByteSize") else 0
                if drained > DRAIN_MAX_BYTES:
                    return
    except Exception:  # noqa: BLE001 - a stream that breaks off or times out while drained: nothing to keep
        return


class IdentityInterceptor(grpc.aio.ServerInterceptor):
    """Refuses any call that does not carry a valid identity minted by the gateway."""

    def __init__(self, verifier: IdentityVerifier) -> None:
        self._verifier = verifier

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or is_unguarded(method):
            return handler
        token = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == METADATA_KEY:
                token = value
                break
        try:
            identity: Identity | None = self._verifier.verify(token)
            failure = None
        except errors.Unauthenticated as error:
            identity, failure = None, error

        def unary(behavior):
            async def handle(request, context):
                if failure is not None:
                    await _abort(context, failure)
                note_caller(identity.user_id)  # the call's log line (services/runtime/metrics.py)
                audit.note_actor(identity.user_id)
                reset = _current_identity.set(identity)
                token_reset = _current_token.set(token)
                try:
                    return await behavior(request, context)
                finally:
                    _current_token.reset(token_reset)
                    _current_identity.reset(reset)

            return handle

        def streaming(behavior):
            async def handle(request, context):
                if failure is not None:
                    await _abort(context, failure)
                note_caller(identity.user_id)
                audit.note_actor(identity.user_id)
                _current_identity.set(identity)
                _current_token.set(token)
                async for response in behavior(request, context):
                    yield response

            return handle

        return wrap_handler(handler, unary, streaming)


class RequestCheckInterceptor(grpc.aio.ServerInterceptor):
    """Refuses, with INVALID_ARGUMENT naming the field, request values no service can use
    (`services.runtime.request_check`): each request of a unary call, each message of a
    client stream as it is read. Innermost, so calls are authenticated first."""

    def __init__(self, skip_prefixes: tuple[str, ...] = ()) -> None:
        self._skip = (*UNGUARDED_PREFIXES, *skip_prefixes)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._skip):
            return handler
        # Undecodable bytes reach the check as a MalformedRequest (INVALID_ARGUMENT), not as
        # grpc's UNKNOWN naming DecodeError; the interceptors outside copy this deserializer.
        deserializer = tolerant_deserializer(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _checked_unary(handler.unary_unary), deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _checked_unary_stream(handler.unary_stream), deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _checked_stream_unary(handler.stream_unary), deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            _checked_stream_stream(handler.stream_stream), deserializer, handler.response_serializer)


def _checked_unary(behavior):
    async def handle(request, context):
        check_request(request)
        return await behavior(request, context)

    return handle


def _checked_unary_stream(behavior):
    # Returns the servicer's own generator instead of re-yielding from one of ours: the token
    # stream pays nothing per message. This is safe because the ErrorInterceptor (always
    # outside this one, for every method this one wraps) calls it inside its `try`, so a
    # refusal raised right here becomes the INVALID_ARGUMENT status.
    def handle(request, context):
        check_request(request)
        return behavior(request, context)

    return handle


async def _checked_requests(requests):
    async for request in requests:
        check_request(request)
        yield request


def _checked_stream_unary(behavior):
    async def handle(request_iterator, context):
        return await behavior(_checked_requests(request_iterator), context)

    return handle


def _checked_stream_stream(behavior):
    async def handle(request_iterator, context):
        async for response in behavior(_checked_requests(request_iterator), context):
            yield response

    return handle
