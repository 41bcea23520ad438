"""The usage ledger: one record per call (failed, cancelled and cached ones too), written to
PostgreSQL in batches by a background task, never on the token path.

`record` only appends to an in-memory buffer. A flusher writes the buffer every
`flush_interval` seconds (sooner when `batch_size` records wait) in one transaction. When
the database is down the records stay buffered and are retried with backoff; if the buffer
reaches `max_buffered` the oldest records are dropped (and counted in the log), so a long
database outage costs memory up to that bound, never a stream. What is lost in the worst
case: the records still buffered when the process dies without a graceful shutdown (at
most `flush_interval` seconds of calls while the database is healthy, or everything
buffered since the outage began while it is not), and records dropped past `max_buffered`.
A graceful shutdown flushes what it can within its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

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
    ) -> None:
        self._writer = writer
        self._buffer: deque[UsageRecord] = deque()
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._max = max_buffered
        self._dropped = 0
        self._wake = asyncio.Event()
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
        while self._buffer and self._writer is not None:
            batch = [self._buffer[i] for i in range(min(self._batch_size, len(self._buffer)))]
            await self._writer(batch)
            for _ in batch:
                self._buffer.popleft()
            written += len(batch)
        self.written += written
        return written

    async def _run(self) -> None:
        backoff = self._flush_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                backoff = self._flush_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep the records, try again later
                backoff = min(max(backoff * 2, 1.0), 30.0)
                log.warning("usage flush failed (%s); %d records buffered, retrying in %.0fs",
                            type(exc).__name__, len(self._buffer), backoff)

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
                log.error("usage: %d records not written at shutdown (%s)", len(self._buffer), type(exc).__name__)
