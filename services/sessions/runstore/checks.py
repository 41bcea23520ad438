"""Request checks and errors of the run store, public so that every module of the package
(and its tests) uses the same ones instead of reaching into sessions/domain.py's privates."""

from __future__ import annotations

import math
from typing import Any

from services.runtime import errors
from services.runtime.errors import FieldViolation
from services.runtime.validation import nul_violations


def not_found(kind: str, key: str, value: object) -> errors.NotFound:
    """NOT_FOUND for a missing (or another user's) resource: `kind` like "run_step"."""
    return errors.NotFound(f"{kind.replace('_', ' ')} {value} not found", reason=f"{kind.upper()}_NOT_FOUND",
                           metadata={key: str(value)})


def session_not_found(session_id: object) -> errors.NotFound:
    return not_found("session", "session_id", session_id)


def enum_violations(value: int, enum: type, field: str, *, allow_unspecified: bool) -> list[FieldViolation]:
    """An enum number a request carries must be one the contract names (zero only if allowed)."""
    if value == 0 and allow_unspecified:
        return []
    if value not in enum._value2member_map_:
        names = ", ".join(m.name for m in enum)
        return [FieldViolation(field, f"must be one of {names}" if value else "is required")]
    return []


def body_violations(body: dict[str, Any], prefix: str) -> list[FieldViolation]:
    """NUL characters anywhere in a resource's stored fields (PostgreSQL cannot hold them)."""
    return [v for name, value in body.items() for v in nul_violations(value, f"{prefix}.{name}")]


def number_violations(value: Any, field: str, low: float, high: float) -> list[FieldViolation]:
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not low <= value <= high:
        return [FieldViolation(field, f"must be between {low:g} and {high:g}")]
    return []
