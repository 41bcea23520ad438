from __future__ import annotations

import jwt
import pytest

from services.runtime.errors import Unauthenticated
from services.runtime.identity import (
    IdentityMinter,
    IdentityVerifier,
    generate_private_key_pem,
    public_key_pem,
)


@pytest.fixture(scope="module")
def keys():
    private = generate_private_key_pem()
    return private, public_key_pem(private)


def test_round_trip_keeps_user_scopes_and_request_id(keys):
    private, public = keys
    token = IdentityMinter(private).mint("user_2abc", {"sessions", "llm"}, request_id="req-1")
    identity = IdentityVerifier(public).verify(token)
    assert identity.user_id == "user_2abc"
    assert identity.scopes == frozenset({"sessions", "llm"})
    assert identity.request_id == "req-1"
    assert identity.has_scope("llm") and not identity.has_scope("files")


@pytest.mark.parametrize("claims_change", [
    {"aud": "someone-else"},
    {"iss": "not-the-gateway"},
    {"exp": 1},
    {"sub": "bad user id with spaces"},
    {"sub": ""},
])
def test_rejects_tokens_with_wrong_claims(keys, claims_change):
    private, public = keys
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private, password=None)
    import time

    claims = {"iss": "parley-gateway", "aud": "parley-internal", "sub": "u", "scp": [], "rid": "r",
              "iat": int(time.time()), "exp": int(time.time()) + 60, **claims_change}
    token = jwt.encode(claims, key, algorithm="EdDSA")
    with pytest.raises(Unauthenticated):
        IdentityVerifier(public).verify(token)


def test_rejects_unsigned_and_foreign_tokens(keys):
    _, public = keys
    verifier = IdentityVerifier(public)
    unsigned = jwt.encode({"iss": "parley-gateway", "aud": "parley-internal", "sub": "u", "exp": 9999999999, "iat": 1},
                          key=None, algorithm="none")
    for token in [unsigned, IdentityMinter(generate_private_key_pem()).mint("u"), "", None, "a.b.c"]:
        with pytest.raises(Unauthenticated):
            verifier.verify(token)


def test_minter_refuses_user_ids_outside_the_alphabet(keys):
    with pytest.raises(ValueError):
        IdentityMinter(keys[0]).mint("robert'); DROP TABLE sessions;--")
