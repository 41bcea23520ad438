"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP
status OpenAI uses, mapped from the gateway's google.rpc.Status (ErrorInfo reason → code,
the first BadRequest field → param, RetryInfo → Retry-After)."""

from __future__ import annotations

import math

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class ApiError(Exception):
    """An OpenAI error response. `type` is OpenAI's error type; `code` a stable reason."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(status, "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


_TYPE_BY_STATUS = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                   404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
                   422: "invalid_request_error", 429: "rate_limit_error", 499: "invalid_request_error"}

# gRPC code → (HTTP status, OpenAI error type).
_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "invalid_request_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    grpc.StatusCode.ABORTED: (409, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "invalid_request_error"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "server_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}
# Reasons that mean "conflicts with the current state" rather than "bad request".
_CONFLICT_REASONS = {"SESSION_BUSY"}
# Parley field names as OpenAI's clients know them.
_PARAMS = {"session_id": "thread_id", "session": "thread", "additional_messages": "additional_messages",
           "vector_store_ids": "vector_store_ids", "page_size": "limit", "page_token": "after",
           "inputs": "input", "content": "content"}


def _param(field: str) -> str:
    head, sep, rest = field.partition(".")
    base, bracket, index = head.partition("[")
    return _PARAMS.get(base, base) + bracket + index + sep + rest


def from_grpc(error: grpc.aio.AioRpcError) -> ApiError:
    code = error.code()
    status, kind = _BY_CODE.get(code, (500, "server_error"))
    message = error.details() or code.name.lower()
    reason, param, headers = None, None, {}
    try:
        details = rpc_status.from_call(error)
    except Exception:  # noqa: BLE001 - a malformed status still maps by its code
        details = None
    for detail in details.details if details else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason or None
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            info = error_details_pb2.BadRequest()
            detail.Unpack(info)
            if info.field_violations and param is None:
                param = _param(info.field_violations[0].field)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            headers["retry-after"] = str(max(1, math.ceil(seconds)))
            headers["retry-after-ms"] = str(max(1, round(seconds * 1000)))
    if code == grpc.StatusCode.FAILED_PRECONDITION and reason in _CONFLICT_REASONS:
        status = 409
    if code == grpc.StatusCode.UNAUTHENTICATED:
        reason = reason or "invalid_api_key"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if reason == "BUDGET_EXCEEDED":
            kind = "insufficient_quota"
        elif reason in ("REQUEST_TOO_LARGE", "MESSAGE_TOO_LARGE"):
            status, kind = 413, "invalid_request_error"
    if status >= 500 and code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        message = "The server had an error while processing your request."  # never internals
    return ApiError(status, message, type=kind, param=param, code=reason.lower() if reason else None,
                    headers=headers)
