"""The one mapping from domain errors to gRPC statuses (AIP-193).

Every error leaves as a `google.rpc.Status` carrying an `ErrorInfo` (reason, domain,
metadata), a `BadRequest` when fields were at fault and a `RetryInfo` when waiting helps.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.runtime import errors

ERROR_DOMAIN = "parley.dev"

_CODES: dict[type[errors.ParleyError], int] = {
    errors.InvalidArgument: code_pb2.INVALID_ARGUMENT,
    errors.NotFound: code_pb2.NOT_FOUND,
    errors.AlreadyExists: code_pb2.ALREADY_EXISTS,
    errors.Unauthenticated: code_pb2.UNAUTHENTICATED,
    errors.PermissionDenied: code_pb2.PERMISSION_DENIED,
    errors.ResourceExhausted: code_pb2.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: code_pb2.FAILED_PRECONDITION,
    errors.Aborted: code_pb2.ABORTED,
    errors.Unavailable: code_pb2.UNAVAILABLE,
    errors.DeadlineExceeded: code_pb2.DEADLINE_EXCEEDED,
    errors.Unimplemented: code_pb2.UNIMPLEMENTED,
    errors.DataLoss: code_pb2.DATA_LOSS,
    errors.Internal: code_pb2.INTERNAL,
}


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def code_of(error: errors.ParleyError) -> int:
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return code_pb2.UNKNOWN


# gRPC carries a status in trailing metadata, which peers cap at 16 KiB in all (grpc-message
# percent-encoded, grpc-status-details-bin base64-encoded, and the status's message once more
# inside the details). Errors often quote what the caller sent, so every quoted piece is cut to
# size here, once, and the whole status kept under STATUS_MAX_BYTES.
MESSAGE_MAX_BYTES = 1024
FIELD_MAX_CHARS = 200
DESCRIPTION_MAX_CHARS = 500
METADATA_MAX_ENTRIES = 16
METADATA_KEY_MAX_CHARS = 64
METADATA_VALUE_MAX_CHARS = 256
METADATA_MAX_BYTES = 2048
VIOLATIONS_MAX = 20
STATUS_MAX_BYTES = 6 * 1024
_ELLIPSIS = "…"


def clip(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` characters, marked when cut."""
    return text if len(text) <= max_chars else text[: max_chars - 1] + _ELLIPSIS


def _clip_bytes(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max_bytes - len(_ELLIPSIS.encode())].decode("utf-8", "ignore") + _ELLIPSIS


def _violations(error: errors.ParleyError, limit: int) -> list[error_details_pb2.BadRequest.FieldViolation]:
    shown = error.field_violations[:limit]
    found = [
        error_details_pb2.BadRequest.FieldViolation(field=clip(v.field, FIELD_MAX_CHARS),
                                                    description=clip(v.description, DESCRIPTION_MAX_CHARS))
        for v in shown
    ]
    hidden = len(error.field_violations) - len(shown)
    if hidden:
        found.append(error_details_pb2.BadRequest.FieldViolation(
            field="", description=f"and {hidden} more violation{'s' if hidden > 1 else ''} not listed"))
    return found


def to_status_proto(error: errors.ParleyError) -> status_pb2.Status:
    metadata: dict[str, str] = {}
    budget = METADATA_MAX_BYTES
    for key, value in list(error.metadata.items())[:METADATA_MAX_ENTRIES]:
        key, value = clip(str(key), METADATA_KEY_MAX_CHARS), clip(str(value), METADATA_VALUE_MAX_CHARS)
        budget -= len(key.encode()) + len(value.encode())
        if budget < 0:
            break
        metadata[key] = value
    head = [_pack(error_details_pb2.ErrorInfo(reason=clip(error.reason, 63), domain=ERROR_DOMAIN, metadata=metadata))]
    tail = []
    if error.retry_after is not None:
        seconds = max(error.retry_after, 0.0) if error.retry_after == error.retry_after else 0.0
        seconds = min(seconds, 315_576_000_000.0)
        delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
        tail.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    message = _clip_bytes(error.message, MESSAGE_MAX_BYTES)
    limit = VIOLATIONS_MAX
    while True:
        details = list(head)
        if error.field_violations:
            details.append(_pack(error_details_pb2.BadRequest(field_violations=_violations(error, limit))))
        status = status_pb2.Status(code=code_of(error), message=message, details=[*details, *tail])
        if status.ByteSize() <= STATUS_MAX_BYTES or limit == 0:
            return status
        limit //= 2


def to_grpc_status(error: errors.ParleyError) -> grpc.Status:
    return rpc_status.to_status(to_status_proto(error))


def from_rpc_error(error: grpc.aio.AioRpcError | grpc.RpcError) -> status_pb2.Status | None:
    """The rich status carried by a failed call, if the server sent one."""
    return rpc_status.from_call(error)  # type: ignore[arg-type]


def error_details(status: status_pb2.Status) -> dict[str, object]:
    """Unpacks the standard detail messages of a rich status, keyed by their short type name."""
    found: dict[str, object] = {}
    for detail in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                found[cls.DESCRIPTOR.name] = message
    return found


_CLASSES = {code: cls for cls, code in _CODES.items()}


def domain_error(error: grpc.aio.AioRpcError) -> errors.ParleyError:
    """Another service's failure as the domain error it reported (code, message, ErrorInfo
    reason and metadata), for a service that relays it from behind its own servicer."""
    status = from_rpc_error(error)
    details = error_details(status) if status is not None else {}
    info = details.get("ErrorInfo")
    cls = _CLASSES.get(error.code().value[0], errors.Internal)
    return cls(error.details() or error.code().name, reason=info.reason if info else error.code().name,
               metadata=dict(info.metadata) if info else {})
