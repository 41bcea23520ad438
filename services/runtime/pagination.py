"""AIP-158 pagination: validated page sizes and opaque keyset page tokens.

A token names a position in one particular listing (the query key: caller, parent, filter
and order). A token from another listing, or one that was tampered with, is rejected with
INVALID_ARGUMENT instead of silently returning a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from datetime import datetime
from typing import Any

from services.runtime.errors import InvalidArgument

_VERSION = 1


def page_size(value: int, *, default: int, maximum: int, field: str = "page_size") -> int:
    if value == 0:
        return default
    if value < 0 or value > maximum:
        raise InvalidArgument.for_field(field, f"must be between 1 and {maximum} (0 for the default of {default})",
                                        reason="PAGE_SIZE_OUT_OF_RANGE")
    return value


def _fingerprint(query_key: str) -> str:
    return hashlib.sha256(query_key.encode()).hexdigest()[:16]


def encode_token(query_key: str, position: list[Any]) -> str:
    payload = json.dumps([_VERSION, _fingerprint(query_key), position], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_token(token: str, query_key: str, *, field: str = "page_token") -> list[Any] | None:
    """The position encoded in `token`, or None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, fingerprint, position = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise _not_ours(field) from None
    if version != _VERSION or not isinstance(position, list):
        raise _not_ours(field)
    if fingerprint != _fingerprint(query_key):
        raise InvalidArgument.for_field(
            field, "belongs to a different listing; repeat the request with the same filter and order",
            reason="PAGE_TOKEN_MISMATCH",
        )
    return position


def _not_ours(field: str) -> InvalidArgument:
    return InvalidArgument.for_field(field, "is not a page token issued by this service", reason="PAGE_TOKEN_INVALID")


def encode_time_and_id(query_key: str, create_time: datetime, item_id: uuid.UUID) -> str:
    """A token after the item at (create_time, id): the keyset of every newest-first list."""
    return encode_token(query_key, [create_time.isoformat(), str(item_id)])


def decode_time_and_id(token: str, query_key: str, *, field: str = "page_token") -> tuple[datetime, uuid.UUID] | None:
    position = decode_token(token, query_key, field=field)
    if position is None:
        return None
    try:
        return datetime.fromisoformat(position[0]), uuid.UUID(position[1])
    except (ValueError, TypeError, IndexError, AttributeError):
        raise _not_ours(field) from None
