"""The engine's part of deleting a user's data (the gateway's AdminService.DeleteUserData):
the user's runs executing on this replica stop at once, without writing anything more (the
sessions service deletes what they stored, next), and the sandbox service deletes every
sandbox of the user. The engine keeps no data of its own; its audit events are log lines.

Runs of the user on other replicas stop when their next write finds the run gone."""

from __future__ import annotations

import logging

import grpc

from parley.admin.v1 import audit_pb2
from parley.admin.v1 import user_data_service_pb2_grpc
from services.assistants.runs import Runs
from services.runtime import errors
from services.runtime.audit import AuditLog, Kind
from services.runtime.interceptors import forwarded_identity
from services.runtime.user_data import Removed

log = logging.getLogger("parley.assistants.user_data")

SANDBOX_TIMEOUT_SECONDS = 30.0


class UserData:
    def __init__(self, runs: Runs, audit: AuditLog, sandbox_target: str | None) -> None:
        self._runs = runs
        self._audit = audit
        self._sandbox_target = sandbox_target
        self._channel: grpc.aio.Channel | None = None

    async def delete(self, user_id: str) -> list[Removed]:
        stopped = 0
        for execution in [e for e in self._runs.executions.values() if e.who.user_id == user_id]:
            await execution.abandon()
            stopped += 1
        removed = [Removed("assistants", {"runs_stopped": stopped})]
        if self._sandbox_target:
            removed += await self._delete_sandboxes(user_id)
        self._audit.record(Kind.USER_DATA_DELETED, subject=user_id, resource=user_id,
                           details={f"{r.service}.{k}": v for r in removed for k, v in r.counts.items()})
        return removed

    async def _delete_sandboxes(self, user_id: str) -> list[Removed]:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._sandbox_target)
        stub = user_data_service_pb2_grpc.UserDataServiceStub(self._channel)
        try:
            # As the administrator who asked: the engine relays the gateway's identity.
            reply = await stub.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=user_id),
                                              metadata=forwarded_identity(), timeout=SANDBOX_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            log.warning("deleting a user's sandboxes failed (%s)", exc.code().name)
            raise errors.Unavailable("the sandbox service could not delete the user's sandboxes; try again",
                                     reason="BACKEND_UNAVAILABLE", metadata={"backend": "sandbox"},
                                     retry_after=1.0) from None
        return [Removed(d.service, dict(d.removed), tuple(d.kept)) for d in reply.deletions]

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()
