"""Wiring for the assistants service (the run engine): settings, the identity minter, the
clients of sessions, llm, files and sandbox, the engine and its servicer."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass

import grpc

from parley.assistants.v1 import assistants_service_pb2, assistants_service_pb2_grpc
from services.assistants.assistants import Assistants
from services.assistants.clients import FilesClient, LLMClient, RunStoreClient, SessionsClient
from services.assistants.identity import MintedIdentities
from services.assistants.session_sandboxes import SessionSandboxes
from services.assistants.runs import Runs
from services.assistants.servicer import AssistantServicer
from services.assistants.settings import EngineSettings
from services.assistants.tools import load_executors
from services.assistants.tools.base import StoredFile, ToolDeps
from services.assistants.user_data import UserData
from services.runtime.audit import AuditLog
from services.runtime.config import ConfigError, env_float, env_int, env_secret, env_str
from services.runtime.identity import IdentityMinter

log = logging.getLogger("parley.assistants")

SERVICE_NAME = assistants_service_pb2.DESCRIPTOR.services_by_name["AssistantService"].full_name


@dataclass(frozen=True)
class AssistantsSettings:
    sessions_target: str
    llm_target: str
    files_target: str
    sandbox_target: str
    # The gateway's Ed25519 private key: runs outlive their caller's identity, so the engine
    # mints short-lived identities of the run's user for every call it makes.
    identity_private_key: bytes
    identity_ttl_seconds: float
    # This process among the engine replicas (lease owner); unique per process.
    replica_id: str
    # A replica that stops renewing its leases loses its runs after this long: they end
    # FAILED and their sessions go on.
    lease_seconds: float
    # How often the queue is scanned for claimable runs (new replicas' runs, lapsed leases,
    # expired actions); runs created on this replica are claimed at once.
    claim_interval_seconds: float
    # How long a run waits in REQUIRES_ACTION for SubmitToolOutputs before it EXPIRES.
    action_timeout_seconds: float
    # Event deltas are written to the run's log at most this often (a batch per interval).
    event_flush_seconds: float
    max_concurrent_runs: int
    # Tokens of file_search results that go into the prompt per search.
    file_search_token_budget: int

    @classmethod
    def from_env(cls) -> AssistantsSettings:
        private_key = env_secret("PARLEY_IDENTITY_PRIVATE_KEY")
        if not private_key:
            raise ConfigError(
                "PARLEY_IDENTITY_PRIVATE_KEY_FILE (or PARLEY_IDENTITY_PRIVATE_KEY) must hold the identity signing key: "
                "runs call sessions, llm and files as their user after the caller's call has ended "
                "(`make run` provides it)"
            )
        return cls(
            sessions_target=env_str("PARLEY_SESSIONS_TARGET", "127.0.0.1:50053"),
            llm_target=env_str("PARLEY_LLM_TARGET", "127.0.0.1:50052"),
            files_target=env_str("PARLEY_FILES_TARGET", "127.0.0.1:50054"),
            sandbox_target=env_str("PARLEY_SANDBOX_TARGET", "127.0.0.1:50055"),
            identity_private_key=private_key,
            identity_ttl_seconds=env_float("PARLEY_ASSISTANTS_IDENTITY_TTL_SECONDS", 60.0, minimum=5.0),
            replica_id=env_str("PARLEY_ASSISTANTS_REPLICA_ID")
            or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            lease_seconds=env_float("PARLEY_ASSISTANTS_LEASE_SECONDS", 30.0, minimum=1.0),
            claim_interval_seconds=env_float("PARLEY_ASSISTANTS_CLAIM_INTERVAL_SECONDS", 1.0, minimum=0.05),
            action_timeout_seconds=env_float("PARLEY_ASSISTANTS_ACTION_TIMEOUT_SECONDS", 600.0, minimum=1.0),
            event_flush_seconds=env_float("PARLEY_ASSISTANTS_EVENT_FLUSH_SECONDS", 0.05, minimum=0.0),
            max_concurrent_runs=env_int("PARLEY_ASSISTANTS_MAX_CONCURRENT_RUNS", 64, minimum=1),
            file_search_token_budget=env_int("PARLEY_ASSISTANTS_FILE_SEARCH_TOKEN_BUDGET", 4000, minimum=100),
        )


class AssistantsApp:
    service_names = (SERVICE_NAME,)

    def __init__(self, settings: AssistantsSettings) -> None:
        self.settings = settings
        try:
            minter = IdentityMinter(settings.identity_private_key, ttl_seconds=settings.identity_ttl_seconds)
        except ValueError as exc:
            raise ConfigError(f"PARLEY_IDENTITY_PRIVATE_KEY: {exc}") from None
        self.identities = MintedIdentities(minter, settings.identity_ttl_seconds)
        self.store = RunStoreClient(settings.sessions_target, self.identities)
        self.sessions = SessionsClient(settings.sessions_target)
        self.llm = LLMClient(settings.llm_target)
        self.files = FilesClient(settings.files_target)
        deps = ToolDeps(identities=self.identities, files=FilesAsTools(self.files), components={
            "search": self.files.search, "file_search_token_budget": settings.file_search_token_budget,
            "sandbox_target": settings.sandbox_target,
        })
        self.executors = load_executors(deps)
        self.runs = Runs(self.store, self.sessions, self.llm, self.files, self.identities, self.executors,
                         EngineSettings(
                             replica_id=settings.replica_id, lease_seconds=settings.lease_seconds,
                             claim_interval_seconds=settings.claim_interval_seconds,
                             action_timeout_seconds=settings.action_timeout_seconds,
                             event_flush_seconds=settings.event_flush_seconds,
                             max_concurrent_runs=settings.max_concurrent_runs,
                             file_search_token_budget=settings.file_search_token_budget))
        self.assistants = Assistants(self.store, self.llm, self.files, self.executors)
        # With the code interpreter, a session's sandbox goes when the session does.
        self.session_sandboxes = SessionSandboxes(settings.sessions_target, settings.sandbox_target, self.identities) \
            if "code_interpreter" in self.executors else None
        # No database: audit events are log lines (the gateway records a deletion as a whole).
        self.audit_log = AuditLog("assistants")
        self._user_data = UserData(self.runs, self.audit_log, settings.sandbox_target
                                   if "code_interpreter" in self.executors else None)

    def register(self, server: grpc.aio.Server) -> None:
        assistants_service_pb2_grpc.add_AssistantServiceServicer_to_server(
            AssistantServicer(self.assistants, self.runs, self.identities), server)
        self.runs.start()
        if self.session_sandboxes is not None:
            self.session_sandboxes.start()

    async def delete_user_data(self, user_id: str):
        return await self._user_data.delete(user_id)

    async def aclose(self) -> None:
        await self._user_data.aclose()
        if self.session_sandboxes is not None:
            await self.session_sandboxes.aclose()
        await self.runs.aclose()
        for executor in self.executors.values():
            await executor.aclose()
        for client in (self.store, self.sessions, self.llm, self.files):
            await client.close()


class FilesAsTools:
    """The files client as tools see it (`tools.base.FilesPort`)."""

    def __init__(self, files: FilesClient) -> None:
        self._files = files

    async def read(self, identity, file_id: str) -> StoredFile:
        filename, data = await self._files.download(identity, file_id)
        return StoredFile(file_id=file_id, filename=filename, data=data)

    async def write(self, identity, filename: str, data: bytes, *, media_type: str = "") -> str:
        return await self._files.upload(identity, filename, data, media_type)


async def build_app(settings: AssistantsSettings | None = None) -> AssistantsApp:
    settings = settings or AssistantsSettings.from_env()
    app = AssistantsApp(settings)
    log.info("tool executors: %s", ", ".join(sorted(app.executors)) or "none")
    return app
