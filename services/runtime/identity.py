"""The gateway's signed statement of who is calling, checked by every backend.

The gateway mints a short-lived Ed25519-signed JWT per backend call (user, scopes, request
id) and sends it as the `x-parley-identity` metadata entry; backends hold only the public
key, so a compromised backend cannot mint identities. Tests mint with the same helper.

Rotation without downtime: a verifier takes several public keys (PEM blocks one after the
other) and picks the one a token's `kid` header names (a fingerprint of the public key), so
backends trust the old and the new key while the minters switch, then drop the old one.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.runtime.errors import Unauthenticated

METADATA_KEY = "x-parley-identity"
ISSUER = "parley-gateway"
AUDIENCE = "parley-internal"
DEFAULT_TTL_SECONDS = 60.0
CLOCK_SKEW_SECONDS = 5.0

# User ids come from API keys or identity providers (Clerk's look like "user_2NNE..."). They
# end up in SQL settings and logs, so only a conservative alphabet is accepted.
USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:|+-]{0,127}$")


@dataclass(frozen=True)
class Identity:
    user_id: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    request_id: str = ""

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def generate_private_key_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(private_key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_key: Ed25519PublicKey) -> str:
    """The `kid` of tokens signed by this key's private half: a fingerprint, not a secret."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def load_public_keys(pem_bundle: bytes) -> dict[str, Ed25519PublicKey]:
    """Every Ed25519 public key of a PEM bundle, by key id (at least one)."""
    keys = {}
    for block in _PEM_BLOCK.findall(pem_bundle) or [pem_bundle]:
        key = serialization.load_pem_public_key(block)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the internal identity key must be an Ed25519 public key")
        keys[key_id(key)] = key
    return keys


class IdentityMinter:
    """Signs identities. Only the gateway (and tests) hold the private key."""

    def __init__(self, private_key_pem: bytes, ttl_seconds: float = DEFAULT_TTL_SECONDS) -> None:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the internal identity key must be an Ed25519 private key")
        self._key = key
        self._headers = {"kid": key_id(key.public_key())}
        self._ttl = ttl_seconds

    def mint(self, user_id: str, scopes: frozenset[str] | set[str] | tuple[str, ...] = (), request_id: str = "") -> str:
        if not USER_ID_PATTERN.match(user_id):
            raise ValueError("user id has characters outside the accepted alphabet")
        now = time.time()
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user_id,
            "scp": sorted(scopes),
            "rid": request_id or uuid.uuid4().hex,
            "iat": int(now),
            "exp": int(now + self._ttl),
        }
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers=self._headers)

    def metadata(self, user_id: str, scopes=(), request_id: str = "") -> tuple[tuple[str, str], ...]:
        return ((METADATA_KEY, self.mint(user_id, scopes, request_id)),)


class IdentityVerifier:
    """Checks identity tokens; remembers verified ones until they expire (the gateway reuses
    a token for many calls, and a signature check costs more than the call it guards)."""

    def __init__(self, public_key_pem: bytes, cache_size: int = 4096) -> None:
        self._keys = load_public_keys(public_key_pem)
        self._cache: OrderedDict[str, tuple[Identity, float]] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str | None) -> Identity:
        if not token:
            raise Unauthenticated("missing internal identity: call Parley through its gateway", reason="IDENTITY_MISSING")
        cached = self._cache.get(token)
        if cached is not None:
            identity, expires_at = cached
            if time.time() < expires_at + CLOCK_SKEW_SECONDS:
                return identity
            del self._cache[token]
        try:
            claims = jwt.decode(
                token,
                self._signing_key(token),
                algorithms=["EdDSA"],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid internal identity ({type(exc).__name__})", reason="IDENTITY_INVALID") from None
        user_id = claims["sub"]
        if not isinstance(user_id, str) or not USER_ID_PATTERN.match(user_id):
            raise Unauthenticated("invalid internal identity (bad subject)", reason="IDENTITY_INVALID")
        scopes = claims.get("scp") or []
        identity = Identity(user_id=user_id, scopes=frozenset(str(s) for s in scopes), request_id=str(claims.get("rid", "")))
        self._cache[token] = (identity, float(claims["exp"]))
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return identity

    def _signing_key(self, token: str) -> Ed25519PublicKey:
        """The key the token names; a token without `kid` (or an unknown one) with a single
        trusted key is checked against that key, so its signature decides."""
        kid = jwt.get_unverified_header(token).get("kid")
        if isinstance(kid, str) and kid in self._keys:
            return self._keys[kid]
        if len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise jwt.InvalidKeyError("signed by a key this service does not trust")
