"""Bearer JWTs from an identity provider (Clerk, Auth0, Keycloak, …).

Keys come from a JWKS URL (cached; fetched again when a token names an unknown `kid`, at
most once per `min_refresh_seconds`) or from a PEM public key. Only asymmetric algorithms
are accepted (RS256, ES256, EdDSA by default), never `none` or HMAC. `iss`, `aud`, `exp`
and `nbf` are checked with a small leeway; the user id comes from a configurable claim
(`sub` by default, which is Clerk's user id). Clerk puts the frontend origin in `azp`
instead of an audience: `authorized_parties` checks that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass

import jwt
from jwt import PyJWK

from services.runtime import errors
from services.runtime.identity import USER_ID_PATTERN

log = logging.getLogger("parley.gateway.jwt")

ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")


@dataclass(frozen=True)
class JwtSettings:
    jwks_url: str | None = None
    public_key_pem: bytes | None = None
    issuer: str | None = None
    audiences: tuple[str, ...] = ()
    authorized_parties: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    user_claim: str = "sub"
    leeway_seconds: float = 10.0
    jwks_cache_seconds: float = 600.0
    jwks_min_refresh_seconds: float = 5.0
    jwks_timeout_seconds: float = 5.0

    @property
    def enabled(self) -> bool:
        return bool(self.jwks_url or self.public_key_pem)


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and credential.startswith("eyJ")


def _invalid(message: str, reason: str = "TOKEN_INVALID") -> errors.Unauthenticated:
    return errors.Unauthenticated(message, reason=reason)


class JwksCache:
    """Signing keys by `kid`, from a JWKS URL."""

    def __init__(self, url: str, *, cache_seconds: float, min_refresh_seconds: float, timeout: float) -> None:
        self._url = url
        self._cache_seconds = cache_seconds
        self._min_refresh = min_refresh_seconds
        self._timeout = timeout
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> PyJWK:
        now = time.monotonic()
        if now - self._fetched_at > self._cache_seconds:
            await self._refresh(stale_before=now)
        found = self._find(kid)
        if found is None and time.monotonic() - self._fetched_at >= self._min_refresh:
            await self._refresh(stale_before=time.monotonic())  # a key rotated in at the provider
            found = self._find(kid)
        if found is None:
            raise _invalid("the bearer token is signed with an unknown key", "TOKEN_KEY_UNKNOWN")
        return found

    def _find(self, kid: str | None) -> PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self, stale_before: float) -> None:
        async with self._lock:
            if self._fetched_at >= stale_before:  # another call refreshed while we waited
                return
            try:
                document = await asyncio.to_thread(self._fetch)
            except Exception as exc:  # noqa: BLE001
                log.warning("cannot fetch the JWKS: %s", type(exc).__name__)
                if not self._keys:
                    raise errors.Unavailable("the identity provider's keys cannot be fetched",
                                             reason="JWKS_UNAVAILABLE", retry_after=5.0) from None
                self._fetched_at = time.monotonic()  # keep the old keys; try again after min_refresh
                return
            keys: dict[str, PyJWK] = {}
            for entry in document.get("keys", []):
                if entry.get("use", "sig") != "sig":
                    continue
                try:
                    keys[entry.get("kid", "")] = PyJWK(entry)
                except jwt.PyJWTError:
                    continue  # a key type or algorithm we do not support
            self._keys = keys
            self._fetched_at = time.monotonic()
            log.info("fetched %d signing keys from the JWKS", len(keys))

    def _fetch(self) -> dict:
        headers = {"Accept": "application/json", "User-Agent": "parley-gateway"}
        request = urllib.request.Request(self._url, headers=headers)
        with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310 - configured URL
            return json.loads(response.read(1024 * 1024))


class JwtVerifier:
    def __init__(self, settings: JwtSettings) -> None:
        bad = [a for a in settings.algorithms if a not in ALLOWED_ALGORITHMS]
        if bad:
            raise ValueError(f"unsupported JWT algorithms {bad}; allowed: {', '.join(ALLOWED_ALGORITHMS)}")
        self._settings = settings
        self._jwks = (
            JwksCache(settings.jwks_url, cache_seconds=settings.jwks_cache_seconds,
                      min_refresh_seconds=settings.jwks_min_refresh_seconds, timeout=settings.jwks_timeout_seconds)
            if settings.jwks_url else None
        )
        self._pem_key = None
        if settings.public_key_pem:
            from cryptography.hazmat.primitives import serialization

            self._pem_key = serialization.load_pem_public_key(settings.public_key_pem)
        # token → (user id, expiry): a signature check costs more than the call it guards.
        self._verified: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._cache_size = 10_000

    async def verify(self, token: str) -> str:
        """The user id of a valid token; Unauthenticated otherwise."""
        return (await self.verify_until(token))[0]

    async def verify_until(self, token: str) -> tuple[str, float]:
        """The user id of a valid token and the epoch time it stops being valid."""
        cached = self._verified.get(token)
        if cached is not None:
            user_id, expires = cached
            if time.time() < expires + self._settings.leeway_seconds:
                return user_id, expires + self._settings.leeway_seconds
            del self._verified[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("the bearer token is not a well-formed JWT", "TOKEN_MALFORMED") from None
        algorithm = header.get("alg")
        if algorithm not in self._settings.algorithms:
            raise _invalid(f"the bearer token's algorithm {str(algorithm)[:16]!r} is not accepted", "TOKEN_ALGORITHM")
        if self._jwks is not None:
            key = (await self._jwks.key(header.get("kid"))).key
        else:
            key = self._pem_key
        s = self._settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=list(s.audiences) or None,
                issuer=s.issuer,
                leeway=s.leeway_seconds,
                options={"require": ["exp", s.user_claim], "verify_aud": bool(s.audiences)},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("the bearer token has expired", "TOKEN_EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("the bearer token is not valid yet", "TOKEN_NOT_YET_VALID") from None
        except jwt.InvalidAudienceError:
            raise _invalid("the bearer token is for another audience", "TOKEN_AUDIENCE") from None
        except jwt.InvalidIssuerError:
            raise _invalid("the bearer token is from another issuer", "TOKEN_ISSUER") from None
        except jwt.InvalidSignatureError:
            raise _invalid("the bearer token's signature is invalid", "TOKEN_SIGNATURE") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the bearer token lacks the {exc.claim!r} claim", "TOKEN_CLAIM_MISSING") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _invalid("the bearer token is invalid", "TOKEN_INVALID") from None
        if s.authorized_parties and claims.get("azp") not in s.authorized_parties:
            raise _invalid("the bearer token was issued to another party", "TOKEN_AUTHORIZED_PARTY")
        user_id = claims.get(s.user_claim)
        if not isinstance(user_id, str) or not USER_ID_PATTERN.match(user_id):
            raise _invalid(f"the bearer token's {s.user_claim!r} claim is not an acceptable user id", "TOKEN_SUBJECT")
        self._verified[token] = (user_id, float(claims["exp"]))
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return user_id, float(claims["exp"]) + self._settings.leeway_seconds
