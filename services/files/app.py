"""Wiring for the files service: settings, the pgvector check, migrations, the pool, the
llm client, the servicer and the background processor."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc

from parley.files.v1 import files_service_pb2, files_service_pb2_grpc
from services.files.embeddings import Embedder
from services.files.extract import Limits
from services.files.files import Files, UploadLimits
from services.files.llm_embedder import LLMEmbedder
from services.files.repository import vector_codec
from services.files.servicer import FileServicer
from services.files.storage import BlobStore
from services.files.stores import SearchSettings, VectorStores
from services.files.user_data import delete_user_data
from services.files.worker import Processor, WorkerSettings
from services.runtime.audit import AuditLog
from services.runtime.config import ConfigError, env_int, env_float, env_secret, env_str, state_dir
from services.runtime.db import DEFAULT_STATEMENT_TIMEOUT_SECONDS, Database, open_service_database, statement_timeout_from_env
from services.runtime.identity import IdentityMinter

log = logging.getLogger("parley.files")

SCHEMA = "files"
ROLE = "parley_files"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = files_service_pb2.DESCRIPTOR.services_by_name["FileService"].full_name


@dataclass(frozen=True)
class FilesSettings:
    # Admin URL: runs migrations (and creates the vector extension); the service itself
    # connects as ROLE.
    admin_url: str | None
    # Overrides the service-role URL derived from the admin URL.
    database_url: str | None
    role_password: str | None
    pool_size: int
    storage_dir: Path
    llm_target: str
    # The gateway's Ed25519 private key: background work calls llm as the file's owner.
    identity_private_key: bytes | None
    upload: UploadLimits = field(default_factory=UploadLimits)
    extraction: Limits = field(default_factory=Limits)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    embed_batch_size: int = 64
    # Longest a statement may run (PostgreSQL statement_timeout); 0: no limit.
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS

    @classmethod
    def from_env(cls) -> FilesSettings:
        return cls(
            admin_url=env_str("PARLEY_DATABASE_URL"),
            database_url=env_str("PARLEY_FILES_DATABASE_URL"),
            role_password=env_str("PARLEY_FILES_DATABASE_PASSWORD"),
            pool_size=env_int("PARLEY_FILES_POOL_SIZE", 20, minimum=4),
            storage_dir=Path(env_str("PARLEY_FILES_STORAGE_DIR") or str(state_dir() / "files")).resolve(),
            llm_target=env_str("PARLEY_LLM_TARGET", "127.0.0.1:50052"),
            identity_private_key=env_secret("PARLEY_IDENTITY_PRIVATE_KEY"),
            upload=UploadLimits(max_file_bytes=env_int("PARLEY_FILES_MAX_FILE_BYTES", 512 * 1024 * 1024, minimum=1)),
            extraction=Limits(
                max_docx_uncompressed_bytes=env_int("PARLEY_FILES_MAX_DOCX_UNCOMPRESSED_BYTES", 256 * 1024 * 1024, minimum=1),
                max_text_chars=env_int("PARLEY_FILES_MAX_TEXT_CHARS", 50_000_000, minimum=1),
            ),
            worker=WorkerSettings(
                concurrency=env_int("PARLEY_FILES_WORKERS", 2, minimum=1),
                lease_seconds=env_float("PARLEY_FILES_LEASE_SECONDS", 60.0, minimum=1.0),
                poll_seconds=env_float("PARLEY_FILES_POLL_SECONDS", 2.0, minimum=0.05),
                max_attempts=env_int("PARLEY_FILES_MAX_ATTEMPTS", 3, minimum=1),
            ),
            search=SearchSettings(
                exact_search_max_chunks=env_int("PARLEY_FILES_EXACT_SEARCH_MAX_CHUNKS", 20_000, minimum=0),
                ef_search=env_int("PARLEY_FILES_HNSW_EF_SEARCH", 100, minimum=10),
                candidates=env_int("PARLEY_FILES_SEARCH_CANDIDATES", 50, minimum=10),
                text_max_matches=env_int("PARLEY_FILES_TEXT_MAX_MATCHES", 5000, minimum=100),
                text_search_config=env_str("PARLEY_FILES_TEXT_SEARCH_CONFIG", "english"),
            ),
            embed_batch_size=env_int("PARLEY_FILES_EMBED_BATCH_SIZE", 64, minimum=1),
            statement_timeout=statement_timeout_from_env("files"),
        )


class FilesApp:
    service_names = (SERVICE_NAME,)

    def __init__(self, db: Database, files: Files, stores: VectorStores, processor: Processor, embedder: Embedder,
                 storage: BlobStore, audit_log: AuditLog) -> None:
        self.db = db
        self.files = files
        self.stores = stores
        self.processor = processor
        self._embedder = embedder
        self.storage = storage
        self.audit_log = audit_log

    def register(self, server: grpc.aio.Server) -> None:
        files_service_pb2_grpc.add_FileServiceServicer_to_server(FileServicer(self.files, self.stores), server)

    async def delete_user_data(self, user_id: str):
        return await delete_user_data(self.db, self.audit_log, self.storage, user_id)

    async def aclose(self) -> None:
        await self.processor.stop()
        close = getattr(self._embedder, "close", None)
        if close is not None:
            await close()
        await self.db.close()


async def check_pgvector(url: str, *, admin: bool) -> None:
    """Fails start-up with a clear message when the server cannot provide pgvector."""
    try:
        conn = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConfigError(f"cannot connect to PostgreSQL for the files service: {exc}") from None
    try:
        if admin:
            available = await conn.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        else:
            available = await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
    finally:
        await conn.close()
    if not available:
        raise ConfigError(
            "the files service needs the pgvector extension ('vector'), which this PostgreSQL server "
            + ("does not provide: install pgvector on it, or leave PARLEY_DATABASE_URL unset to use the embedded server"
               if admin else "has not enabled: run the files migrations as an admin (PARLEY_DATABASE_URL)")
        )


async def build_app(settings: FilesSettings | None = None, *, embedder: Embedder | None = None) -> FilesApp:
    settings = settings or FilesSettings.from_env()
    if embedder is None:
        if not settings.identity_private_key:
            raise ConfigError(
                "PARLEY_IDENTITY_PRIVATE_KEY_FILE (or PARLEY_IDENTITY_PRIVATE_KEY) must hold the identity signing key: "
                "the files service calls llm as the file's owner after the upload call has ended (`make run` provides it)"
            )
        try:
            minter = IdentityMinter(settings.identity_private_key)
        except ValueError as exc:
            raise ConfigError(f"PARLEY_IDENTITY_PRIVATE_KEY: {exc}") from None
        embedder = LLMEmbedder(settings.llm_target, minter, batch_size=settings.embed_batch_size)
    db = await open_service_database(
        schema=SCHEMA, role=ROLE, migrations_dir=MIGRATIONS, admin_url=settings.admin_url,
        database_url=settings.database_url, role_password=settings.role_password, pool_size=settings.pool_size,
        statement_timeout=settings.statement_timeout, init=vector_codec,
        check_server=lambda url, admin: check_pgvector(url, admin=admin), audit=True,
    )
    try:
        async with db.acquire() as conn:
            await conn.fetchval("SELECT $1::text::regconfig", settings.search.text_search_config)
    except asyncpg.PostgresError:
        await db.close()
        raise ConfigError(f"PARLEY_FILES_TEXT_SEARCH_CONFIG: {settings.search.text_search_config!r} is not a "
                          "PostgreSQL text search configuration (e.g. english, simple, german)") from None
    storage = BlobStore(settings.storage_dir)
    audit_log = AuditLog("files", db)
    processor = Processor(db, storage, embedder, settings.worker, settings.extraction,
                          settings.search.text_search_config, audit=audit_log)
    files = Files(db, storage, settings.upload, on_uploaded=processor.wake, audit=audit_log)
    stores = VectorStores(db, embedder, settings.search, on_added=processor.wake, audit=audit_log)
    processor.start()
    return FilesApp(db, files, stores, processor, embedder, storage, audit_log)
