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

# Events kept in memory per locally executed run for late local watchers; older ones are
# read from the store.
_KEEP_ENDED_SECONDS = 60.0


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

    def __init__(self, run_id: str, first_sequence: int) -> None:
        self.run_id = run_id
        self.first_sequence = first_sequence
        self.events: list[apb.RunEvent] = []
        self.closed = False  # no more events from this replica (run ended or handed off)
        self.ended = False  # the run itself ended (its done event is in `events`)
        self.closed_at = 0.0
        self._changed = asyncio.Condition()

    async def publish(self, events: Sequence[apb.RunEvent]) -> None:
        async with self._changed:
            self.events.extend(events)
            self._changed.notify_all()

    async def close(self, *, ended: bool) -> None:
        async with self._changed:
            self.closed, self.ended, self.closed_at = True, ended, time.monotonic()
            self._changed.notify_all()

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
    """The runs this replica executes (or recently executed), by id."""

    def __init__(self) -> None:
        self._runs: dict[str, LocalRun] = {}

    def open(self, run_id: str, first_sequence: int) -> LocalRun:
        self._sweep()
        local = LocalRun(run_id, first_sequence)
        self._runs[run_id] = local
        return local

    def get(self, run_id: str) -> LocalRun | None:
        return self._runs.get(run_id)

    def _sweep(self) -> None:
        now = time.monotonic()
        for run_id, local in list(self._runs.items()):
            if local.closed and now - local.closed_at > _KEEP_ENDED_SECONDS:
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
