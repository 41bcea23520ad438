"""API keys: issuing, listing, revoking and rotating them, and authenticating with them.

A secret is `pk_live_` followed by 43 characters of URL-safe base64 (256 random bits). Only
its SHA-256 is stored. Authentication looks the hash up (cached for a few seconds, so a
busy key costs no database round trip per call) and compares in constant time; the
last-used time is written in batches, at most once a minute per key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone


from services.gateway.models import (
    ADMIN,
    MAX_KEY_LIFETIME,
    SCOPES,
    ApiKey,
    ApiKeyState,
    NewApiKey,
    Page,
    Principal,
    RateLimits,
    StoredKey,
)
from services.gateway.repository import ApiKeyRepository
from services.runtime import errors
from services.runtime.audit import AuditLog, Kind
from services.runtime.db import UNAVAILABLE_ERRORS, Database
from services.runtime.errors import FieldViolation
from services.runtime.pagination import decode_time_and_id, encode_time_and_id, page_size
from services.runtime.user_data import Removed, delete_rows, deletion
from services.runtime.validation import parse_id, text_violations

log = logging.getLogger("parley.gateway.keys")

SECRET_PREFIX = "pk_live_"
_SECRET = re.compile(r"^pk_live_[A-Za-z0-9_-]{43}$")
DISPLAY_PREFIX_CHARS = 12
NAME_MAX_CHARS = 128
DEFAULT_GRACE = timedelta(hours=24)
MAX_GRACE = timedelta(days=7)
LAST_USED_RESOLUTION = 60.0
# How long a looked-up key may still be trusted while the database cannot be reached.
STALE_KEY_SECONDS = 300.0

def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def looks_like_api_key(credential: str) -> bool:
    return credential.startswith("pk_")


@dataclass(frozen=True)
class KeyPolicy:
    """Deployment settings that shape keys."""

    default_limits: RateLimits
    cache_seconds: float = 10.0
    last_used_flush_seconds: float = 15.0
    # A key's last-used time is written at most this often.
    last_used_resolution_seconds: float = LAST_USED_RESOLUTION


def _unauthenticated(message: str, reason: str, key: ApiKey | None = None) -> errors.Unauthenticated:
    error = errors.Unauthenticated(message, reason=reason)
    # A real key that no longer works (revoked, expired, rotated away): its id and owner go
    # to the audit event of the failure, never to the caller.
    error.api_key = key
    return error


def failed_key(error: errors.Unauthenticated) -> ApiKey | None:
    """The real key an authentication failure was about, if it was one."""
    return getattr(error, "api_key", None)


def _not_found(key_id: object) -> errors.NotFound:
    return errors.NotFound(f"API key {key_id} not found", reason="API_KEY_NOT_FOUND",
                           metadata={"api_key_id": str(key_id)})


def _key_details(caller: Principal, key: ApiKey) -> dict[str, object]:
    """What a key event says about the key: its scopes, and how the caller acted (never its
    name, which is the owner's text, nor any part of its secret)."""
    return {"scopes": ",".join(key.scopes), "caller": caller.kind}


class ApiKeys:
    def __init__(self, db: Database, policy: KeyPolicy, repo: ApiKeyRepository | None = None,
                 audit: AuditLog | None = None) -> None:
        self._db = db
        self._repo = repo or ApiKeyRepository()
        self._policy = policy
        self._audit = audit or AuditLog.discarding()
        # sha256(secret) → (found key or None, fetched at monotonic time)
        self._cache: OrderedDict[bytes, tuple[StoredKey | None, float]] = OrderedDict()
        self._cache_size = 10_000
        self._pending_use: dict[uuid.UUID, datetime] = {}
        self._last_written: dict[uuid.UUID, float] = {}
        self._flush_task: asyncio.Task | None = None
        # Bumped whenever this replica changes a key, so that callers' caches of
        # authenticated credentials (the gate's) drop what they hold.
        self.generation = 0
        self._events = None

    @property
    def cache_seconds(self) -> float:
        return self._policy.cache_seconds

    # --- management (the caller's own keys) ----------------------------------------------

    async def create(self, caller: Principal, new: NewApiKey) -> tuple[ApiKey, str]:
        now = utcnow()
        violations = text_violations(new.name, "name", max_chars=NAME_MAX_CHARS, single_line=True)
        if not new.scopes:
            violations.append(FieldViolation("scopes", "at least one scope is required"))
        if len(set(new.scopes)) != len(new.scopes):
            violations.append(FieldViolation("scopes", "must not repeat a scope"))
        for scope in new.scopes:
            if scope not in SCOPES:
                violations.append(FieldViolation("scopes", f"unknown scope {scope!r}"))
        if new.expire_time is not None and new.expire_time <= now:
            violations.append(FieldViolation("expire_time", "must be in the future"))
        elif new.expire_time is not None and new.expire_time > now + MAX_KEY_LIFETIME:
            violations.append(FieldViolation("expire_time", f"must be at most {MAX_KEY_LIFETIME.days} days ahead"))
        violations += self._limit_violations(caller, new.rate_limits)
        errors.collect(violations)
        for scope in new.scopes:
            if not caller.allows(scope) or (scope == ADMIN and not caller.is_admin):
                raise errors.PermissionDenied(
                    f"you cannot grant the {scope!r} scope: a key gets only scopes its creator holds",
                    reason="SCOPE_NOT_GRANTABLE", metadata={"scope": scope},
                )
        secret = new_secret()
        async with self._db.transaction(caller.user_id) as conn:
            key = await self._repo.insert(conn, uuid.uuid4(), new, secret[:DISPLAY_PREFIX_CHARS], hash_secret(secret))
            await self._audit.write(conn, Kind.API_KEY_CREATED, actor=caller.user_id, subject=caller.user_id,
                                    resource=str(key.id), details=_key_details(caller, key))
        log.info("API key %s created for user %s with scopes %s", key.id, caller.user_id, ",".join(key.scopes))
        return key, secret

    def _limit_violations(self, caller: Principal, limits: RateLimits) -> list[FieldViolation]:
        found = []
        defaults = self._policy.default_limits
        for name in ("requests_per_minute", "concurrent_streams", "tokens_per_minute"):
            value, default = getattr(limits, name), getattr(defaults, name)
            if value < 0:
                found.append(FieldViolation(f"rate_limits.{name}", "must not be negative"))
            elif value and default and value > default and not caller.is_admin:
                found.append(FieldViolation(f"rate_limits.{name}", f"must be at most the default of {default}"))
        return found

    async def list(self, caller: Principal, *, state: int, size: int, token: str) -> Page:
        if state not in (0, 1, 2, 3):
            raise errors.InvalidArgument.for_field("state", "is not a known API key state")
        await self.flush_last_used()
        limit = page_size(size, default=20, maximum=100)
        query_key = f"api_keys|{caller.user_id}|{state}"
        after = decode_time_and_id(token, query_key)
        async with self._db.transaction(caller.user_id, readonly=True) as conn:
            rows = await self._repo.list(conn, state=state, now=utcnow(), after=after, limit=limit + 1)
        items, more = rows[:limit], len(rows) > limit
        next_token = encode_time_and_id(query_key, items[-1].create_time, items[-1].id) if more else ""
        return Page(items=items, next_page_token=next_token)

    async def get(self, caller: Principal, key_id: str) -> ApiKey:
        kid = parse_id(key_id, "api_key_id")
        await self.flush_last_used()
        async with self._db.transaction(caller.user_id, readonly=True) as conn:
            key = await self._repo.get(conn, kid)
        if key is None:
            raise _not_found(kid)
        return key

    async def revoke(self, caller: Principal, key_id: str) -> ApiKey:
        kid = parse_id(key_id, "api_key_id")
        async with self._db.transaction(caller.user_id) as conn:
            key = await self._repo.revoke(conn, kid)
            if key is not None:
                await self._audit.write(conn, Kind.API_KEY_REVOKED, actor=caller.user_id, subject=caller.user_id,
                                        resource=str(kid), details=_key_details(caller, key))
        if key is None:
            raise _not_found(kid)
        await self._changed(kid)
        log.info("API key %s revoked by user %s", kid, caller.user_id)
        return key

    async def rotate(self, caller: Principal, key_id: str, grace: timedelta | None) -> tuple[ApiKey, str]:
        kid = parse_id(key_id, "api_key_id")
        if grace is None:
            grace = DEFAULT_GRACE
        if grace < timedelta(0) or grace > MAX_GRACE:
            raise errors.InvalidArgument.for_field("grace_period", "must be between 0 and 7 days")
        secret = new_secret()
        async with self._db.transaction(caller.user_id) as conn:
            current = await self._repo.get(conn, kid, for_update=True)
            if current is None:
                raise _not_found(kid)
            state = current.state(utcnow())
            if state is not ApiKeyState.ACTIVE:
                raise errors.FailedPrecondition(
                    f"API key {kid} is {state.name.lower()} and cannot be rotated", reason=f"API_KEY_{state.name}",
                    metadata={"api_key_id": str(kid)},
                )
            key = await self._repo.rotate(conn, kid, secret[:DISPLAY_PREFIX_CHARS], hash_secret(secret),
                                          utcnow() + grace)
            await self._audit.write(conn, Kind.API_KEY_ROTATED, actor=caller.user_id, subject=caller.user_id,
                                    resource=str(kid), details={**_key_details(caller, key),
                                                                "grace_seconds": int(grace.total_seconds())})
        await self._changed(kid)
        log.info("API key %s rotated by user %s (grace %ds)", kid, caller.user_id, int(grace.total_seconds()))
        return key, secret

    # --- one user's keys, for the deletion of their data ---------------------------------

    async def revoke_all(self, user_id: str) -> int:
        """Revokes every active key of the user at once (on every replica), so that nothing
        new of theirs starts while their data is being deleted; how many were active."""
        async with self._db.transaction(user_id) as conn:
            revoked = await self._repo.revoke_all(conn)
        await self._changed_all(revoked)
        return len(revoked)

    async def delete_all(self, user_id: str, summary: dict[str, object]) -> Removed:
        """Deletes every key of the user, with the deletion's overall audit event
        (`summary`: what every service removed) in the same transaction."""
        async with deletion(self._db, user_id) as conn:
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM api_keys")]
            counts = await delete_rows(conn, ("api_keys",))
            await self._audit.write(conn, Kind.USER_DATA_DELETED, subject=user_id, resource=user_id,
                                    details={**summary, "gateway.api_keys": counts["api_keys"]})
        await self._changed_all(ids)
        return Removed("gateway", counts)

    async def _changed_all(self, key_ids: list[uuid.UUID]) -> None:
        for key_id in key_ids:
            await self._changed(key_id)

    def announce_changes(self, events) -> None:
        """Tells other replicas about keys changed here (and forgets keys changed there)."""
        self._events = events
        events.start(self.forget)

    def forget(self, key_id: uuid.UUID | None) -> None:
        """Drops cached lookups of one key (of every key, for None)."""
        if key_id is None:
            self.generation += 1
            self._cache.clear()
        else:
            self._forget(key_id)

    async def _changed(self, key_id: uuid.UUID) -> None:
        self._forget(key_id)
        if self._events is not None:
            await self._events.publish(key_id)

    def _forget(self, key_id: uuid.UUID) -> None:
        """Drops cached lookups of a key that changed."""
        self.generation += 1
        for digest in [d for d, (found, _) in self._cache.items() if found is not None and found.key.id == key_id]:
            del self._cache[digest]

    # --- authentication ---------------------------------------------------------------

    async def authenticate(self, secret: str) -> Principal:
        return (await self.authenticate_until(secret))[0]

    async def authenticate_until(self, secret: str) -> tuple[Principal, float]:
        """The key's principal and the epoch time until which this secret stays valid (unless
        revoked or rotated meanwhile)."""
        if not _SECRET.match(secret):
            raise _unauthenticated("the API key is malformed", "API_KEY_MALFORMED")
        digest = hash_secret(secret)
        stored = await self._lookup(digest)
        if stored is None:
            raise _unauthenticated("the API key is not known", "API_KEY_UNKNOWN")
        key = stored.key
        now = utcnow()
        valid_until = key.expire_time.timestamp() if key.expire_time is not None else float("inf")
        if hmac.compare_digest(digest, stored.secret_hash):
            pass
        elif stored.previous_secret_hash is not None and hmac.compare_digest(digest, stored.previous_secret_hash):
            if key.previous_secret_expire_time is None or key.previous_secret_expire_time <= now:
                raise _unauthenticated("the API key was rotated and its grace period has ended", "API_KEY_ROTATED",
                                       key)
            valid_until = min(valid_until, key.previous_secret_expire_time.timestamp())
        else:  # a cached entry for a secret since replaced twice
            raise _unauthenticated("the API key is not known", "API_KEY_UNKNOWN")
        state = key.state(now)
        if state is ApiKeyState.REVOKED:
            raise _unauthenticated("the API key has been revoked", "API_KEY_REVOKED", key)
        if state is ApiKeyState.EXPIRED:
            raise _unauthenticated("the API key has expired", "API_KEY_EXPIRED", key)
        self.note_use(key.id)
        principal = Principal(
            user_id=key.user_id,
            scopes=frozenset(key.scopes),
            kind="api_key",
            key_id=str(key.id),
            key_limits=key.rate_limits.over(self._policy.default_limits),
            redact_prompt_pii=key.redact_prompt_pii,
            key_uuid=key.id,
        )
        return principal, valid_until

    async def _lookup(self, digest: bytes) -> StoredKey | None:
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self._policy.cache_seconds:
            return cached[0]
        try:
            async with self._db.acquire() as conn:
                stored = await self._repo.find_by_hash(conn, digest)
        except UNAVAILABLE_ERRORS as exc:
            # Keys seen recently keep working through a short database outage.
            if cached is not None and now - cached[1] < STALE_KEY_SECONDS:
                log.warning("database unavailable (%s); using a cached API key lookup", type(exc).__name__)
                return cached[0]
            raise errors.Unavailable("cannot check API keys right now; try again shortly",
                                     reason="DATABASE_UNAVAILABLE", retry_after=1.0) from None
        self._cache[digest] = (stored, now)
        self._cache.move_to_end(digest)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return stored

    # --- last-used times, written lazily ------------------------------------------------

    def note_use(self, key_id: uuid.UUID) -> None:
        now = time.monotonic()
        resolution = self._policy.last_used_resolution_seconds
        if now - self._last_written.get(key_id, -resolution) >= resolution:
            self._last_written[key_id] = now
            self._pending_use[key_id] = utcnow()

    def tracked_uses(self) -> int:
        """How many keys' recent writes of a last-used time this replica remembers."""
        return len(self._last_written)

    def _forget_old_uses(self) -> None:
        """Keys not written within the resolution need no entry: their next use writes anyway.
        Without this the map would hold every key ever used on this replica."""
        cutoff = time.monotonic() - self._policy.last_used_resolution_seconds
        self._last_written = {k: t for k, t in self._last_written.items() if t > cutoff}

    async def flush_last_used(self) -> None:
        if not self._pending_use:
            return
        pending, self._pending_use = self._pending_use, {}
        try:
            async with self._db.acquire() as conn:
                await self._repo.touch(conn, pending)
        except Exception:  # noqa: BLE001 - a lost update of a last-used time is not worth failing a call
            log.warning("could not record last-used times of %d API keys", len(pending), exc_info=True)

    def start(self) -> None:
        self._flush_task = asyncio.create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._policy.last_used_flush_seconds)
            self._forget_old_uses()
            await self.flush_last_used()

    async def aclose(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            try:
                await self._flush_task
            except asyncio.CancelledError:
                pass
        await self.flush_last_used()
