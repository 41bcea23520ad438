"""A run's events: numbered, streamed to this replica's watchers at once, and written to the
run's durable log in batches.

While a replica executes a run it is the run log's only writer (its lease says so), so it
numbers events itself. Deltas go to local watchers immediately and to the log at most every
`flush_seconds` in one AppendRunEvents call, so a delta never costs a database round trip of
its own. Status changes are different: they are stored with the run's new status in one
UpdateRun (compare-and-set) together with every delta still pending, and only then shown to
watchers, so a client never sees a status (requires_action, completed) that is not stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from parley.assistants.v1 import assistants_pb2 as apb
from parley.runstore.v1 import runstore_service_pb2 as rs
from services.assistants.ports import RunStorePort, Who
from services.runtime import errors

log = logging.getLogger("parley.assistants.events")

# Events of the runs this replica executed, kept in memory after the run ended (or was
# handed off) for late local watchers: for at most this long, and at most this many events
# in all (the oldest runs go first); older ones are read from the run store. Without the
# total, what is kept grows with the run rate (a minute of runs).
_KEEP_ENDED_SECONDS = 60.0
KEEP_CLOSED_EVENTS = 20_000


def now_stamp() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def stamp_in(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(timezone.utc) + timedelta(seconds=seconds))
    return stamp


class LocalRun:
    """The events this replica produced for one run, for watchers on this replica."""

    def __init__(self, run_id: str, first_sequence: int, on_close=None) -> None:
        self.run_id = run_id
        self.first_sequence = first_sequence
        self.events: list[apb.RunEvent] = []
        self.closed = False  # no more events from this replica (run ended or handed off)
        self.ended = False  # the run itself ended (its done event is in `events`)
        self.closed_at = 0.0
        self._changed = asyncio.Condition()
        self._on_close = on_close

    async def publish(self, events: Sequence[apb.RunEvent]) -> None:
        async with self._changed:
            self.events.extend(events)
            self._changed.notify_all()

    async def close(self, *, ended: bool) -> None:
        async with self._changed:
            already = self.closed
            self.closed, self.ended, self.closed_at = True, ended, time.monotonic()
            self._changed.notify_all()
        if not already and self._on_close is not None:
            self._on_close(self)

    async def follow(self, after_sequence: int) -> AsyncIterator[apb.RunEvent]:
        """Events after `after_sequence` (which must be >= first_sequence - 1), live, until closed."""
        index = after_sequence - self.first_sequence + 1
        while True:
            async with self._changed:
                while index >= len(self.events) and not self.closed:
                    await self._changed.wait()
                batch = self.events[index:]
                closed = self.closed
            for event in batch:
                yield event
            index += len(batch)
            if closed and index >= len(self.events):
                return


class LocalRuns:
    """The runs this replica executes (or recently executed), by id. Runs still executing
    keep every event; closed ones as long as _KEEP_ENDED_SECONDS and KEEP_CLOSED_EVENTS allow."""

    def __init__(self, keep_closed_events: int = KEEP_CLOSED_EVENTS) -> None:
        self._runs: dict[str, LocalRun] = {}
        self._closed: dict[str, LocalRun] = {}  # in the order they closed, oldest first
        self._closed_events = 0
        self._keep_closed_events = keep_closed_events

    def open(self, run_id: str, first_sequence: int) -> LocalRun:
        self._forget_closed(run_id)  # a run started again here (after its tool outputs)
        self._sweep()
        local = LocalRun(run_id, first_sequence, on_close=self._closed_one)
        self._runs[run_id] = local
        return local

    def get(self, run_id: str) -> LocalRun | None:
        return self._runs.get(run_id)

    def _closed_one(self, local: LocalRun) -> None:
        if self._runs.get(local.run_id) is not local:
            return  # replaced meanwhile by a newer execution's
        if len(local.events) > self._keep_closed_events:
            del self._runs[local.run_id]  # on its own more than the total: not at the others' cost
            return
        self._closed[local.run_id] = local
        self._closed_events += len(local.events)
        self._sweep()

    def _forget_closed(self, run_id: str) -> None:
        local = self._closed.pop(run_id, None)
        if local is not None:
            self._closed_events -= len(local.events)

    def _sweep(self) -> None:
        now = time.monotonic()
        while self._closed:
            run_id, local = next(iter(self._closed.items()))
            if now - local.closed_at <= _KEEP_ENDED_SECONDS and self._closed_events <= self._keep_closed_events:
                return
            self._forget_closed(run_id)
            if self._runs.get(run_id) is local:
                del self._runs[run_id]


class LeaseLost(Exception):
    """Another writer got to the run's log first: this replica no longer owns the run."""


@dataclass
class StatusChange:
    """A run update stored together with its events (see RunEventLog.commit)."""

    run: apb.Run
    paths: Sequence[str]
    expected: Sequence[int] = ()
    lease: rs.RunLease | None = None
    events: list[apb.RunEvent] = field(default_factory=list)
    # Only if the run is its session's head (a queued run starting without a claim).
    require_session_head: bool = False


class RunEventLog:
    def __init__(self, store: RunStorePort, who: Who, run_id: str, last_sequence: int, local: LocalRun,
                 *, flush_seconds: float) -> None:
        self._store = store
        self._who = who
        self.run_id = run_id
        self._next = last_sequence + 1
        self._local = local
        self._flush_seconds = flush_seconds
        self._pending: list[apb.RunEvent] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._failure: BaseException | None = None
        self._writer = asyncio.create_task(self._write_forever(), name=f"run-events-{run_id}")
        self.writes = 0

    def _event(self, **kind) -> apb.RunEvent:
        event = apb.RunEvent(sequence=self._next, run_id=self.run_id, create_time=now_stamp(), **kind)
        self._next += 1
        return event

    def _check(self) -> None:
        if self._failure is not None:
            raise LeaseLost(str(self._failure))

    async def emit(self, **kind) -> apb.RunEvent:
        """A non-status event (delta, step, message): live now, durable within flush_seconds."""
        self._check()
        event = self._event(**kind)
        self._pending.append(event)
        await self._local.publish([event])
        self._wake.set()
        return event

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            if self._flush_seconds:
                await asyncio.sleep(self._flush_seconds)
            async with self._lock:
                self._wake.clear()
                await self._flush_locked()

    async def _flush_locked(self) -> None:
        if not self._pending or self._failure is not None:
            return
        batch, self._pending = self._pending, []
        try:
            await self._store.call(self._who, "AppendRunEvents", rs.AppendRunEventsRequest(
                run_id=self.run_id, events=batch))
            self.writes += 1
        except errors.Aborted as exc:
            self._failure = exc
        except errors.ParleyError as exc:
            # Not stored: put them back, the next flush or status change retries.
            self._pending = batch + self._pending
            log.warning("run %s: event append failed (%s); retrying", self.run_id, exc.reason)
            await asyncio.sleep(0.2)
            self._wake.set()

    async def flush(self) -> None:
        async with self._lock:
            await self._flush_locked()
        self._check()

    async def commit(self, change: StatusChange, **kind) -> apb.Run:
        """Stores the run change (compare-and-set on `change.expected`) with every pending event
        and the events given by `kind` (`run_status_changed=True` means a snapshot of the
        run as it will be stored), then shows the new events to watchers."""
        async with self._lock:
            self._check()
            events = list(self._pending)
            new: list[apb.RunEvent] = []
            for name, value in kind.items():
                if name == "run_status_changed":
                    # The whole run as it will be stored (change.run is the full run; the
                    # mask only limits what is written), identical on every stream.
                    snapshot = apb.Run()
                    snapshot.CopyFrom(change.run)
                    snapshot.last_sequence = self._next
                    new.append(self._event(run_status_changed=snapshot))
                elif name == "extra":
                    for extra in value:
                        event = self._event(**extra)
                        if event.HasField("run_status_changed"):
                            event.run_status_changed.last_sequence = event.sequence
                        new.append(event)
                else:
                    new.append(self._event(**{name: value}))
            request = rs.UpdateRunRequest(run=change.run, update_mask=FieldMask(paths=list(change.paths)),
                                          expected_statuses=list(change.expected), events=events + new,
                                          require_session_head=change.require_session_head)
            if change.lease is not None:
                request.lease.CopyFrom(change.lease)
            try:
                stored = await self._store.call(self._who, "UpdateRun", request)
            except errors.Aborted as exc:
                self._next -= len(new)
                if exc.reason == "RUN_EVENT_SEQUENCE_CONFLICT":
                    self._failure = exc
                    raise LeaseLost(str(exc)) from None
                raise
            except BaseException:
                self._next -= len(new)
                raise
            self.writes += 1
            self._pending = []
            await self._local.publish(new)
            return stored

    async def close(self, *, ended: bool) -> None:
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._writer
        with contextlib.suppress(Exception):
            async with self._lock:
                await self._flush_locked()
        await self._local.close(ended=ended)

    @property
    def last_sequence(self) -> int:
        return self._next - 1
