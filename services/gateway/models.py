"""The gateway's domain objects: API keys, callers and their limits."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

# Scope names as carried in internal identities; the contract's Scope enum maps onto them.
SCOPES = ("llm", "sessions", "files", "assistants", "admin")
ADMIN = "admin"
# What a JWT caller holds: everything but admin.
JWT_SCOPES = frozenset({"llm", "sessions", "files", "assistants"})
# The furthest a key's expiry may lie ahead (a key that should never expire has none).
MAX_KEY_LIFETIME = timedelta(days=100 * 365)


class ApiKeyState(enum.IntEnum):
    ACTIVE = 1
    REVOKED = 2
    EXPIRED = 3


@dataclass(frozen=True)
class RateLimits:
    """Zero means no limit (after defaults are applied) or "use the default" (on a key)."""

    requests_per_minute: int = 0
    concurrent_streams: int = 0
    tokens_per_minute: int = 0

    def over(self, defaults: RateLimits) -> RateLimits:
        """These limits, with zero fields taken from `defaults`."""
        return RateLimits(
            self.requests_per_minute or defaults.requests_per_minute,
            self.concurrent_streams or defaults.concurrent_streams,
            self.tokens_per_minute or defaults.tokens_per_minute,
        )


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    user_id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    create_time: datetime
    expire_time: datetime | None = None
    last_used_time: datetime | None = None
    revoke_time: datetime | None = None
    rotate_time: datetime | None = None
    previous_secret_expire_time: datetime | None = None
    rate_limits: RateLimits = field(default_factory=RateLimits)
    redact_prompt_pii: bool = False

    def state(self, now: datetime) -> ApiKeyState:
        if self.revoke_time is not None:
            return ApiKeyState.REVOKED
        if self.expire_time is not None and self.expire_time <= now:
            return ApiKeyState.EXPIRED
        return ApiKeyState.ACTIVE


@dataclass(frozen=True)
class StoredKey:
    """A key as found by its secret's hash, with what authentication needs to decide."""

    key: ApiKey
    secret_hash: bytes
    previous_secret_hash: bytes | None


@dataclass(frozen=True)
class NewApiKey:
    name: str
    scopes: tuple[str, ...]
    expire_time: datetime | None
    rate_limits: RateLimits
    redact_prompt_pii: bool


@dataclass(frozen=True)
class Principal:
    """A verified caller: who, what they may call, how fast."""

    user_id: str
    scopes: frozenset[str]
    kind: str  # "api_key" or "jwt"
    key_id: str = ""
    # The key's own limits (defaults applied); None for JWT callers, who only have per-user limits.
    key_limits: RateLimits | None = None
    redact_prompt_pii: bool = False
    key_uuid: uuid.UUID | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes


@dataclass(frozen=True)
class Page:
    items: list
    next_page_token: str
