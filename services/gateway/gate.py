"""The edge policy every call passes: who is calling (API key or JWT), may they call this,
are they within their limits, and the internal identity that speaks for them downstream.
Independent of transport: the proxy and the ApiKeyService servicer both use it."""

from __future__ import annotations

import time
from collections.abc import Sequence

from services.gateway.apikeys import ApiKeys, looks_like_api_key
from services.gateway.auth_failures import AuthFailures
from services.gateway.jwt_auth import JwtVerifier, looks_like_jwt
from services.gateway.models import JWT_SCOPES, Principal, RateLimits
from services.gateway.ratelimit import Admission, MemoryLimiter, RedisLimiter, Subject
from services.runtime import audit, errors
from services.runtime.audit import AuditLog, Kind, Outcome
from services.runtime.identity import IdentityMinter

_SCHEME = "bearer "


class Gate:
    def __init__(
        self,
        keys: ApiKeys,
        jwt: JwtVerifier | None,
        limiter: MemoryLimiter | RedisLimiter,
        user_limits: RateLimits,
        minter: IdentityMinter,
        identity_ttl_seconds: float,
        audit_log: AuditLog | None = None,
        auth_failures_per_minute: int = 10,
    ) -> None:
        self.keys = keys
        self.audit = audit_log or AuditLog.discarding()
        self.auth_failures = AuthFailures(self.audit, per_minute=auth_failures_per_minute)
        self._jwt = jwt
        self.limiter = limiter
        self._user_limits = user_limits
        self._minter = minter
        # Minted tokens are reused for a third of their lifetime: a signature per call would
        # cost more than the forwarding itself, and backends cache verified tokens too.
        self._reuse_seconds = identity_ttl_seconds / 3
        self._minted: dict[tuple[str, frozenset[str]], tuple[str, float]] = {}
        # authorization header → (principal, cached until (monotonic), valid until (epoch),
        # key generation). Skips hashing and verifying a credential on every call.
        self._known: dict[str, tuple[Principal, float, float, int]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        known = self._known.get(authorization) if authorization else None
        if known is not None:
            principal, cached_until, valid_until, generation = known
            if time.monotonic() < cached_until and time.time() < valid_until and generation == self.keys.generation:
                if principal.key_uuid is not None:
                    self.keys.note_use(principal.key_uuid)
                return principal
            del self._known[authorization]
        principal, cache_seconds, valid_until = await self._authenticate(authorization)
        if len(self._known) >= 10_000:
            self._known.clear()
        self._known[authorization] = (principal, time.monotonic() + cache_seconds, valid_until, self.keys.generation)
        return principal

    async def authenticate_call(self, authorization: str | None, context, method: str) -> Principal:
        """`authenticate`, with a failure in the audit log (rate-limited per source) and the
        caller named as the actor of the call's later audit events."""
        try:
            principal = await self.authenticate(authorization)
        except errors.Unauthenticated as error:
            self.auth_failures.failed(error, source=audit.peer_host(_peer(context)), method=method)
            raise
        audit.note_actor(principal.user_id)
        return principal

    def denied(self, principal: Principal, error: errors.PermissionDenied, method: str, context) -> None:
        """A refusal of the gateway's own (the forwarding handlers', which the error mapping
        does not see) in the audit log."""
        self.audit.record(Kind.PERMISSION_DENIED, outcome=Outcome.DENIED, actor=principal.user_id, resource=method,
                          source=audit.peer_host(_peer(context)),
                          details={"reason": error.reason, **{k: v for k, v in error.metadata.items() if k == "scope"}})

    async def _authenticate(self, authorization: str | None) -> tuple[Principal, float, float]:
        """(principal, seconds it may be cached, epoch time it stops being valid)."""
        if not authorization:
            raise errors.Unauthenticated(
                "missing credentials: send `authorization: Bearer <API key or JWT>`", reason="CREDENTIALS_MISSING"
            )
        if authorization[:7].lower() != _SCHEME or len(authorization) > 8192:
            raise errors.Unauthenticated("malformed credentials: expected `Bearer <API key or JWT>`",
                                         reason="CREDENTIALS_MALFORMED")
        credential = authorization[7:].strip()
        if not credential or any(c.isspace() for c in credential):
            raise errors.Unauthenticated("malformed credentials: expected `Bearer <API key or JWT>`",
                                         reason="CREDENTIALS_MALFORMED")
        if looks_like_api_key(credential):
            principal, valid_until = await self.keys.authenticate_until(credential)
            return principal, self.keys.cache_seconds, valid_until
        if looks_like_jwt(credential):
            if self._jwt is None:
                raise errors.Unauthenticated("this deployment accepts API keys only; no identity provider is set up",
                                             reason="JWT_NOT_ACCEPTED")
            user_id, valid_until = await self._jwt.verify_until(credential)
            return Principal(user_id=user_id, scopes=JWT_SCOPES, kind="jwt"), 300.0, valid_until
        raise errors.Unauthenticated("malformed credentials: neither an API key nor a JWT",
                                     reason="CREDENTIALS_MALFORMED")

    @staticmethod
    def authorize(principal: Principal, scope: str, what: str) -> None:
        if not principal.allows(scope):
            raise errors.PermissionDenied(
                f"this credential lacks the {scope!r} scope needed for {what}",
                reason="SCOPE_MISSING", metadata={"scope": scope},
            )

    def subjects(self, principal: Principal) -> Sequence[Subject]:
        user = Subject(f"user:{principal.user_id}", self._user_limits)
        if principal.key_limits is not None:
            return (Subject(f"key:{principal.key_id}", principal.key_limits), user)
        return (user,)

    async def admit(self, principal: Principal, *, stream: bool) -> Admission:
        return await self.limiter.admit(self.subjects(principal), stream=stream)

    def identity(self, principal: Principal) -> str:
        cache_key = (principal.user_id, principal.scopes)
        now = time.monotonic()
        cached = self._minted.get(cache_key)
        if cached is not None and now - cached[1] < self._reuse_seconds:
            return cached[0]
        token = self._minter.mint(principal.user_id, principal.scopes)
        if len(self._minted) > 10_000:
            self._minted.clear()
        self._minted[cache_key] = (token, now)
        return token


def _peer(context) -> str | None:
    try:
        return context.peer()
    except Exception:  # noqa: BLE001 - a context without a transport (tests)
        return None
