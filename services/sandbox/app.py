"""Wiring for the sandbox service: settings, the walls this machine offers, the sandboxes
and their reaper, the servicer, and health that says when executions are refused."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2

from parley.sandbox.v1 import sandbox_service_pb2, sandbox_service_pb2_grpc
from services.runtime.audit import AuditLog, Kind
from services.runtime.user_data import Removed
from services.sandbox import cgroups, walls
from services.sandbox.sandboxes import Sandboxes
from services.sandbox.servicer import SandboxServicer
from services.sandbox.settings import SandboxSettings

log = logging.getLogger("parley.sandbox")

SERVICE_NAME = sandbox_service_pb2.DESCRIPTOR.services_by_name["SandboxService"].full_name


class SandboxApp:
    service_names = (SERVICE_NAME,)

    def __init__(self, sandboxes: Sandboxes) -> None:
        self.sandboxes = sandboxes
        # No database: events are log lines (the gateway records the deletion as a whole).
        self.audit_log = AuditLog("sandbox")

    def register(self, server: grpc.aio.Server) -> None:
        sandbox_service_pb2_grpc.add_SandboxServiceServicer_to_server(SandboxServicer(self.sandboxes), server)

    async def on_health(self, health) -> None:
        """The process is up either way (`make run` works anywhere); SandboxService itself is
        NOT_SERVING while executions would be refused."""
        if not self.sandboxes.walls.can_execute:
            await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def delete_user_data(self, user_id: str) -> list[Removed]:
        deleted = await self.sandboxes.delete_for_user(user_id)
        self.audit_log.record(Kind.USER_DATA_DELETED, subject=user_id, resource=user_id,
                              details={"sandboxes": deleted})
        return [Removed("sandbox", {"sandboxes": deleted})]

    async def aclose(self) -> None:
        await self.sandboxes.aclose()


async def build_app(settings: SandboxSettings | None = None) -> SandboxApp:
    settings = settings or SandboxSettings.from_env()
    cgroups_ok = cgroups.available(settings.cgroup_root)
    sandbox_walls = walls.probe(settings.bwrap, settings.insecure, cgroups_ok, settings.runtime_dir)
    if not sandbox_walls.isolated and sandbox_walls.insecure:
        log.warning("!!! PARLEY_SANDBOX_INSECURE=1: code interpreter code runs WITHOUT isolation (no bubblewrap, "
                    "no seccomp): it can read and write what this service can. Development only. !!!")
    if not sandbox_walls.can_execute:
        log.error("code execution is refused: %s", sandbox_walls.refusal())
    for problem in sandbox_walls.problems:
        log.warning("sandbox: %s", problem)
    sandboxes = Sandboxes(settings, sandbox_walls)
    sandboxes.start()
    log.info("sandbox: %s, %s, %s", "bubblewrap + seccomp" if sandbox_walls.isolated else "NO isolation",
             "cgroup memory/pids limits" if cgroups_ok else "rlimits only",
             "one uid per sandbox" if sandbox_walls.per_sandbox_uid else "the service's uid")
    return SandboxApp(sandboxes)
