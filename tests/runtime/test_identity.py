from __future__ import annotations

import base64
import json

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


def test_a_bundle_of_public_keys_verifies_both_sides_of_a_rotation():
    """Backends trust the old and the new key while the minters switch, then only the new."""
    old, new = generate_private_key_pem(), generate_private_key_pem()
    during = IdentityVerifier(public_key_pem(old) + public_key_pem(new))
    after = IdentityVerifier(public_key_pem(new))
    old_token, new_token = IdentityMinter(old).mint("alice"), IdentityMinter(new).mint("bob")
    assert during.verify(old_token).user_id == "alice"
    assert during.verify(new_token).user_id == "bob"
    assert after.verify(new_token).user_id == "bob"
    with pytest.raises(Unauthenticated):
        after.verify(old_token)


def test_a_token_naming_a_trusted_key_but_signed_by_another_is_refused():
    from cryptography.hazmat.primitives import serialization

    from services.runtime.identity import key_id

    trusted, intruder = generate_private_key_pem(), generate_private_key_pem()
    verifier = IdentityVerifier(public_key_pem(trusted) + public_key_pem(generate_private_key_pem()))
    trusted_kid = key_id(serialization.load_pem_private_key(trusted, password=None).public_key())
    forged = jwt.encode({"iss": "parley-gateway", "aud": "parley-internal", "sub": "u", "exp": 9999999999, "iat": 1},
                        serialization.load_pem_private_key(intruder, password=None), algorithm="EdDSA",
                        headers={"kid": trusted_kid})
    list_kid = ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
                        for part in ({"alg": "EdDSA", "kid": ["a", "list"]}, {"sub": "u"})) + ".c2ln"
    for token in [forged, IdentityMinter(intruder).mint("u"), list_kid]:
        with pytest.raises(Unauthenticated):
            verifier.verify(token)


def test_a_public_key_file_that_is_not_ed25519_is_refused():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="Ed25519"):
        IdentityVerifier(public_key_pem(generate_private_key_pem()) + other)
