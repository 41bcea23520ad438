"""Redis stopped and started again under the gateway's rate limits and the llm service's
response cache (both with PARLEY_REDIS_URL), every service left running.

While Redis is down, calls are answered as docs/gateway.md and docs/llm.md say: the gateway
limits in each replica alone (a key over its requests per minute is still refused, with
RESOURCE_EXHAUSTED), the response cache misses; nothing answers INTERNAL, nothing is refused
for want of Redis. When Redis is back (empty: it keeps nothing on disk), both use it again
by themselves: the limit counters and the cached answers are in Redis again.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import redis.asyncio as aioredis

from parley.gateway.v1 import gateway_pb2 as gpb
from parley.gateway.v1 import gateway_service_pb2 as kapi
from parley.gateway.v1 import gateway_service_pb2_grpc as kgrpc
from parley.llm.v1 import llm_pb2 as lpb
from parley.llm.v1 import llm_service_pb2 as lapi
from parley.llm.v1 import llm_service_pb2_grpc as lgrpc
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from tests.faults.conftest import assert_clear
from tests.llm.helpers import collect, user

LIMIT = 12
# Redis is tried again a second after a failure (services/gateway/ratelimit.py); a generous bound.
SHARED_AGAIN_WITHIN = 15.0


async def _keys(url: str, pattern: str) -> list[bytes]:
    client = aioredis.from_url(url)
    try:
        return [key async for key in client.scan_iter(match=pattern)]
    finally:
        await client.aclose()


async def _cached_twice(llm, auth, prompt: str) -> tuple[bool, bool]:
    """(first, second) cache_hit of the same forced-cache Generate made twice."""
    hits = []
    for _ in range(2):
        reply = await llm.Generate(lapi.GenerateRequest(model="local/echo", messages=[user(prompt)],
                                                        cache_policy=lpb.CACHE_POLICY_FORCE), metadata=auth, timeout=10)
        hits.append(reply.cache_hit)
    return hits[0], hits[1]


async def _calls(sessions, auth, count: int) -> tuple[int, list[grpc.aio.AioRpcError]]:
    ok, refused = 0, []
    for _ in range(count):
        try:
            await sessions.ListSessions(sapi.ListSessionsRequest(page_size=1), metadata=auth, timeout=10)
            ok += 1
        except grpc.aio.AioRpcError as error:
            refused.append(error)
    return ok, refused


async def test_redis_stopped_and_started_limits_and_caches_degrade_then_share_again(fault_stack):
    redis = fault_stack.redis
    async with fault_stack.channel() as channel:
        keys, sessions = kgrpc.ApiKeyServiceStub(channel), sgrpc.SessionServiceStub(channel)
        llm = lgrpc.LLMServiceStub(channel)
        created = await keys.CreateApiKey(kapi.CreateApiKeyRequest(
            name="redis fault", scopes=[gpb.SCOPE_SESSIONS, gpb.SCOPE_LLM],
            rate_limits=gpb.RateLimits(requests_per_minute=LIMIT)), metadata=fault_stack.auth, timeout=10)
        auth = (("authorization", f"Bearer {created.secret}"),)

        # Redis up: the key's counter lives in Redis, answers are cached there.
        assert (await _calls(sessions, auth, 2))[0] == 2
        assert await _keys(redis.url, f"parley:rl:key:{created.api_key.id}:*")
        assert await _cached_twice(llm, auth, f"before {uuid.uuid4()}") == (False, True)
        assert await _keys(redis.url, "parley:llm:*")

        await asyncio.to_thread(redis.stop)
        try:
            # Limited by the replica alone: its own count starts at zero, the limit is the key's.
            ok, refused = await _calls(sessions, auth, LIMIT + 3)
            assert ok == LIMIT, [e.details() for e in refused]
            reasons = {assert_clear(e, grpc.StatusCode.RESOURCE_EXHAUSTED) for e in refused}
            assert reasons == {"RATE_LIMITED"}
            # The admin key has no per-key limit: streams and model calls are answered, uncached.
            admin_stream = await collect(llm.StreamGenerate(lapi.StreamGenerateRequest(
                model="local/echo", messages=[user("while Redis is down")]), metadata=fault_stack.auth, timeout=10))
            assert admin_stream[0] == "while Redis is down"
            assert await _cached_twice(llm, fault_stack.auth, f"during {uuid.uuid4()}") == (False, False)
        finally:
            await asyncio.to_thread(redis.start)
        print(f"\n[fault] Redis down: a key limited to {LIMIT}/min had {ok} calls answered and {len(refused)} refused "
              f"RESOURCE_EXHAUSTED (RATE_LIMITED) by the gateway alone; model calls answered, uncached (2 misses)")

        # Back: a fresh key's counters appear in Redis again, and answers are cached there again.
        restarted = time.monotonic()
        fresh = await keys.CreateApiKey(kapi.CreateApiKeyRequest(
            name="redis fault after", scopes=[gpb.SCOPE_SESSIONS, gpb.SCOPE_LLM],
            rate_limits=gpb.RateLimits(requests_per_minute=1000)), metadata=fault_stack.auth, timeout=10)
        fresh_auth = (("authorization", f"Bearer {fresh.secret}"),)
        while True:
            assert (await _calls(sessions, fresh_auth, 1))[0] == 1
            if await _keys(redis.url, f"parley:rl:key:{fresh.api_key.id}:*"):
                break
            assert time.monotonic() - restarted < SHARED_AGAIN_WITHIN, "the gateway never used Redis again"
            await asyncio.sleep(0.2)
        limits_back = time.monotonic() - restarted
        assert await _cached_twice(llm, fresh_auth, f"after {uuid.uuid4()}") == (False, True)
        assert await _keys(redis.url, "parley:llm:*")
        print(f"[fault] Redis back: the gateway's counters were in Redis again {limits_back:.2f} s after it started; "
              f"the response cache stored and served from Redis again (miss, then hit)")

