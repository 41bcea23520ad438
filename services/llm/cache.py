"""The response cache and the embeddings cache: in memory by default, in Redis (shared by
every replica) when `PARLEY_REDIS_URL` is set. A cache failure is a miss, never an error."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol

log = logging.getLogger("parley.llm.cache")


class Cache(Protocol):
    async def get_many(self, keys: list[str]) -> list[bytes | None]: ...

    async def set_many(self, items: dict[str, bytes], ttl: float) -> None: ...

    async def aclose(self) -> None: ...


class MemoryCache:
    """An LRU with expiry, bounded by entry count and by the bytes of its keys and values (a
    single value larger than a tenth of the budget is not kept)."""

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_entries
        self._max_bytes = max_bytes
        self.size_bytes = 0

    @staticmethod
    def _weight(key: str, value: bytes) -> int:
        return len(key) + len(value) + 100  # the entry's own overhead, roughly

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.size_bytes -= self._weight(key, value)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        now = time.monotonic()
        found: list[bytes | None] = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is None or entry[0] < now:
                if entry is not None:
                    self._drop(key)
                found.append(None)
            else:
                self._entries.move_to_end(key)
                found.append(entry[1])
        return found

    async def set_many(self, items: dict[str, bytes], ttl: float) -> None:
        expires = time.monotonic() + ttl
        for key, value in items.items():
            if key in self._entries:
                self._drop(key)
            weight = self._weight(key, value)
            if weight > self._max_bytes // 10:
                continue
            self._entries[key] = (expires, value)
            self.size_bytes += weight
        while len(self._entries) > self._max or self.size_bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    @property
    def count(self) -> int:
        return len(self._entries)

    async def aclose(self) -> None:
        self._entries.clear()
        self.size_bytes = 0


class RedisCache:
    """Keys live under `prefix`; values expire after their TTL."""

    def __init__(self, url: str, prefix: str = "parley:llm:", timeout: float = 0.5) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._prefix = prefix

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            return list(await self._redis.mget([self._prefix + k for k in keys]))
        except Exception as exc:  # noqa: BLE001 - an unreachable cache is a miss
            log.warning("redis cache read failed: %s", type(exc).__name__)
            return [None] * len(keys)

    async def set_many(self, items: dict[str, bytes], ttl: float) -> None:
        if not items:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(self._prefix + key, value, px=max(int(ttl * 1000), 1))
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            log.warning("redis cache write failed: %s", type(exc).__name__)

    async def aclose(self) -> None:
        await self._redis.aclose()


def make_cache(redis_url: str | None, max_entries: int, prefix: str = "parley:llm:", *,
               max_bytes: int = 256 * 1024 * 1024) -> Cache:
    return RedisCache(redis_url, prefix) if redis_url else MemoryCache(max_entries, max_bytes)
