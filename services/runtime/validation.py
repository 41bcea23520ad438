"""Checks on request fields shared by every service; each failure names its field."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Mapping

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
