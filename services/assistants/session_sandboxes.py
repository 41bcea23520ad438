"""A sandbox is deleted with its session.

Sessions calls nothing but PostgreSQL, so the engine, which already calls the sandbox, does
it: every replica follows RunStoreService.WatchSessionDeletions (a NOTIFY sent by the
deleting transaction) and answers each deletion with SandboxService.DeleteSandbox for that
session, as the session's user. Every replica hears every deletion, which suits a sandbox
service per engine host: each deletes the sandbox its own sandbox service holds, and the
others hear NOT_FOUND, which is expected. A lost stream is reopened with backoff; deletions
made while it was down are left to the sandbox's idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from parley.runstore.v1 import runstore_service_pb2 as rs
from parley.runstore.v1 import runstore_service_pb2_grpc as rsgrpc
from parley.sandbox.v1 import sandbox_service_pb2, sandbox_service_pb2_grpc
from services.assistants.clients import _channel
from services.assistants.identity import MintedIdentities

log = logging.getLogger("parley.assistants.session_sandboxes")

DELETE_TIMEOUT_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 30.0


class SessionSandboxes:
    def __init__(self, sessions_target: str, sandbox_target: str, identities: MintedIdentities, *,
                 min_backoff_seconds: float = 0.5) -> None:
        self._store_channel = _channel(sessions_target)
        self._store = rsgrpc.RunStoreServiceStub(self._store_channel)
        self._sandbox_channel = _channel(sandbox_target)
        self._sandbox = sandbox_service_pb2_grpc.SandboxServiceStub(self._sandbox_channel)
        self._identities = identities
        self._min_backoff = min_backoff_seconds
        self._task: asyncio.Task | None = None
        # Set while a stream is listening (tests wait for it before deleting a session).
        self.listening = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow_forever(), name="session-sandbox-deletions")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._store_channel.close()
        await self._sandbox_channel.close()

    async def _follow_forever(self) -> None:
        backoff = self._min_backoff
        while True:
            call = self._store.WatchSessionDeletions(rs.WatchSessionDeletionsRequest(),
                                                     metadata=self._identities.engine())
            try:
                async for deletion in call:
                    if not deletion.session_id:
                        self.listening.set()
                        backoff = self._min_backoff
                        continue
                    await self._delete(deletion.user_id, deletion.session_id)
            except asyncio.CancelledError:
                call.cancel()
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning("session deletion stream ended (%s); reopening in %.1fs", exc.code().name, backoff)
            finally:
                self.listening.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _delete(self, user_id: str, session_id: str) -> None:
        try:
            await self._sandbox.DeleteSandbox(
                sandbox_service_pb2.DeleteSandboxRequest(session_id=session_id),
                metadata=self._identities.for_user(user_id).metadata(("sandbox",)), timeout=DELETE_TIMEOUT_SECONDS)
            log.info("deleted the sandbox of a deleted session")
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # no sandbox here: the usual case
                log.warning("could not delete a deleted session's sandbox (%s); its idle timeout will",
                            exc.code().name)
