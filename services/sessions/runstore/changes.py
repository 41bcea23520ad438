"""The live tail's wake-up: one LISTEN connection per sessions process on the
`parley_run_changes` channel (notified by a trigger whenever a run's status or last_sequence
changes, delivered when that transaction commits), fanned out to the watchers of each run in
this process. Watchers then read what changed as their own user; the notification carries
only the run id.

No polling: a watcher sleeps until its run changes. If the listening connection is lost,
every watcher is woken once it is back, so a commit made meanwhile is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator

import asyncpg

log = logging.getLogger("parley.sessions.runstore.changes")

CHANNEL = "parley_run_changes"


class RunChanges:
    def __init__(self, pool: asyncpg.Pool, *, reconnect_seconds: float = 1.0) -> None:
        self._pool = pool
        self._reconnect = reconnect_seconds
        self._watchers: dict[uuid.UUID, set[asyncio.Event]] = {}
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()

    async def _listen_forever(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._pool.acquire()
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self._ready.set()
                self._wake_all()  # anything committed while we were not listening
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect below, watchers stay blocked meanwhile
                log.warning("run change listener lost its connection (%s); reconnecting", type(exc).__name__)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.remove_listener(CHANNEL, self._on_notify)
                    with contextlib.suppress(Exception):
                        await self._pool.release(conn)
            self._ready.clear()
            await asyncio.sleep(self._reconnect)

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        try:
            run_id = uuid.UUID(payload)
        except ValueError:
            return
        for event in self._watchers.get(run_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._watchers.values():
            for event in events:
                event.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="run-changes-listener")
        await self._ready.wait()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @contextlib.contextmanager
    def subscribe(self, run_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set whenever the run changes; subscribe before reading, so nothing committed
        in between is missed."""
        event = asyncio.Event()
        self._watchers.setdefault(run_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(run_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[run_id]
