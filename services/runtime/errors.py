"""Domain errors: what went wrong, in terms a caller can act on.

Domain code raises these and never imports grpc; `services.runtime.status` maps each one to
a `google.rpc.Status` (code, message, ErrorInfo, BadRequest, RetryInfo) in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, as google.rpc.BadRequest.FieldViolation."""

    field: str
    description: str


@dataclass
class ParleyError(Exception):
    """Base of every error a caller may see. `reason` is a stable UPPER_SNAKE identifier."""

    message: str
    reason: str = "ERROR"
    field_violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    # Seconds the caller should wait before retrying (google.rpc.RetryInfo), if known.
    retry_after: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class InvalidArgument(ParleyError):
    """The request is malformed; retrying it unchanged will fail again."""

    @classmethod
    def for_field(cls, field_path: str, description: str, reason: str = "INVALID_FIELD") -> InvalidArgument:
        return cls(
            message=f"{field_path}: {description}",
            reason=reason,
            field_violations=[FieldViolation(field_path, description)],
        )


class NotFound(ParleyError):
    """The resource does not exist, or belongs to someone else: callers cannot tell which."""


class AlreadyExists(ParleyError):
    pass


class Unauthenticated(ParleyError):
    pass


class PermissionDenied(ParleyError):
    pass


class ResourceExhausted(ParleyError):
    """A limit, quota or budget was hit; `retry_after` says when trying again makes sense."""


class FailedPrecondition(ParleyError):
    """The request is valid but the resource is not in a state that allows it."""


class Aborted(ParleyError):
    pass


class Unavailable(ParleyError):
    pass


class DeadlineExceeded(ParleyError):
    pass


class Unimplemented(ParleyError):
    """The method is part of the contract but this server does not provide it (yet)."""


class DataLoss(ParleyError):
    """Data arrived corrupted (e.g. a checksum mismatch); nothing was kept."""


class Internal(ParleyError):
    """A bug or broken invariant on our side. The message must not leak internals."""


def collect(violations: list[FieldViolation]) -> None:
    """Raise one InvalidArgument listing every violation, if there are any."""
    if violations:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise InvalidArgument(message=summary, reason="INVALID_FIELDS" if len(violations) > 1 else "INVALID_FIELD",
                              field_violations=list(violations))
