"""The usage ledger: one record per call (failed, cancelled and cached ones too), written to
PostgreSQL in batches by a background task, never on the token path.

`record` only appends to an in-memory buffer. A flusher writes the buffer every
`flush_interval` seconds (sooner when `batch_size` records wait) in one transaction. When
the database is down, writes are retried with backoff (up to 30 s apart) and, meanwhile,
every `flush_interval` the buffer is appended to a spool file on local disk (fsynced), so a
process that dies during the outage loses at most the last interval's records; the spools
(this process's, and those of processes that are gone) are written once the database is
back. Writes are idempotent (the record id is the key), so replays never double-count. If
the disk fails too, records stay in memory up to `max_buffered`, then the oldest are dropped
(and counted in the log): a stream is never blocked. What is lost in the worst case: the
records of the last `flush_interval` (about a second) when the process dies abruptly; more
only if the database and the spool disk fail together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

log = logging.getLogger("parley.llm.usage")


@dataclass
class UsageRecord:
    id: str
    user_id: str
    create_time: datetime
    kind: str  # "chat" or "embed"
    requested_model: str
    model: str  # the model that answered (or was last tried)
    provider: str
    status: str  # "ok", "error" or "cancelled"
    error_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    time_to_first_token_ms: float | None = None
    queue_ms: float = 0.0
    cache_hit: bool = False
    streamed: bool = False
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def set_usage(self, usage, cost_usd: float) -> None:
        """The call's token counts (a models.Usage) and cost."""
        self.input_tokens = usage.input_tokens
        self.output_tokens = usage.output_tokens
        self.cached_input_tokens = usage.cached_input_tokens
        self.reasoning_tokens = usage.reasoning_tokens
        self.cost_usd = cost_usd


Writer = Callable[[list[UsageRecord]], Awaitable[None]]


class Ledger:
    def __init__(
        self,
        writer: Writer | None,
        *,
        flush_interval: float = 1.0,
        batch_size: int = 500,
        max_buffered: int = 100_000,
        listeners: list[Callable[[UsageRecord], None]] | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        self._writer = writer
        self._spool_dir = spool_dir
        self._spool_path = spool_dir / f"usage-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl" if spool_dir else None
        self._buffer: deque[UsageRecord] = deque()
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._max = max_buffered
        self._dropped = 0
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._listeners = listeners or []
        self.written = 0

    def add_listener(self, listener: Callable[[UsageRecord], None]) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        if self._writer is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage-ledger")

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def pending_records(self) -> list[UsageRecord]:
        """Records not yet written (budget checks count them as spent)."""
        return list(self._buffer)

    def record(self, record: UsageRecord) -> None:
        """Never blocks, never raises."""
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:  # noqa: BLE001
                log.exception("usage listener failed")
        if self._writer is None:
            return
        if len(self._buffer) >= self._max:
            self._buffer.popleft()
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                log.error("usage buffer full: %d records dropped so far", self._dropped)
        self._buffer.append(record)
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    async def flush(self) -> int:
        """Writes everything buffered; returns how many records were written. Raises on a
        database failure, leaving the records buffered."""
        written = 0
        # One flush at a time: the background task and an explicit flush (shutdown, a test, a
        # deletion's caller) would otherwise both write the first batch and then pop it twice.
        async with self._flushing:
            while self._buffer and self._writer is not None:
                batch = [self._buffer[i] for i in range(min(self._batch_size, len(self._buffer)))]
                await self._writer(batch)
                for _ in batch:
                    self._buffer.popleft()
                written += len(batch)
        self.written += written
        return written

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff, retry_at = 0.0, 0.0
        try:
            await self._replay_spools()
        except Exception as exc:  # noqa: BLE001 - the database is not there yet: later
            log.warning("usage spools not written yet (%s)", type(exc).__name__)
            backoff = 1.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            if loop.time() >= retry_at:
                try:
                    await self.flush()
                    if backoff:
                        log.info("usage ledger writing again")
                        await self._replay_spools()
                    backoff, retry_at = 0.0, 0.0
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - keep the records, try again later
                    backoff = min(max(backoff * 2, 1.0), 30.0)
                    retry_at = loop.time() + backoff
                    log.warning("usage flush failed (%s); %d records buffered, retrying in %.0fs",
                                type(exc).__name__, len(self._buffer), backoff)
            # The database is down: keep what waits on disk, where a crash cannot take it.
            await self._spool()

    # ---- the spool: records kept on local disk while the database is unreachable ----------

    async def _spool(self) -> None:
        if self._spool_path is None or not self._buffer:
            return
        records = list(self._buffer)
        lines = "".join(json.dumps(_to_json(r)) + "\n" for r in records)
        try:
            await asyncio.to_thread(_append, self._spool_path, lines)
        except OSError as exc:
            log.error("usage spool unavailable (%s); %d records stay in memory", exc.strerror, len(records))
            return
        for _ in records:
            self._buffer.popleft()

    async def _replay_spools(self) -> None:
        """Writes the spool files of this process and of processes that are gone."""
        if self._spool_dir is None or self._writer is None:
            return
        files = await asyncio.to_thread(lambda: sorted(self._spool_dir.glob("usage-*.jsonl")))
        for path in files:
            if path != self._spool_path and _owner_alive(path):
                continue
            records = await asyncio.to_thread(_read_spool, path)
            for i in range(0, len(records), self._batch_size):
                await self._writer(records[i:i + self._batch_size])  # idempotent: ids are keys
            await asyncio.to_thread(path.unlink, missing_ok=True)
            self.written += len(records)
            if records:
                log.info("usage: %d spooled records written", len(records))

    async def aclose(self, timeout: float = 5.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._buffer and self._writer is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self.flush()
            except Exception as exc:  # noqa: BLE001
                await self._spool()
                if self._buffer:
                    log.error("usage: %d records not written at shutdown (%s)", len(self._buffer), type(exc).__name__)


def _to_json(record: UsageRecord) -> dict:
    data = asdict(record)
    data["create_time"] = record.create_time.isoformat()
    return data


def _read_spool(path: Path) -> list[UsageRecord]:
    records = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            data = json.loads(line)
            data["create_time"] = datetime.fromisoformat(data["create_time"])
            records.append(UsageRecord(**data))
        except (ValueError, TypeError, KeyError):
            log.error("usage spool %s: skipping a damaged line", path.name)  # a torn last line after a crash
    return records


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as spool:
        spool.write(text)
        spool.flush()
        os.fsync(spool.fileno())


def _owner_alive(path: Path) -> bool:
    try:
        pid = int(path.name.split("-")[1])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
