"""Tells the other gateway replicas when a key changes, through Redis pub/sub, so that a
revocation or rotation takes effect everywhere at once instead of after their key caches
expire. Without Redis there is one replica, and nothing to tell."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

log = logging.getLogger("parley.gateway.key_events")


class RedisKeyEvents:
    def __init__(self, url: str, channel: str = "parley:gateway:api-keys") -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url, socket_connect_timeout=2.0)
        self._channel = channel
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        # Replicas ignore their own announcements: they have already forgotten the key.
        self._origin = uuid.uuid4().hex

    async def publish(self, key_id: uuid.UUID) -> None:
        try:
            await self._redis.publish(self._channel, f"{self._origin} {key_id}")
        except Exception:  # noqa: BLE001 - other replicas still expire their caches
            log.warning("could not announce a change of API key %s", key_id)

    def start(self, forget: Callable[[uuid.UUID | None], None]) -> None:
        self._task = asyncio.create_task(self._listen(forget))

    async def wait_ready(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _listen(self, forget: Callable[[uuid.UUID | None], None]) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self._channel)
                forget(None)  # anything may have changed while we were not listening
                self._ready.set()
                async for message in pubsub.listen():
                    origin, _, key_id = message["data"].decode().partition(" ")
                    if origin != self._origin:
                        try:
                            forget(uuid.UUID(key_id))
                        except ValueError:
                            continue
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - reconnect after a Redis hiccup
                self._ready.clear()
                log.warning("API key change announcements interrupted; reconnecting")
                await asyncio.sleep(1.0)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self._redis.aclose()
