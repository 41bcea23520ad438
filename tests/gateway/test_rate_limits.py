"""Rate limits: requests per minute per key and per user, concurrent streams and tokens per
minute, in memory and in the running Redis, shared by two gateway processes."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from parley.gateway.v1 import gateway_service_pb2 as kapi
from parley.gateway.v1 import gateway_service_pb2_grpc as kgrpc
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from services.gateway.models import RateLimits
from services.gateway.ratelimit import MemoryLimiter, RedisLimiter, Subject
from services.runtime import errors
from services.runtime.status import error_details, from_rpc_error
from tests.conftest import redis_url_for_tests
from tests.gateway.conftest import bearer, free_port, gateway_env, spawn, stop, wait_serving

# PARLEY_TEST_REDIS_URL, or the test run's own redis-server (tests/conftest.py).
REDIS_URL = redis_url_for_tests()


async def call_many(channel, secret: str, count: int) -> tuple[int, list[grpc.aio.AioRpcError]]:
    stub = sgrpc.SessionServiceStub(channel)
    ok, failures = 0, []
    for _ in range(count):
        try:
            await stub.ListSessions(sapi.ListSessionsRequest(page_size=1), metadata=bearer(secret))
            ok += 1
        except grpc.aio.AioRpcError as exc:
            failures.append(exc)
    return ok, failures


def assert_rate_limited(failure: grpc.aio.AioRpcError) -> float:
    assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, failure.details()
    details = error_details(from_rpc_error(failure))
    assert details["ErrorInfo"].reason in ("RATE_LIMITED", "TOO_MANY_STREAMS")
    delay = details["RetryInfo"].retry_delay
    seconds = delay.seconds + delay.nanos / 1e9
    assert 0 < seconds <= 120
    return seconds


async def test_requests_per_minute_per_key_in_memory(gw_channel, make_key):
    secret = await make_key("rl-user", ["sessions"], limits=RateLimits(requests_per_minute=5))
    ok, failures = await call_many(gw_channel, secret, 8)
    assert ok == 5 and len(failures) == 3
    assert_rate_limited(failures[0])
    # Another key of the same user has its own budget.
    other = await make_key("rl-user", ["sessions"], limits=RateLimits(requests_per_minute=5))
    assert (await call_many(gw_channel, other, 1))[0] == 1


async def test_requests_per_minute_per_user_across_keys():
    limiter = MemoryLimiter()
    user = Subject("user:u1", RateLimits(requests_per_minute=3))
    for i in range(3):
        await limiter.admit([Subject(f"key:{i}", RateLimits(requests_per_minute=100)), user], stream=False)
    with pytest.raises(errors.ResourceExhausted) as caught:
        await limiter.admit([Subject("key:9", RateLimits(requests_per_minute=100)), user], stream=False)
    assert caught.value.retry_after > 0 and caught.value.metadata["subject"] == "user"


@pytest.mark.parametrize("make_limiter", [MemoryLimiter, lambda: RedisLimiter(REDIS_URL, f"t:{uuid.uuid4().hex}:")],
                         ids=["memory", "redis"])
async def test_concurrent_streams_and_tokens(make_limiter):
    limiter = make_limiter()
    try:
        subject = Subject("key:s", RateLimits(concurrent_streams=2, tokens_per_minute=100))
        first = await limiter.admit([subject], stream=True)
        await limiter.admit([subject], stream=True)
        with pytest.raises(errors.ResourceExhausted) as caught:
            await limiter.admit([subject], stream=True)
        assert caught.value.reason == "TOO_MANY_STREAMS"
        await limiter.release(first)
        await limiter.release(first)  # releasing twice frees one slot only
        third = await limiter.admit([subject], stream=True)
        with pytest.raises(errors.ResourceExhausted):
            await limiter.admit([subject], stream=True)
        await limiter.release(third)
        # Tokens reported by finished calls count against the next ones.
        await limiter.record_tokens([subject], 150)
        with pytest.raises(errors.ResourceExhausted) as caught:
            await limiter.admit([subject], stream=False)
        assert caught.value.metadata["limit"] == "tokens_per_minute" and caught.value.retry_after > 0
    finally:
        await limiter.aclose()


async def test_a_refused_subject_consumes_nothing_from_the_others():
    limiter = RedisLimiter(REDIS_URL, f"t:{uuid.uuid4().hex}:")
    try:
        key = Subject("key:a", RateLimits(requests_per_minute=2))
        blocked_user = Subject("user:b", RateLimits(requests_per_minute=1))
        await limiter.admit([Subject("key:z", RateLimits(requests_per_minute=5)), blocked_user], stream=False)
        with pytest.raises(errors.ResourceExhausted):
            await limiter.admit([key, blocked_user], stream=False)
        await limiter.admit([key], stream=False)
        await limiter.admit([key], stream=False)  # the refused call did not count against key:a
    finally:
        await limiter.aclose()


async def test_two_gateway_processes_share_one_limit_in_redis(admin_url, key_files, sessions_backend, make_key,
                                                               log_dir):
    secret = await make_key("rl-shared", ["sessions"], limits=RateLimits(requests_per_minute=10))
    prefix = f"parley:test:{uuid.uuid4().hex}:"
    ports = [free_port(), free_port()]
    targets = {"sessions": f"127.0.0.1:{sessions_backend.port}"}
    processes = [
        spawn("services.gateway", gateway_env(admin_url, key_files, port, targets, PARLEY_REDIS_URL=REDIS_URL,
                                              PARLEY_GATEWAY_REDIS_PREFIX=prefix,
                                              PARLEY_GATEWAY_KEY_CACHE_SECONDS=600), log_dir, f"gateway-redis-{i}")
        for i, port in enumerate(ports)
    ]
    try:
        await asyncio.gather(*(wait_serving(port, p) for port, p in zip(ports, processes)))
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
        try:
            first = await call_many(channels[0], secret, 6)
            second = await call_many(channels[1], secret, 6)
            # A revocation through one replica reaches the other at once (Redis pub/sub),
            # not only when its key cache expires.
            other = await make_key("rl-shared", ["sessions"])
            admin = await make_key("rl-shared", ["admin"])
            assert (await call_many(channels[1], other, 1))[0] == 1  # replica 2 has it cached
            keys = kgrpc.ApiKeyServiceStub(channels[0])
            listed = await keys.ListApiKeys(kapi.ListApiKeysRequest(), metadata=bearer(admin))
            key_id = next(k.id for k in listed.api_keys if other.startswith(k.prefix))
            await keys.RevokeApiKey(kapi.RevokeApiKeyRequest(api_key_id=key_id), metadata=bearer(admin))
            for _ in range(100):
                ok, failures = await call_many(channels[1], other, 1)
                if failures:
                    break
                await asyncio.sleep(0.05)
            assert failures and failures[0].code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            for channel in channels:
                await channel.close()
    finally:
        for process in processes:
            stop(process)
    assert first[0] == 6
    assert second[0] == 4 and len(second[1]) == 2  # the second replica saw the first one's calls
    assert_rate_limited(second[1][0])


async def test_a_stream_lease_that_lapsed_counts_again_after_the_next_renewal():
    """A renewal that could not reach Redis lets a lease lapse; the next one must restore it,
    or the stream would stop counting against the limit while it is still open."""
    import redis.asyncio as redis

    prefix = f"t:{uuid.uuid4().hex}:"
    limiter = RedisLimiter(REDIS_URL, prefix)
    direct = redis.from_url(REDIS_URL)
    try:
        subject = Subject("key:lapse", RateLimits(concurrent_streams=1))
        open_stream = await limiter.admit([subject], stream=True)
        # What the lease's expiry does when renewals fail for 90 s.
        assert await direct.zrem(f"{prefix}key:lapse:streams", open_stream.stream_id) == 1
        await limiter.renew()
        with pytest.raises(errors.ResourceExhausted) as caught:
            await limiter.admit([subject], stream=True)
        assert caught.value.reason == "TOO_MANY_STREAMS"
        await limiter.release(open_stream)
        await limiter.renew()  # a renewal after the release does not bring it back
        await limiter.release(await limiter.admit([subject], stream=True))
    finally:
        await direct.aclose()
        await limiter.aclose()


async def test_an_unreachable_redis_limits_in_the_replica_alone_until_it_answers_again():
    """Redis down: calls are still answered and still limited (by this replica), not refused."""
    from tests.processes import free_port as unused_port

    now = [0.0]
    limiter = RedisLimiter(f"redis://127.0.0.1:{unused_port()}/0", f"t:{uuid.uuid4().hex}:", clock=lambda: now[0])
    try:
        key = Subject("key:down", RateLimits(requests_per_minute=3, concurrent_streams=1))
        admitted = [await limiter.admit([key], stream=False) for _ in range(3)]
        assert limiter.redis_down and all(a.local for a in admitted)
        with pytest.raises(errors.ResourceExhausted):
            await limiter.admit([key], stream=False)
        stream = await limiter.admit([Subject("key:streams", RateLimits(concurrent_streams=1))], stream=True)
        with pytest.raises(errors.ResourceExhausted):
            await limiter.admit([Subject("key:streams", RateLimits(concurrent_streams=1))], stream=True)
        await limiter.release(stream)
        await limiter.release(await limiter.admit([Subject("key:streams", RateLimits(concurrent_streams=1))],
                                                  stream=True))
        # Redis is tried again once the retry interval has passed (here it fails again).
        now[0] += 2.0
        assert not limiter.redis_down
        await limiter.admit([Subject("key:other", RateLimits(requests_per_minute=3))], stream=False)
        assert limiter.redis_down
    finally:
        await limiter.aclose()
