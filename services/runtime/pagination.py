"""AIP-158 pagination: validated page sizes and opaque, signed keyset page tokens.

A token names a position in one particular listing (the query key: caller, parent, filter
and order). Tokens are signed with HMAC-SHA256 under the deployment's page-token secret, so a
token this deployment did not issue is refused before anything in it is parsed; a genuine
token used for another listing is refused as a mismatch. Either way the caller gets
INVALID_ARGUMENT, never a wrong page.

The secret is `PARLEY_PAGE_TOKEN_SECRET` (or `PARLEY_PAGE_TOKEN_SECRET_FILE`); replicas that
hand out each other's tokens must share it. Without it, the first process to need one writes
a random secret to `<state dir>/page-token-secret` (mode 0600), which every service of one
`make run` shares.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import hmac
import json
import os
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from services.runtime.config import ConfigError, env_secret, state_dir
from services.runtime.errors import InvalidArgument
from services.runtime.validation import TIMESTAMP_EARLIEST, TIMESTAMP_LATEST

_VERSION = 1
SECRET_ENV = "PARLEY_PAGE_TOKEN_SECRET"
SECRET_FILE_NAME = "page-token-secret"
# Far more than any position needs; refused before decoding.
MAX_TOKEN_CHARS = 2048
MAX_POSITION_ITEMS = 8
MAX_POSITION_TEXT = 512
_MAC_BYTES = 16
_INT64 = 2**63


class Position(enum.Enum):
    """What one item of a page position must be, checked on decoding."""

    COUNT = "count"  # an integer in [0, 2^63): sequence numbers, offsets
    TEXT = "text"
    TIME = "time"    # an ISO 8601 timestamp with a zone → an aware datetime
    UUID = "uuid"    # → uuid.UUID


def page_size(value: int, *, default: int, maximum: int, field: str = "page_size") -> int:
    if value == 0:
        return default
    if value < 0 or value > maximum:
        raise InvalidArgument.for_field(field, f"must be between 1 and {maximum} (0 for the default of {default})",
                                        reason="PAGE_SIZE_OUT_OF_RANGE")
    return value


@functools.cache
def page_token_secret() -> bytes:
    """The deployment's signing secret (see the module docstring). The bootstrap resolves it at
    start-up, so a bad setting fails there rather than in a request."""
    configured = env_secret(SECRET_ENV)
    if configured is not None:
        if len(configured) < 16:
            raise ConfigError(f"{SECRET_ENV} must have at least 16 characters")
        return configured
    return _state_dir_secret(state_dir() / SECRET_FILE_NAME)


def _state_dir_secret(path: Path) -> bytes:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return _read_secret(path)
        except FileNotFoundError:
            pass
        # Written aside and linked into place: of several processes starting at once, one wins
        # and all read the same secret; nobody ever reads a half-written file.
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
        return _read_secret(path)
    except OSError as exc:
        raise ConfigError(f"cannot keep the page token secret in {path} ({exc.strerror}); "
                          f"set {SECRET_ENV} instead") from None


def _read_secret(path: Path) -> bytes:
    value = path.read_bytes().strip()
    if len(value) < 16:
        raise ConfigError(f"{path} holds no usable page token secret; delete it or set {SECRET_ENV}")
    return value


def _fingerprint(query_key: str) -> str:
    return hashlib.sha256(query_key.encode()).hexdigest()[:16]


def _mac(payload: bytes) -> bytes:
    return hmac.new(page_token_secret(), payload, hashlib.sha256).digest()[:_MAC_BYTES]


def encode_token(query_key: str, position: list[Any]) -> str:
    payload = json.dumps([_VERSION, _fingerprint(query_key), position], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(_mac(payload) + payload).decode().rstrip("=")


def decode_token(token: str, query_key: str, *, kinds: Sequence[Position] | None = None,
                 field: str = "page_token") -> list[Any] | None:
    """The position encoded in `token`, or None for the first page.

    With `kinds`, the position must have exactly those items, converted as `Position` says.
    Without, it must be a non-empty list of at most 8 strings and 64-bit integers."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise _not_ours(field)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise _not_ours(field) from None
    mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
    if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, _mac(payload)):
        raise _not_ours(field)
    try:
        version, fingerprint, position = json.loads(payload)
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
        raise _not_ours(field) from None
    if version != _VERSION or not isinstance(position, list):
        raise _not_ours(field)
    if fingerprint != _fingerprint(query_key):
        raise InvalidArgument.for_field(
            field, "belongs to a different listing; repeat the request with the same filter and order",
            reason="PAGE_TOKEN_MISMATCH",
        )
    if not position or len(position) > MAX_POSITION_ITEMS or not all(_plain(item) for item in position):
        raise _not_ours(field)
    if kinds is None:
        return position
    if len(position) != len(kinds):
        raise _not_ours(field)
    try:
        return [_convert(item, kind) for item, kind in zip(position, kinds)]
    except (ValueError, TypeError, OverflowError):
        raise _not_ours(field) from None


def _plain(item: Any) -> bool:
    if isinstance(item, bool):
        return False
    if isinstance(item, int):
        return -_INT64 <= item < _INT64
    return isinstance(item, str) and len(item) <= MAX_POSITION_TEXT


def _convert(item: Any, kind: Position) -> Any:
    if kind is Position.COUNT:
        if not isinstance(item, int) or not 0 <= item < _INT64:
            raise ValueError
        return item
    if not isinstance(item, str):
        raise TypeError
    if kind is Position.TEXT:
        return item
    if kind is Position.UUID:
        return uuid.UUID(item)
    moment = datetime.fromisoformat(item)
    if moment.tzinfo is None or not TIMESTAMP_EARLIEST <= moment < TIMESTAMP_LATEST:
        raise ValueError
    return moment


def _not_ours(field: str) -> InvalidArgument:
    return InvalidArgument.for_field(field, "is not a page token issued by this service", reason="PAGE_TOKEN_INVALID")


def encode_time_and_id(query_key: str, create_time: datetime, item_id: uuid.UUID) -> str:
    """A token after the item at (create_time, id): the keyset of every newest-first list."""
    return encode_token(query_key, [create_time.isoformat(), str(item_id)])


def decode_time_and_id(token: str, query_key: str, *, field: str = "page_token") -> tuple[datetime, uuid.UUID] | None:
    position = decode_token(token, query_key, kinds=(Position.TIME, Position.UUID), field=field)
    if position is None:
        return None
    return position[0], position[1]
