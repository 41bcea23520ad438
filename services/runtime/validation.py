"""Checks on request fields shared by every service; each failure names its field."""

from __future__ import annotations

import math
import os
import re
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from services.runtime.errors import FieldViolation, InvalidArgument

METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512

# C0/C1 control characters other than tab, newline and carriage return.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): new rows land at the end of their indexes."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


def parse_id(value: str, field: str) -> uuid.UUID:
    if not value:
        raise InvalidArgument.for_field(field, "is required", reason="FIELD_REQUIRED")
    try:
        if len(value) != 36:
            raise ValueError
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument.for_field(field, "is not a valid id", reason="INVALID_ID") from None


def metadata_violations(metadata: Mapping[str, str], field: str = "metadata") -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if len(metadata) > METADATA_MAX_PAIRS:
        found.append(FieldViolation(field, f"has {len(metadata)} pairs; at most {METADATA_MAX_PAIRS} are allowed"))
    for key, value in metadata.items():
        if not key or len(key) > METADATA_MAX_KEY:
            found.append(FieldViolation(f"{field}[{key[:64]!r}]", f"keys must have 1 to {METADATA_MAX_KEY} characters"))
        elif _CONTROL_OR_NEWLINE.search(key):
            found.append(FieldViolation(f"{field}[{key!r}]", "keys must not contain control characters"))
        if len(value) > METADATA_MAX_VALUE:
            found.append(FieldViolation(f"{field}[{key[:64]!r}]", f"values must have at most {METADATA_MAX_VALUE} characters"))
        elif _CONTROL.search(value):
            found.append(FieldViolation(f"{field}[{key[:64]!r}]", "values must not contain control characters"))
    return found


def text_violations(value: str, field: str, *, max_chars: int, single_line: bool = False) -> list[FieldViolation]:
    if len(value) > max_chars:
        return [FieldViolation(field, f"must have at most {max_chars} characters")]
    pattern = _CONTROL_OR_NEWLINE if single_line else _CONTROL
    if pattern.search(value):
        return [FieldViolation(field, "must not contain control characters")]
    return []


# --- Timestamps and durations ----------------------------------------------------------------
#
# What protobuf allows is wider than what the services can store: asyncpg writes
# datetime.max/min as PostgreSQL's ±infinity, and `now + duration` overflows Python's datetime
# long before protobuf's ten-thousand-year limit. So every Timestamp a caller sends must lie in
# [TIMESTAMP_EARLIEST, TIMESTAMP_LATEST) unless a field narrows it further, and every Duration
# is bounded by its field's maximum.

TIMESTAMP_EARLIEST = datetime(1900, 1, 1, tzinfo=timezone.utc)
TIMESTAMP_LATEST = datetime(9999, 1, 1, tzinfo=timezone.utc)
# protobuf's own limits (google/protobuf/timestamp.proto, duration.proto).
_PROTO_TS_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
_PROTO_TS_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
_PROTO_DURATION_MAX_SECONDS = 315_576_000_000
_NANOS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
DURATION_MAXIMUM = timedelta(days=100 * 366)


def timestamp_problem(seconds: int, nanos: int, *, earliest: datetime = TIMESTAMP_EARLIEST,
                      latest: datetime = TIMESTAMP_LATEST) -> str | None:
    """Why a Timestamp's (seconds, nanos) is not acceptable, or None."""
    if not 0 <= nanos < _NANOS:
        return "nanos must be between 0 and 999,999,999"
    if not _PROTO_TS_MIN_SECONDS <= seconds <= _PROTO_TS_MAX_SECONDS:
        return "is outside the range of a timestamp"
    moment = _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)
    if not earliest <= moment < latest:
        return f"must be between {earliest.isoformat()} and {latest.isoformat()}"
    return None


def timestamp_to_datetime(ts, field: str, *, earliest: datetime = TIMESTAMP_EARLIEST,
                          latest: datetime = TIMESTAMP_LATEST) -> datetime:
    """An aware UTC datetime from a google.protobuf.Timestamp, or InvalidArgument naming `field`
    when it is malformed or outside [earliest, latest)."""
    problem = timestamp_problem(ts.seconds, ts.nanos, earliest=earliest, latest=latest)
    if problem:
        raise InvalidArgument.for_field(field, problem, reason="TIMESTAMP_OUT_OF_RANGE")
    return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def duration_problem(seconds: int, nanos: int, *, minimum: timedelta | None = timedelta(0),
                     maximum: timedelta = DURATION_MAXIMUM) -> str | None:
    """Why a Duration's (seconds, nanos) is not acceptable, or None. `minimum=None` checks only
    protobuf's own rules."""
    if not -_NANOS < nanos < _NANOS:
        return "nanos must be between -999,999,999 and 999,999,999"
    if (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        return "seconds and nanos must have the same sign"
    if abs(seconds) > _PROTO_DURATION_MAX_SECONDS:
        return "is outside the range of a duration"
    if minimum is None:
        return None
    value = timedelta(seconds=seconds, microseconds=nanos // 1000 if nanos >= 0 else -((-nanos) // 1000))
    if value < minimum or value > maximum:
        return f"must be between {_seconds_text(minimum)} and {_seconds_text(maximum)}"
    return None


def duration_to_timedelta(d, field: str, *, minimum: timedelta = timedelta(0),
                          maximum: timedelta = DURATION_MAXIMUM) -> timedelta:
    """A timedelta from a google.protobuf.Duration, or InvalidArgument naming `field` when it is
    malformed or outside [minimum, maximum] (by default 0 to 100 years)."""
    problem = duration_problem(d.seconds, d.nanos, minimum=minimum, maximum=maximum)
    if problem:
        raise InvalidArgument.for_field(field, problem, reason="DURATION_OUT_OF_RANGE")
    return timedelta(seconds=d.seconds, microseconds=d.nanos // 1000 if d.nanos >= 0 else -((-d.nanos) // 1000))


def _seconds_text(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"


# --- Numbers -----------------------------------------------------------------------------------

# The smallest normal double: below it (apart from 0) values are subnormal, which PostgreSQL's
# float8 arithmetic reports as underflow.
SMALLEST_NORMAL_DOUBLE = sys.float_info.min


def float_problem(value: float) -> str | None:
    """Why a float is not acceptable anywhere in a request (NaN, ±Infinity, subnormal), or None."""
    if value != value:
        return "must be a number, not NaN"
    if value in (math.inf, -math.inf):
        return "must be finite"
    if value != 0.0 and -SMALLEST_NORMAL_DOUBLE < value < SMALLEST_NORMAL_DOUBLE:
        return "is too close to zero (subnormal); use 0 or a larger magnitude"
    return None


# --- Text --------------------------------------------------------------------------------------


def has_control_characters(value: str, *, allow_newlines: bool = True) -> bool:
    """C0/C1 control characters (NUL included); tab, newline and carriage return count only
    when `allow_newlines` is false."""
    return bool((_CONTROL if allow_newlines else _CONTROL_OR_NEWLINE).search(value))


def nul_violations(value: Any, path: str) -> list[FieldViolation]:
    """The first string (key or value) holding a NUL character in a JSON-like value, which
    neither PostgreSQL's text nor its jsonb can store."""
    if isinstance(value, str):
        return [FieldViolation(path, "must not contain NUL characters")] if "\x00" in value else []
    if isinstance(value, dict):
        for key, item in value.items():
            found = nul_violations(key, path) or nul_violations(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = nul_violations(item, f"{path}[{i}]")
            if found:
                return found
    return []


# --- Update masks (AIP-134) --------------------------------------------------------------------


def update_mask_paths(paths: Sequence[str], *, updatable: Sequence[str], populated: Sequence[str] | None = None,
                      field: str = "update_mask") -> tuple[list[str], list[FieldViolation]]:
    """The paths an update writes, in mask order without repeats, and a violation per unknown
    path. An empty mask means every updatable field in `populated` (AIP-134); with
    `populated=None` a mask is required. Raises EMPTY_UPDATE when nothing would be written."""
    if not paths:
        paths = [p for p in updatable if p in populated] if populated is not None else []
        if not paths:
            raise InvalidArgument.for_field(field, f"names no field to update; updatable: {', '.join(updatable)}",
                                            reason="EMPTY_UPDATE")
    violations = [FieldViolation(field, f"unknown path {p[:100]!r}; updatable: {', '.join(updatable)}")
                  for p in dict.fromkeys(paths) if p not in updatable]
    return [p for p in dict.fromkeys(paths) if p in updatable], violations
