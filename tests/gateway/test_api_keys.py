"""ApiKeyService on input a caller should never be able to break it with: timestamps and
durations outside their range, and bytes that are not a request at all. Each answers
INVALID_ARGUMENT and stores nothing; a key stored before the checks existed still lists."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from parley.gateway.v1 import gateway_pb2 as gpb
from parley.gateway.v1 import gateway_service_pb2 as kapi
from parley.gateway.v1 import gateway_service_pb2_grpc as kgrpc
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from tests.conftest import expect_error, rich_error
from tests.gateway.conftest import bearer, sensitive

INVALID = grpc.StatusCode.INVALID_ARGUMENT
# 9999-12-31T23:59:59.999999Z: a valid protobuf timestamp that PostgreSQL stores as `infinity`.
LAST_TIMESTAMP = Timestamp(seconds=253402300799, nanos=999999000)


async def _all_keys(keys, token) -> list:
    return list((await keys.ListApiKeys(kapi.ListApiKeysRequest(page_size=100), metadata=bearer(token))).api_keys)


@pytest.mark.parametrize("expiration", [
    {"expire_time": LAST_TIMESTAMP},
    {"expire_time": Timestamp(seconds=-62135596800)},  # 0001-01-01
    {"expire_time": Timestamp(seconds=253402300800)},  # past the last valid timestamp
    {"expire_time": Timestamp(seconds=4102444800, nanos=-1)},
    {"expire_time": Timestamp(seconds=4102444800, nanos=1_000_000_000)},
    {"ttl": Duration(seconds=315576000000)},
    {"ttl": Duration(seconds=315576000001)},
    {"ttl": Duration(seconds=2**62)},
    {"ttl": Duration(seconds=3600, nanos=-5)},
    {"ttl": Duration(seconds=-3600)},
], ids=lambda e: f"{next(iter(e))}={next(iter(e.values())).seconds}/{next(iter(e.values())).nanos}")
async def test_out_of_range_expiry_is_invalid_and_stores_nothing(gw_channel, jwks, expiration):
    token = jwks.token("k1", user="user_key_ranges")
    keys = kgrpc.ApiKeyServiceStub(gw_channel)
    before = await _all_keys(keys, token)
    field = next(iter(expiration))
    reason, fields = await expect_error(
        keys.CreateApiKey(kapi.CreateApiKeyRequest(name="far", scopes=[gpb.SCOPE_SESSIONS], **expiration),
                          metadata=bearer(token)), INVALID)
    assert fields == [field] and reason
    assert await _all_keys(keys, token) == before


async def test_far_but_reasonable_expiry_is_accepted(gw_channel, jwks):
    token = jwks.token("k1", user="user_key_far")
    keys = kgrpc.ApiKeyServiceStub(gw_channel)
    created = await keys.CreateApiKey(kapi.CreateApiKeyRequest(
        name="decade", scopes=[gpb.SCOPE_SESSIONS], ttl=Duration(seconds=10 * 365 * 86400)), metadata=bearer(token))
    sensitive(created.secret)
    assert created.api_key.state == gpb.API_KEY_STATE_ACTIVE
    assert [k.id for k in await _all_keys(keys, token)] == [created.api_key.id]


@pytest.mark.parametrize("grace", [Duration(seconds=2**62), Duration(seconds=60, nanos=-1),
                                   Duration(seconds=-60), Duration(seconds=8 * 86400)])
async def test_out_of_range_grace_period_is_invalid_and_the_key_unchanged(gw_channel, make_key, grace):
    admin = await make_key("grace-ranges", ["admin"])
    keys = kgrpc.ApiKeyServiceStub(gw_channel)
    target = (await keys.CreateApiKey(kapi.CreateApiKeyRequest(name="t", scopes=[gpb.SCOPE_SESSIONS]),
                                      metadata=bearer(admin)))
    sensitive(target.secret)
    _, fields = await expect_error(keys.RotateApiKey(kapi.RotateApiKeyRequest(
        api_key_id=target.api_key.id, grace_period=grace), metadata=bearer(admin)), INVALID)
    assert fields == ["grace_period"]
    after = await keys.GetApiKey(kapi.GetApiKeyRequest(api_key_id=target.api_key.id), metadata=bearer(admin))
    assert not after.HasField("rotate_time") and after.prefix == target.api_key.prefix
    await sgrpc.SessionServiceStub(gw_channel).ListSessions(sapi.ListSessionsRequest(), metadata=bearer(target.secret))


async def test_a_key_stored_with_an_infinite_expiry_still_lists_works_and_revokes(gw_channel, make_key, admin_url):
    """Before expiries were range-checked, 9999-12-31T23:59:59.999999Z was stored as
    `infinity`; such rows must not break their owner's list, nor escape revocation."""
    admin = await make_key("infinite-owner", ["admin"])
    keys = kgrpc.ApiKeyServiceStub(gw_channel)
    created = await keys.CreateApiKey(kapi.CreateApiKeyRequest(name="forever", scopes=[gpb.SCOPE_SESSIONS]),
                                      metadata=bearer(admin))
    secret = sensitive(created.secret)
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("UPDATE gateway.api_keys SET expire_time = 'infinity' WHERE id = $1::uuid",
                           created.api_key.id)
    finally:
        await conn.close()
    listed = {k.id: k for k in await _all_keys(keys, admin)}
    assert listed[created.api_key.id].state == gpb.API_KEY_STATE_ACTIVE
    expiring = await keys.ListApiKeys(kapi.ListApiKeysRequest(state=gpb.API_KEY_STATE_ACTIVE), metadata=bearer(admin))
    assert created.api_key.id in [k.id for k in expiring.api_keys]
    sessions = sgrpc.SessionServiceStub(gw_channel)
    await sessions.ListSessions(sapi.ListSessionsRequest(), metadata=bearer(secret))
    revoked = await keys.RevokeApiKey(kapi.RevokeApiKeyRequest(api_key_id=created.api_key.id), metadata=bearer(admin))
    assert revoked.state == gpb.API_KEY_STATE_REVOKED
    reason, _ = await expect_error(sessions.ListSessions(sapi.ListSessionsRequest(), metadata=bearer(secret)),
                                   grpc.StatusCode.UNAUTHENTICATED)
    assert reason == "API_KEY_REVOKED"


@pytest.mark.parametrize("method", ["CreateApiKey", "ListApiKeys", "GetApiKey", "RevokeApiKey", "RotateApiKey"])
@pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"\x0a\xff\x01", b"\x12\x05ab"])
async def test_malformed_request_bytes_are_invalid_argument_without_internals(gw_channel, make_key, method, garbage):
    admin = await make_key("malformed-keys", ["admin"])
    call = gw_channel.unary_unary(f"/parley.gateway.v1.ApiKeyService/{method}")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(garbage, metadata=bearer(admin))
    code, reason, _ = rich_error(caught.value)
    assert (code, reason) == (INVALID, "REQUEST_MALFORMED")
    details = caught.value.details()
    assert "Error" not in details and "Exception" not in details and "Traceback" not in details


async def test_last_used_bookkeeping_forgets_keys_not_used_lately(gateway):
    """One entry per key ever used would grow without bound on a long-running replica."""
    import asyncio
    import uuid

    from services.gateway.apikeys import ApiKeys, KeyPolicy
    from services.gateway.models import RateLimits

    keys = ApiKeys(gateway.app.db, KeyPolicy(default_limits=RateLimits(), last_used_flush_seconds=0.05,
                                             last_used_resolution_seconds=0.2))
    keys.start()
    try:
        for _ in range(1000):
            keys.note_use(uuid.uuid4())
        assert keys.tracked_uses() == 1000
        for _ in range(200):
            if keys.tracked_uses() == 0:
                break
            await asyncio.sleep(0.05)
        assert keys.tracked_uses() == 0
        # A key used again is remembered again.
        again = uuid.uuid4()
        keys.note_use(again)
        assert keys.tracked_uses() == 1
    finally:
        await keys.aclose()
