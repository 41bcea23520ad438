"""The test run's own Redis answers, on a port nobody fixed."""

from __future__ import annotations

import redis.asyncio as redis


async def test_the_test_redis_answers_and_keeps_values(redis_url):
    client = redis.from_url(redis_url)
    try:
        assert await client.ping()
        await client.set("parley:test:fixture", "yes", ex=60)
        assert await client.get("parley:test:fixture") == b"yes"
    finally:
        await client.aclose()
