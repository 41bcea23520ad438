"""Wiring for the sessions service: settings, migrations, the pool, the servicers (sessions and
the run store) and the retention job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc

from parley.runstore.v1 import runstore_service_pb2, runstore_service_pb2_grpc
from parley.sessions.v1 import sessions_service_pb2, sessions_service_pb2_grpc
from services.runtime.audit import AuditLog
from services.runtime.config import env_float, env_int, env_str
from services.runtime.db import DEFAULT_STATEMENT_TIMEOUT_SECONDS, Database, open_service_database, statement_timeout_from_env
from services.runtime.metrics import log_quietly_when_ok
from services.sessions.domain import Limits, Sessions
from services.sessions.runstore import RunStore
from services.sessions.runstore.servicer import RunStoreServicer
from services.sessions.runstore.session_deletions import SessionDeletions
from services.sessions.servicer import SessionServicer
from services.sessions.user_data import delete_user_data

log = logging.getLogger("parley.sessions")

SCHEMA = "sessions"
ROLE = "parley_sessions"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = sessions_service_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name
# Internal storage for the assistants run engine, served next to the sessions its runs live in.
RUN_STORE_SERVICE_NAME = runstore_service_pb2.DESCRIPTOR.services_by_name["RunStoreService"].full_name


@dataclass(frozen=True)
class SessionsSettings:
    # Admin URL: runs migrations; the service itself connects as ROLE.
    admin_url: str | None
    # Overrides the service-role URL derived from the admin URL.
    database_url: str | None
    role_password: str | None
    pool_size: int
    max_message_bytes: int
    # Sessions idle longer than this are deleted; 0 keeps them forever.
    retention_days: float
    retention_interval_seconds: float
    # Longest a statement may run (PostgreSQL statement_timeout); 0: no limit.
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS

    @classmethod
    def from_env(cls) -> SessionsSettings:
        return cls(
            admin_url=env_str("PARLEY_DATABASE_URL"),
            database_url=env_str("PARLEY_SESSIONS_DATABASE_URL"),
            role_password=env_str("PARLEY_SESSIONS_DATABASE_PASSWORD"),
            pool_size=env_int("PARLEY_SESSIONS_POOL_SIZE", 20, minimum=2),
            max_message_bytes=env_int("PARLEY_SESSIONS_MAX_MESSAGE_BYTES", 1024 * 1024, minimum=1),
            retention_days=env_float("PARLEY_SESSIONS_RETENTION_DAYS", 0.0, minimum=0),
            retention_interval_seconds=env_float("PARLEY_SESSIONS_RETENTION_INTERVAL_SECONDS", 3600.0, minimum=1),
            statement_timeout=statement_timeout_from_env("sessions"),
        )


class SessionsApp:
    service_names = (SERVICE_NAME, RUN_STORE_SERVICE_NAME)

    def __init__(self, db: Database, sessions: Sessions, settings: SessionsSettings, audit_log: AuditLog) -> None:
        self.db = db
        self.sessions = sessions
        self.audit_log = audit_log
        self.run_store = RunStore(db, audit=audit_log)
        self._retention: asyncio.Task | None = None
        if settings.retention_days > 0:
            self._retention = asyncio.create_task(
                self._purge_forever(timedelta(days=settings.retention_days), settings.retention_interval_seconds)
            )

    def register(self, server: grpc.aio.Server) -> None:
        sessions_service_pb2_grpc.add_SessionServiceServicer_to_server(SessionServicer(self.sessions), server)
        runstore_service_pb2_grpc.add_RunStoreServiceServicer_to_server(RunStoreServicer(
            self.run_store, SessionDeletions(self.db.pool)), server)
        # Every engine replica scans the queue and renews its leases about once a second.
        log_quietly_when_ok(f"/{RUN_STORE_SERVICE_NAME}/ClaimRuns", f"/{RUN_STORE_SERVICE_NAME}/RenewRunLeases")

    async def _purge_forever(self, idle_for: timedelta, interval: float) -> None:
        while True:
            try:
                purged = await self.sessions.purge_idle_sessions(idle_for)
                if purged:
                    log.info("retention purged %d idle sessions", purged)
            except Exception:  # noqa: BLE001 - a failed round is retried at the next interval
                log.exception("retention purge failed")
            await asyncio.sleep(interval)

    async def delete_user_data(self, user_id: str):
        return await delete_user_data(self.db, self.audit_log, user_id)

    async def aclose(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
        await self.run_store.aclose()
        await self.db.close()


async def build_app(settings: SessionsSettings | None = None) -> SessionsApp:
    settings = settings or SessionsSettings.from_env()
    db = await open_service_database(
        schema=SCHEMA, role=ROLE, migrations_dir=MIGRATIONS, admin_url=settings.admin_url,
        database_url=settings.database_url, role_password=settings.role_password, pool_size=settings.pool_size,
        statement_timeout=settings.statement_timeout, audit=True,
    )
    audit_log = AuditLog("sessions", db)
    sessions = Sessions(db, Limits(max_message_bytes=settings.max_message_bytes), audit=audit_log)
    return SessionsApp(db, sessions, settings, audit_log)
