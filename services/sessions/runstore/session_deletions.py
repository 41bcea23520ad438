"""Session deletions as they commit, for the run engine (RunStoreService.WatchSessionDeletions).

A trigger on the sessions table NOTIFYs `parley_session_deletions` in the deleting transaction
(migration 010) with the session's id and owner. Each watch stream LISTENs on a connection of
its own for as long as it is open; the engine keeps one stream per replica, so that is a
handful of connections. Live only: if the connection is lost, the stream ends UNAVAILABLE and
the engine reconnects; deletions in between are not replayed (their sandboxes fall to the
sandbox's idle timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import asyncpg

from services.runtime import errors
from services.runtime.db import UNAVAILABLE_ERRORS, database_unavailable
from services.sessions.runstore.models import ENGINE_SCOPE

log = logging.getLogger("parley.sessions.runstore.session_deletions")

CHANNEL = "parley_session_deletions"


@dataclass(frozen=True)
class SessionDeletion:
    session_id: str
    user_id: str


# What a stream yields first, once it is listening: nothing deleted yet.
LISTENING = SessionDeletion(session_id="", user_id="")


class SessionDeletions:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def watch(self, scopes: Iterable[str]) -> AsyncIterator[SessionDeletion]:
        if ENGINE_SCOPE not in set(scopes):
            raise errors.PermissionDenied("only the run engine may watch session deletions",
                                          reason="ENGINE_SCOPE_REQUIRED")
        queue: asyncio.Queue[SessionDeletion | None] = asyncio.Queue()

        def on_notify(_conn, _pid, _channel, payload: str) -> None:
            try:
                body = json.loads(payload)
                queue.put_nowait(SessionDeletion(session_id=str(body["session_id"]), user_id=str(body["user_id"])))
            except (ValueError, KeyError, TypeError):
                log.warning("ignored a malformed session deletion notification")

        try:
            conn = await self._pool.acquire()
        except UNAVAILABLE_ERRORS:  # a database restarting: the engine watches again
            raise database_unavailable() from None
        conn.add_termination_listener(lambda _c: queue.put_nowait(None))
        try:
            await conn.add_listener(CHANNEL, on_notify)
            yield LISTENING
            while True:
                deletion = await queue.get()
                if deletion is None:
                    raise errors.Unavailable("the session deletion listener lost its database connection",
                                             reason="LISTENER_LOST")
                yield deletion
        finally:
            with contextlib.suppress(Exception):
                await conn.remove_listener(CHANNEL, on_notify)
            with contextlib.suppress(Exception):
                await self._pool.release(conn)
