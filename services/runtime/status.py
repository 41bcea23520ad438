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


def to_status_proto(error: errors.ParleyError) -> status_pb2.Status:
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))]
    if error.field_violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in error.field_violations
                    ]
                )
            )
        )
    if error.retry_after is not None:
        seconds = max(error.retry_after, 0.0)
        delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=code_of(error), message=error.message, details=details)


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
