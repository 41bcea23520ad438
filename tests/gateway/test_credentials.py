"""Every credential case at the gateway: API keys (none, malformed, unknown, revoked,
expired, rotated inside and after the grace period) and JWTs (bad signature, wrong
audience, expired, not yet valid, alg none, unknown kid before and after a JWKS refresh),
and scopes."""

from __future__ import annotations

import base64
import json
import secrets
import time
from datetime import datetime, timedelta, timezone

import asyncpg
import grpc
import jwt
import pytest
from google.protobuf.duration_pb2 import Duration

from parley.gateway.v1 import gateway_pb2 as gpb
from parley.gateway.v1 import gateway_service_pb2 as kapi
from parley.gateway.v1 import gateway_service_pb2_grpc as kgrpc
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from services.gateway.jwt_auth import JwtSettings, JwtVerifier
from services.runtime import errors
from tests.conftest import expect_error
from tests.gateway.conftest import AUDIENCE, ISSUER, bearer, sensitive

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


async def list_sessions(channel, metadata):
    return await sgrpc.SessionServiceStub(channel).ListSessions(sapi.ListSessionsRequest(), metadata=metadata)


async def refused(channel, metadata) -> str:
    reason, _ = await expect_error(list_sessions(channel, metadata), UNAUTHENTICATED)
    return reason


# --- API keys --------------------------------------------------------------------------


async def test_no_credentials(gw_channel):
    assert await refused(gw_channel, ()) == "CREDENTIALS_MISSING"


@pytest.mark.parametrize("value", [
    "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "pk_live_" + "a" * 43, "Bearer pk_live_short",
    "Bearer not-a-credential", "Bearer pk_live_" + "a" * 20 + " " + "b" * 22,
])
async def test_malformed_credentials(gw_channel, value):
    assert await refused(gw_channel, (("authorization", value),)) in ("CREDENTIALS_MALFORMED", "API_KEY_MALFORMED")


async def test_unknown_api_key(gw_channel):
    unknown = sensitive("pk_live_" + secrets.token_urlsafe(32))
    assert await refused(gw_channel, bearer(unknown)) == "API_KEY_UNKNOWN"


async def test_valid_key_is_accepted_and_its_last_use_recorded(gw_channel, make_key):
    admin = await make_key("cred-user", ["admin"])
    await list_sessions(gw_channel, bearer(admin))
    keys = kgrpc.ApiKeyServiceStub(gw_channel)
    listed = await keys.ListApiKeys(kapi.ListApiKeysRequest(), metadata=bearer(admin))
    mine = [k for k in listed.api_keys if admin.startswith(k.prefix)]
    assert len(mine) == 1 and mine[0].HasField("last_used_time")
    assert admin not in str(listed)  # secrets are never listed


async def test_revoked_key(gw_channel, make_key):
    admin = await make_key("cred-user", ["admin"])
    victim = await make_key("cred-user", ["sessions"])
    await list_sessions(gw_channel, bearer(victim))  # cached as valid
    keys = kgrpc.ApiKeyServiceStub(gw_channel)
    listed = await keys.ListApiKeys(kapi.ListApiKeysRequest(), metadata=bearer(admin))
    key_id = next(k.id for k in listed.api_keys if victim.startswith(k.prefix))
    revoked = await keys.RevokeApiKey(kapi.RevokeApiKeyRequest(api_key_id=key_id), metadata=bearer(admin))
    assert revoked.state == gpb.API_KEY_STATE_REVOKED
    assert await refused(gw_channel, bearer(victim)) == "API_KEY_REVOKED"


async def test_expired_key(gw_channel, make_key, admin_url):
    secret = await make_key("cred-user", ["sessions"], expire_time=datetime.now(timezone.utc) + timedelta(hours=1))
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("UPDATE gateway.api_keys SET expire_time = now() - interval '1 second' WHERE prefix = $1",
                           secret[:12])
    finally:
        await conn.close()
    assert await refused(gw_channel, bearer(secret)) == "API_KEY_EXPIRED"


async def _rotate(channel, admin, old, grace: Duration | None):
    keys = kgrpc.ApiKeyServiceStub(channel)
    listed = await keys.ListApiKeys(kapi.ListApiKeysRequest(), metadata=bearer(admin))
    key_id = next(k.id for k in listed.api_keys if old.startswith(k.prefix))
    request = kapi.RotateApiKeyRequest(api_key_id=key_id)
    if grace is not None:
        request.grace_period.CopyFrom(grace)
    rotated = await keys.RotateApiKey(request, metadata=bearer(admin))
    return key_id, sensitive(rotated.secret), rotated.api_key


async def test_rotated_key_inside_grace_period_still_works(gw_channel, make_key):
    admin = await make_key("cred-user", ["admin"])
    old = await make_key("cred-user", ["sessions"])
    _, new, key = await _rotate(gw_channel, admin, old, Duration(seconds=3600))
    assert new != old and key.HasField("previous_secret_expire_time") and key.HasField("rotate_time")
    await list_sessions(gw_channel, bearer(old))
    await list_sessions(gw_channel, bearer(new))


async def test_rotated_key_after_grace_period(gw_channel, make_key, admin_url):
    admin = await make_key("cred-user", ["admin"])
    old = await make_key("cred-user", ["sessions"])
    key_id, new, _ = await _rotate(gw_channel, admin, old, Duration(seconds=3600))
    conn = await asyncpg.connect(admin_url)  # the grace period runs out
    try:
        await conn.execute("UPDATE gateway.api_keys SET previous_secret_expire_time = now() - interval '1 second' "
                           "WHERE id = $1", __import__("uuid").UUID(key_id))
    finally:
        await conn.close()
    assert await refused(gw_channel, bearer(old)) == "API_KEY_ROTATED"
    await list_sessions(gw_channel, bearer(new))


async def test_rotation_without_grace_ends_the_old_secret_at_once(gw_channel, make_key):
    admin = await make_key("cred-user", ["admin"])
    old = await make_key("cred-user", ["sessions"])
    await list_sessions(gw_channel, bearer(old))
    _, new, _ = await _rotate(gw_channel, admin, old, Duration(seconds=0))
    assert await refused(gw_channel, bearer(old)) == "API_KEY_ROTATED"
    await list_sessions(gw_channel, bearer(new))


async def test_only_hashes_are_stored(make_key, admin_url):
    secret = await make_key("cred-user", ["sessions"])
    conn = await asyncpg.connect(admin_url)
    try:
        rows = await conn.fetch("SELECT * FROM gateway.api_keys")
    finally:
        await conn.close()
    dump = repr([dict(r) for r in rows])
    assert secret not in dump and secret[12:] not in dump


async def test_missing_scope_is_permission_denied(gw_channel, make_key):
    llm_only = await make_key("cred-user", ["llm"])
    reason, _ = await expect_error(list_sessions(gw_channel, bearer(llm_only)), grpc.StatusCode.PERMISSION_DENIED)
    assert reason == "SCOPE_MISSING"
    keys = kgrpc.ApiKeyServiceStub(gw_channel)
    await expect_error(keys.ListApiKeys(kapi.ListApiKeysRequest(), metadata=bearer(llm_only)),
                       grpc.StatusCode.PERMISSION_DENIED)


async def test_admin_scope_grants_every_service(gw_channel, make_key):
    admin = await make_key("cred-user", ["admin"])
    await list_sessions(gw_channel, bearer(admin))


# --- JWTs ------------------------------------------------------------------------------


@pytest.mark.parametrize("kid", ["k1", "k2", "k3"])  # RS256, ES256, EdDSA
async def test_valid_jwt_is_accepted_as_its_subject(gw_channel, jwks, kid):
    token = jwks.token(kid, user=f"user_jwt_{kid}")
    stub = sgrpc.SessionServiceStub(gw_channel)
    session = await stub.CreateSession(sapi.CreateSessionRequest(title="jwt"), metadata=bearer(token))
    assert session.user_id == f"user_jwt_{kid}"


async def test_jwt_with_a_bad_signature(gw_channel, jwks):
    token = jwks.token("k1")
    header, body, signature = token.split(".")
    forged_body = base64.urlsafe_b64encode(json.dumps(
        {**json.loads(base64.urlsafe_b64decode(body + "==")), "sub": "user_victim"}).encode()).decode().rstrip("=")
    assert await refused(gw_channel, bearer(sensitive(f"{header}.{forged_body}.{signature}"))) == "TOKEN_SIGNATURE"
    # A key the provider never published, claiming a published kid.
    from cryptography.hazmat.primitives.asymmetric import rsa

    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    forged = sensitive(jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "user_x", "exp": now + 60}, rogue,
                                  algorithm="RS256", headers={"kid": "k1"}))
    assert await refused(gw_channel, bearer(forged)) == "TOKEN_SIGNATURE"


async def test_jwt_for_another_audience(gw_channel, jwks):
    assert await refused(gw_channel, bearer(jwks.token("k1", aud="someone-else"))) == "TOKEN_AUDIENCE"


async def test_jwt_from_another_issuer(gw_channel, jwks):
    assert await refused(gw_channel, bearer(jwks.token("k1", iss="https://evil.test"))) == "TOKEN_ISSUER"


async def test_expired_jwt(gw_channel, jwks):
    now = int(time.time())
    assert await refused(gw_channel, bearer(jwks.token("k1", iat=now - 600, nbf=now - 600, exp=now - 120))) == \
        "TOKEN_EXPIRED"


async def test_jwt_not_yet_valid(gw_channel, jwks):
    now = int(time.time())
    assert await refused(gw_channel, bearer(jwks.token("k1", nbf=now + 600, exp=now + 1200))) == "TOKEN_NOT_YET_VALID"


async def test_jwt_with_alg_none(gw_channel):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user_none", "exp": now + 60}

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    token = sensitive(f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{b64(claims)}.")
    assert await refused(gw_channel, bearer(token)) == "TOKEN_ALGORITHM"
    # HMAC with the public key as the secret is the other classic confusion.
    hs = sensitive(jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"kid": "k1"}))
    assert await refused(gw_channel, bearer(hs)) == "TOKEN_ALGORITHM"


async def test_unknown_kid_then_published_after_a_jwks_refresh(gw_channel, jwks):
    jwks.add("k-rotated", "RS256", publish=False)
    token = jwks.token("k-rotated", user="user_rotated")
    before = jwks.fetches
    assert await refused(gw_channel, bearer(token)) == "TOKEN_KEY_UNKNOWN"
    assert jwks.fetches > before  # an unknown kid made the gateway look again
    jwks.published.append("k-rotated")  # the provider rotates the key in
    sessions = await list_sessions(gw_channel, bearer(token))
    assert sessions is not None


async def test_never_published_kid(gw_channel, jwks):
    jwks.add("k-ghost", "ES256", publish=False)
    assert await refused(gw_channel, bearer(jwks.token("k-ghost"))) == "TOKEN_KEY_UNKNOWN"


async def test_jwt_caller_manages_own_keys_but_cannot_grant_admin(gw_channel, jwks):
    token = jwks.token("k1", user="user_keys_owner")
    keys = kgrpc.ApiKeyServiceStub(gw_channel)
    created = await keys.CreateApiKey(kapi.CreateApiKeyRequest(name="ci", scopes=[gpb.SCOPE_SESSIONS],
                                                               ttl=Duration(seconds=3600)), metadata=bearer(token))
    sensitive(created.secret)
    assert created.secret.startswith("pk_live_") and created.api_key.user_id == "user_keys_owner"
    await list_sessions(gw_channel, bearer(created.secret))
    await expect_error(keys.CreateApiKey(kapi.CreateApiKeyRequest(name="x", scopes=[gpb.SCOPE_ADMIN]),
                                         metadata=bearer(token)), grpc.StatusCode.PERMISSION_DENIED)
    # Another user's key is not found.
    other = jwks.token("k1", user="user_someone_else")
    await expect_error(keys.GetApiKey(kapi.GetApiKeyRequest(api_key_id=created.api_key.id), metadata=bearer(other)),
                       grpc.StatusCode.NOT_FOUND)
    listed = await keys.ListApiKeys(kapi.ListApiKeysRequest(), metadata=bearer(other))
    assert not listed.api_keys


async def test_key_creation_is_validated(gw_channel, jwks):
    token = jwks.token("k1", user="user_validation")
    keys = kgrpc.ApiKeyServiceStub(gw_channel)
    _, fields = await expect_error(keys.CreateApiKey(kapi.CreateApiKeyRequest(name="bad\x00name"),
                                                     metadata=bearer(token)), grpc.StatusCode.INVALID_ARGUMENT)
    assert "name" in fields and "scopes" in fields
    await expect_error(keys.CreateApiKey(kapi.CreateApiKeyRequest(
        name="x", scopes=[gpb.SCOPE_LLM], rate_limits=gpb.RateLimits(requests_per_minute=10**9)),
        metadata=bearer(token)), grpc.StatusCode.INVALID_ARGUMENT)


# --- the verifier's settings -----------------------------------------------------------


async def test_pem_key_and_a_custom_user_claim(jwks):
    from cryptography.hazmat.primitives import serialization

    _, key = jwks.keys["k1"]
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    verifier = JwtVerifier(JwtSettings(public_key_pem=pem, issuer=ISSUER, audiences=(AUDIENCE,), user_claim="uid"))
    assert await verifier.verify(jwks.token("k1", uid="user_from_uid")) == "user_from_uid"
    with pytest.raises(errors.Unauthenticated):
        await verifier.verify(jwks.token("k2", uid="x"))  # ES256 token, RSA key


async def test_clerk_style_authorized_party(jwks):
    verifier = JwtVerifier(JwtSettings(jwks_url=jwks.url, issuer=ISSUER,
                                       authorized_parties=("https://app.parley.test",)))
    assert await verifier.verify(jwks.token("k1", aud=None, user="user_clerk")) == "user_clerk"
    with pytest.raises(errors.Unauthenticated):
        await verifier.verify(jwks.token("k1", aud=None, azp="https://evil.test"))


async def test_known_keys_keep_working_while_the_database_is_down(admin_url, identity_private_key, sessions_backend):
    from tests.gateway.conftest import gateway_settings, start_gateway

    running = await start_gateway(gateway_settings(admin_url, identity_private_key, key_cache_seconds=0.0, targets={
        "llm": None, "sessions": f"127.0.0.1:{sessions_backend.port}", "files": None, "assistants": None}))
    try:
        keys = running.app.gate.keys
        from services.gateway.models import NewApiKey, Principal, RateLimits

        _, secret = await keys.create(Principal("outage-user", frozenset({"admin"}), "cli"),
                                      NewApiKey("outage", ("sessions",), None, RateLimits(), False))
        sensitive(secret)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            await list_sessions(channel, bearer(secret))  # looked up once
            await running.app.db.pool.close()  # the database goes away
            await list_sessions(channel, bearer(secret))
            unknown = sensitive("pk_live_" + secrets.token_urlsafe(32))
            reason, _ = await expect_error(list_sessions(channel, bearer(unknown)), grpc.StatusCode.UNAVAILABLE)
            assert reason == "DATABASE_UNAVAILABLE"
    finally:
        await running.stop(0.5)
