"""The rich status of a failed call, in a form callers can act on."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # From google.rpc.RetryInfo: seconds to wait before trying again.
    retry_after: float | None = None
    # From google.rpc.BadRequest: field path → description.
    field_violations: dict[str, str] = field(default_factory=dict)


def error_details(error: grpc.aio.AioRpcError) -> ErrorDetails:
    status = rpc_status.from_call(error)
    result = ErrorDetails(code=error.code(), message=error.details() or "")
    if status is None:
        return result
    reason, metadata, retry, fields = "", {}, None, {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            info = error_details_pb2.BadRequest()
            detail.Unpack(info)
            fields = {v.field: v.description for v in info.field_violations}
    return ErrorDetails(error.code(), result.message, reason, metadata, retry, fields)
