"""Background processing: text extraction of uploaded files, then chunking and embedding of
store entries. Survives restarts and runs safely on several replicas.

Pending work lives in the database (files uploaded or processing, entries in progress), so
nothing is lost when a process dies. A worker leases items through `claim_jobs` (SKIP
LOCKED, so replicas never take the same item) and renews its leases while alive; a dead
worker's leases run out and the items are claimed again, up to `max_attempts` times. Each
item is then processed as its owner, under row-level security.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from services.files import sniff
from services.files.chunking import chunk_text, token_counter_for
from services.files.embeddings import Embedder
from services.files.extract import Extracted, ExtractionError, Limits, extract
from services.files.models import EntryStatus, ErrorCode, FileStatus
from services.files.repository import FileRepository
from services.files.storage import BlobStore
from opentelemetry import trace

from services.runtime import errors, metrics
from services.runtime.audit import AuditLog, Kind
from services.runtime.db import UNAVAILABLE_ERRORS, Database
from services.runtime.telemetry import context_of

log = logging.getLogger("parley.files.worker")
tracer = trace.get_tracer("parley.files")


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int = 2
    lease_seconds: float = 60.0
    poll_seconds: float = 2.0
    max_attempts: int = 3
    # Temporary uploads and unreferenced blobs older than this are removed at start-up.
    sweep_age_seconds: float = 3600.0
    expiry_interval_seconds: float = 600.0


@dataclass
class JobTiming:
    """Where one item's processing time went (for logs and the ingestion benchmark)."""

    kind: str
    file_id: uuid.UUID
    seconds: dict[str, float] = field(default_factory=dict)
    chunks: int = 0


class Processor:
    def __init__(self, db: Database, storage: BlobStore, embedder: Embedder, settings: WorkerSettings,
                 extract_limits: Limits, text_search_config: str, repository: FileRepository | None = None,
                 audit: AuditLog | None = None) -> None:
        self._db = db
        self._audit = audit or AuditLog.discarding()
        self._storage = storage
        self._embedder = embedder
        self._settings = settings
        self._limits = extract_limits
        self._ts_config = text_search_config
        self._repo = repository or FileRepository()
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        self.timings: deque[JobTiming] = deque(maxlen=256)

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._claim_forever(), name="files-claim"),
                       asyncio.create_task(self._renew_forever(), name="files-leases"),
                       asyncio.create_task(self._maintain_forever(), name="files-maintenance")]

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        for task in [*self._loops, *self._tasks]:
            task.cancel()
        for task in [*self._loops, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- loops ------------------------------------------------------------------------------

    async def _claim_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._claim_once()
            except asyncio.CancelledError:
                raise
            except (errors.Unavailable, *UNAVAILABLE_ERRORS) as exc:
                # A database outage: expected now and then, retried at the next round, no traceback.
                log.warning("claiming work failed, the database is unavailable: %s", type(exc).__name__)
            except Exception:  # noqa: BLE001 - retried at the next round
                log.exception("claiming work failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.poll_seconds)

    async def _claim_once(self) -> None:
        free = self._settings.concurrency - len(self._tasks)
        if free <= 0:
            return
        async with self._db.acquire() as conn:
            jobs = await conn.fetch(
                "SELECT * FROM claim_jobs($1, $2, $3, $4)",
                self._worker_id, self._settings.lease_seconds, free, self._settings.max_attempts,
            )
        for job in jobs:
            task = asyncio.create_task(self._run_job(job["job_kind"], job["job_user"], job["job_file"],
                                                     job["job_store"], job["job_trace"]))
            self._tasks.add(task)
            task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._wake.set()  # a slot is free, and a finished file may unblock store entries

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.lease_seconds / 3)
            if not self._tasks:
                continue
            try:
                async with self._db.acquire() as conn:
                    await conn.execute("SELECT renew_leases($1, $2)", self._worker_id, self._settings.lease_seconds)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.warning("renewing leases failed", exc_info=True)

    async def _maintain_forever(self) -> None:
        try:
            await self.sweep_storage()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the next start sweeps again; serving goes on
            log.exception("start-up storage sweep failed")
        while True:
            try:
                expired = await self.expire_vector_stores()
                if expired:
                    log.info("deleted %d chunks of expired vector stores", expired)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.warning("expiring vector stores failed", exc_info=True)
            await asyncio.sleep(self._settings.expiry_interval_seconds)

    async def expire_vector_stores(self) -> int:
        """Expires the stores idle past their expiration (their chunks go), with a
        `retention.purged` audit event in the same transaction; the chunks deleted."""
        async with self._db.acquire() as conn, conn.transaction():
            expired = await conn.fetchval("SELECT expire_vector_stores()")
            if expired:
                await self._audit.write(conn, Kind.RETENTION_PURGED, actor="", details={
                    "table": "chunks", "count": expired, "reason": "vector_store_expired"})
        return expired

    async def sweep_storage(self) -> None:
        """Removes temporary uploads and blobs without a row (a crash between the rename and
        the commit), once they are old enough not to belong to an upload in flight."""
        age = self._settings.sweep_age_seconds
        removed = await asyncio.to_thread(self._storage.sweep_temporary, age)
        keys = await asyncio.to_thread(lambda: list(self._storage.stored_keys(age)))
        for begin in range(0, len(keys), 1000):
            batch = keys[begin:begin + 1000]
            async with self._db.acquire() as conn:
                known = {r[0] for r in await conn.fetch("SELECT known_storage_keys($1::text[])", batch)}
            orphans = [key for key in batch if key not in known]
            await asyncio.to_thread(lambda: [self._storage.delete(key) for key in orphans])
            removed += len(orphans)
        if removed:
            log.info("storage sweep removed %d orphaned files", removed)

    # -- jobs -------------------------------------------------------------------------------

    async def _run_job(self, kind: str, user_id: str, file_id: uuid.UUID, store_id: uuid.UUID | None,
                       trace_parent: str = "") -> None:
        async with self._slots:
            # A child of the call that asked for the work (the upload, the add to a store).
            with tracer.start_as_current_span(f"files.process_{kind}", context=context_of(trace_parent),
                                              attributes={"parley.files.file_id": str(file_id)}):
                started, outcome = time.perf_counter(), "retried"
                try:
                    if kind == "file":
                        outcome = await self.process_file(user_id, file_id)
                    else:
                        outcome = await self.process_entry(user_id, store_id, file_id)
                except asyncio.CancelledError:
                    raise
                except errors.ParleyError as exc:
                    # Transient (llm or database unavailable): the lease runs out and the item is
                    # tried again, up to max_attempts.
                    log.warning("%s %s of user %s will be retried: %s", kind, file_id, user_id, exc)
                except Exception:  # noqa: BLE001
                    log.exception("%s %s of user %s failed unexpectedly; it will be retried", kind, file_id, user_id)
                finally:
                    if outcome != "skipped":
                        metrics.file_processed(kind, outcome, time.perf_counter() - started)

    async def process_file(self, user_id: str, file_id: uuid.UUID) -> str:
        """Extracts the file's text; "processed", "failed" (stored as failed) or "skipped"."""
        timing = JobTiming("file", file_id)
        async with self._db.transaction(user_id) as conn:
            file = await self._repo.start_processing(conn, file_id)
        if file is None:
            return "skipped"  # deleted, or finished meanwhile
        started = time.perf_counter()
        result: Extracted | None = None
        failure: tuple[ErrorCode, str] | None = None
        if file.media_type in sniff.IMAGE_TYPES:
            result = Extracted("")  # stored as is: nothing to extract
        else:
            async with self._db.transaction(user_id, readonly=True) as conn:
                declared = await conn.fetchval("SELECT declared_media_type FROM files WHERE id = $1", file_id)
            try:
                with tracer.start_as_current_span("files.extract",
                                                  attributes={"parley.files.media_type": file.media_type}):
                    data = await asyncio.to_thread(self._storage.read_bytes, file.storage_key)
                    result = await asyncio.to_thread(extract, data, file.media_type, self._limits,
                                                     declared=declared or "")
            except FileNotFoundError:
                failure = (ErrorCode.SERVER_ERROR, "The file's bytes are missing from storage; upload it again.")
            except ExtractionError as exc:
                failure = (exc.code, exc.message)
        timing.seconds["extraction"] = time.perf_counter() - started
        started = time.perf_counter()
        async with self._db.transaction(user_id) as conn:
            await self._repo.finish_processing(conn, file_id, text=result.text if result else None,
                                               page_starts=result.page_starts if result else (), error=failure)
        timing.seconds["storage"] = time.perf_counter() - started
        self.timings.append(timing)
        log.info("file %s %s in %.2fs", file_id, "failed" if failure else "processed", sum(timing.seconds.values()))
        self.wake()
        return "failed" if failure else "processed"

    async def process_entry(self, user_id: str, store_id: uuid.UUID, file_id: uuid.UUID) -> str:
        """Chunks and embeds the entry; "processed", "failed" (stored as failed) or "skipped"."""
        timing = JobTiming("entry", file_id)
        async with self._db.transaction(user_id, readonly=True) as conn:
            work = await self._repo.entry_work(conn, store_id, file_id)
            text = await self._repo.get_file_text(conn, file_id) if work is not None else None
        if work is None or work["status"] != EntryStatus.IN_PROGRESS:
            return "skipped"

        async def fail(code: ErrorCode, message: str) -> str:
            async with self._db.transaction(user_id) as conn:
                await self._repo.fail_entry(conn, work["entry_id"], code, message)
            return "failed"

        if work["is_expired"]:
            return await fail(ErrorCode.SERVER_ERROR, "The vector store expired before the file was added.")
        if work["file_status"] == FileStatus.ERROR:
            return await fail(ErrorCode(work["file_error_code"] or ErrorCode.INVALID_FILE), work["file_reason"])
        if text is None or not text[0].strip():
            if work["media_type"] not in sniff.EXTRACTABLE:
                return await fail(ErrorCode.UNSUPPORTED_FILE,
                                  f"{sniff.describe(work['media_type']).capitalize()} has no text to search. "
                                  "Supported: txt, md, html, pdf, docx, csv, json.")
            return await fail(ErrorCode.INVALID_FILE, "The file has no text to search.")
        model = work["embedding_model"]
        started = time.perf_counter()
        counter = token_counter_for(model)
        with tracer.start_as_current_span("files.chunk") as span:
            chunks = await asyncio.to_thread(chunk_text, text[0], text[1], counter, work["chunk_max_tokens"],
                                             work["chunk_overlap_tokens"])
            span.set_attribute("parley.files.chunks", len(chunks))
        timing.seconds["chunking"] = time.perf_counter() - started
        started = time.perf_counter()
        try:
            with tracer.start_as_current_span("files.embed", attributes={"gen_ai.request.model": model}):
                vectors = await self._embedder.embed(user_id, model, [c.text for c in chunks])
        except errors.InvalidArgument as exc:
            return await fail(ErrorCode.SERVER_ERROR, f"The embedding model refused a chunk: {exc.message}")
        timing.seconds["embedding"] = time.perf_counter() - started
        if any(len(v) != work["embedding_dimensions"] for v in vectors):
            return await fail(ErrorCode.SERVER_ERROR, "The embedding model returned vectors of an unexpected size.")
        started = time.perf_counter()
        async with self._db.transaction(user_id) as conn:
            done = await self._repo.complete_entry(conn, work["entry_id"], chunks, vectors, self._ts_config)
        timing.seconds["storage"] = time.perf_counter() - started
        timing.chunks = len(chunks)
        self.timings.append(timing)
        log.info("file %s in store %s: %d chunks %s", file_id, store_id, len(chunks), "indexed" if done else "dropped (removed meanwhile)")
        return "processed" if done else "skipped"
