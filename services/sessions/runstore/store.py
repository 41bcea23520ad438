"""The run store: assistants, runs, run steps, run event logs, the run queue and the function
result cache for the assistants run engine, independent of transport.

Every operation acts as one user inside one transaction. Requests are validated before the
transaction starts; the checks that depend on stored state (a busy session, a run's status
for compare-and-set, the next event sequence) happen under a row lock in the same
transaction as the write, so they cannot be raced, and a failed check writes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from services.runtime import errors
from services.runtime.audit import AuditLog, Kind
from services.runtime.db import Database
from services.runtime.errors import FieldViolation
from services.runtime.pagination import (
    Position,
    decode_time_and_id,
    decode_token,
    encode_time_and_id,
    encode_token,
    page_size,
)
from services.runtime.validation import (
    metadata_violations,
    nul_violations,
    parse_id,
    text_violations,
    update_mask_paths,
)
from services.sessions.models import Page, SessionStatus, SortOrder
from services.sessions.runstore.changes import RunChanges
from services.sessions.runstore.checks import (
    body_violations,
    enum_violations,
    not_found,
    number_violations,
    session_not_found,
)
from services.sessions.runstore.models import (
    ASSISTANT_FIELDS,
    RUN_FIELDS,
    RUN_STEP_DETAILS,
    RUN_STEP_FIELDS,
    ACTIVE_RUN_STATUSES,
    ENGINE_SCOPE,
    Assistant,
    BusySessionStrategy,
    Claim,
    FunctionResult,
    Lease,
    RunChange,
    ColumnWrites,
    Draft,
    NewRunEvent,
    Run,
    RunEvent,
    RunStatus,
    RunStep,
    RunStepStatus,
    RunStepType,
)
from services.sessions.runstore.repository import RunStoreRepository

NAME_MAX_CHARS = 256
DESCRIPTION_MAX_CHARS = 512
MODEL_MAX_CHARS = 256
INSTRUCTIONS_MAX_CHARS = 256_000
MAX_TOOLS = 128
MAX_EVENTS_PER_APPEND = 1000
# How long a status-only watch lets a run's changes gather before it reads the status again.
STATUS_ONLY_COALESCE_SECONDS = 0.25

# Fields each resource keeps as columns; the rest of its writable fields live in `body`.
RUN_COLUMNS = ("status", "busy_session_strategy", "expire_time")
RUN_STEP_COLUMNS = ("type", "status")


def _seq_position(token: str, query_key: str) -> int | None:
    """A keyset position of one sequence number, from a token this deployment signed."""
    position = decode_token(token, query_key, kinds=(Position.COUNT,))
    return None if position is None else position[0]


def _writes(
    paths: Sequence[str], draft: Draft, *, writable: Sequence[str], columns: Sequence[str], prefix: str,
    oneof: Sequence[str] = (), allow_empty: bool = False,
) -> tuple[ColumnWrites, list[FieldViolation]]:
    """The writes an update mask asks for (AIP-134): without a mask, every writable field the
    request populates. Only top-level fields; messages, lists and maps are replaced whole, and
    writing one member of the `oneof` fields clears the others."""
    if not paths and allow_empty and not any(name in draft.fields for name in writable):
        wanted, violations = [], []
    else:
        wanted, violations = update_mask_paths(paths, updatable=writable, populated=list(draft.fields))
    column_values = {p: draft.get(p) for p in wanted if p in columns}
    set_body = {p: draft.fields[p] for p in wanted if p not in columns and p in draft.fields}
    clear_body = [p for p in wanted if p not in columns and p not in draft.fields]
    members = [p for p in set_body if p in oneof]
    if len(members) > 1:
        violations.append(FieldViolation(f"{prefix}.{members[1]}", f"only one of {', '.join(oneof)} may be set"))
    elif members:
        clear_body += [p for p in oneof if p != members[0] and p not in clear_body]
    return ColumnWrites(columns=column_values, set_body=set_body, clear_body=tuple(clear_body)), violations


def _assistant_violations(fields: dict[str, Any], prefix: str) -> list[FieldViolation]:
    """Limits documented on parley.assistants.v1.Assistant, for the fields present."""
    found: list[FieldViolation] = []
    for name, limit in (("name", NAME_MAX_CHARS), ("description", DESCRIPTION_MAX_CHARS),
                        ("model", MODEL_MAX_CHARS), ("instructions", INSTRUCTIONS_MAX_CHARS)):
        if name in fields:
            single_line = name in ("name", "model")
            found += text_violations(fields[name], f"{prefix}.{name}", max_chars=limit, single_line=single_line)
    if len(fields.get("tools", ())) > MAX_TOOLS:
        found.append(FieldViolation(f"{prefix}.tools", f"has more than {MAX_TOOLS} tools"))
    if "metadata" in fields:
        found += metadata_violations(fields["metadata"], f"{prefix}.metadata")
    found += number_violations(fields.get("temperature"), f"{prefix}.temperature", 0, 2)
    found += number_violations(fields.get("top_p"), f"{prefix}.top_p", 0, 1)
    return found


def _event_violations(events: Sequence[NewRunEvent], run_id: uuid.UUID, *, required: bool) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if required and not events:
        found.append(FieldViolation("events", "needs at least one event"))
    if len(events) > MAX_EVENTS_PER_APPEND:
        found.append(FieldViolation("events", f"has more than {MAX_EVENTS_PER_APPEND} events"))
    for i, event in enumerate(events):
        if event.sequence < 1:
            found.append(FieldViolation(f"events[{i}].sequence", "must be at least 1"))
        if event.run_id and event.run_id.lower() != str(run_id):
            found.append(FieldViolation(f"events[{i}].run_id", "must be empty or the run's id"))
        if not event.body:
            found.append(FieldViolation(f"events[{i}]", "must set one kind of event"))
        found += body_violations(event.body, f"events[{i}]")
    return found


def _check_sequence(run_id: uuid.UUID, last_sequence: int, events: Sequence[NewRunEvent]) -> None:
    expected = last_sequence + 1
    if [e.sequence for e in events] != list(range(expected, expected + len(events))):
        raise errors.Aborted(
            f"run {run_id} expects its next event to have sequence {expected}, then consecutive ones",
            reason="RUN_EVENT_SEQUENCE_CONFLICT",
            metadata={"run_id": str(run_id), "expected_sequence": str(expected)},
        )


# The user the queue functions' transactions run as: they work across users (SECURITY
# DEFINER), so row-level security never sees this id on a row.
ENGINE_USER = "parley-assistants-engine"
MIN_LEASE_SECONDS = 1.0
MAX_LEASE_SECONDS = 600.0
MAX_CLAIMS = 100
MAX_RENEWALS = 1000
MAX_FUNCTION_RESULTS = 128
FUNCTION_NAME_MAX_CHARS = 64
FUNCTION_ARGUMENTS_MAX_CHARS = 256 * 1024
FUNCTION_OUTPUT_MAX_CHARS = 512 * 1024
FUNCTION_RESULT_MAX_TTL = timedelta(hours=24)


def _lease_violations(lease: Lease, field: str, *, allow_release: bool) -> list[FieldViolation]:
    found = text_violations(lease.owner, f"{field}.owner", max_chars=128, single_line=True)
    found += nul_violations(lease.owner, f"{field}.owner")
    if not lease.owner and not allow_release:
        found.append(FieldViolation(f"{field}.owner", "is required"))
    if lease.owner and not MIN_LEASE_SECONDS <= lease.seconds <= MAX_LEASE_SECONDS:
        found.append(FieldViolation(f"{field}.duration",
                                    f"must be between {MIN_LEASE_SECONDS:g} and {MAX_LEASE_SECONDS:g} seconds"))
    return found


def _require_engine(scopes: Iterable[str]) -> None:
    if ENGINE_SCOPE not in set(scopes):
        raise errors.PermissionDenied("only the run engine may claim and renew runs", reason="ENGINE_SCOPE_REQUIRED")


def _function_key_violations(results: Sequence[FunctionResult], field: str) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if len(results) > MAX_FUNCTION_RESULTS:
        found.append(FieldViolation(field, f"has more than {MAX_FUNCTION_RESULTS} entries"))
    for i, result in enumerate(results[:MAX_FUNCTION_RESULTS]):
        if not result.name:
            found.append(FieldViolation(f"{field}[{i}].name", "is required"))
        found += text_violations(result.name, f"{field}[{i}].name", max_chars=FUNCTION_NAME_MAX_CHARS,
                                 single_line=True)
        if len(result.arguments) > FUNCTION_ARGUMENTS_MAX_CHARS:
            found.append(FieldViolation(f"{field}[{i}].arguments",
                                        f"must have at most {FUNCTION_ARGUMENTS_MAX_CHARS} characters"))
        found += nul_violations(result.name, f"{field}[{i}].name")
        found += nul_violations(result.arguments, f"{field}[{i}].arguments")
    return found


def _arguments_digest(arguments: str) -> bytes:
    return hashlib.sha256(arguments.encode("utf-8", "surrogatepass")).digest()


def _statuses(values: Iterable[int], field: str) -> tuple[list[int], list[FieldViolation]]:
    values = list(dict.fromkeys(values))
    found: list[FieldViolation] = []
    for value in values:
        found += enum_violations(value, RunStatus, field, allow_unspecified=False)
    return values, found


class RunStore:
    def __init__(self, db: Database, repository: RunStoreRepository | None = None,
                 changes: RunChanges | None = None, audit: AuditLog | None = None) -> None:
        self._db = db
        self._repo = repository or RunStoreRepository()
        self._changes = changes or RunChanges(db.pool)
        self._audit = audit or AuditLog.discarding()

    async def aclose(self) -> None:
        await self._changes.aclose()

    # -- assistants -------------------------------------------------------------------------

    async def create_assistant(self, user_id: str, draft: Draft) -> Assistant:
        body = {k: v for k, v in draft.fields.items() if k in ASSISTANT_FIELDS}
        violations = _assistant_violations(body, "assistant") + body_violations(body, "assistant")
        if not body.get("model"):
            violations.append(FieldViolation("assistant.model", "is required"))
        errors.collect(violations)
        async with self._db.transaction(user_id) as conn:
            return await self._repo.insert_assistant(conn, body)

    async def get_assistant(self, user_id: str, assistant_id: str) -> Assistant:
        aid = parse_id(assistant_id, "assistant_id")
        async with self._db.transaction(user_id, readonly=True) as conn:
            assistant = await self._repo.get_assistant(conn, aid)
        if assistant is None:
            raise not_found("assistant", "assistant_id", aid)
        return assistant

    async def list_assistants(self, user_id: str, *, size: int, token: str) -> Page:
        limit = page_size(size, default=20, maximum=100)
        query_key = f"assistants|{user_id}"
        after = decode_time_and_id(token, query_key)
        async with self._db.transaction(user_id, readonly=True) as conn:
            rows = await self._repo.list_assistants(conn, after=after, limit=limit + 1)
        items, more = rows[:limit], len(rows) > limit
        next_token = encode_time_and_id(query_key, items[-1].create_time, items[-1].id) if more else ""
        return Page(items=items, next_page_token=next_token)

    async def update_assistant(self, user_id: str, assistant_id: str, paths: Sequence[str], draft: Draft) -> Assistant:
        aid = parse_id(assistant_id, "assistant.id")
        writes, violations = _writes(paths, draft, writable=ASSISTANT_FIELDS, columns=(), prefix="assistant")
        violations += _assistant_violations(writes.set_body, "assistant")
        violations += body_violations(writes.set_body, "assistant")
        if "model" in writes.clear_body:  # unset in the request but named by the mask
            violations.append(FieldViolation("assistant.model", "is required"))
        errors.collect(violations)
        async with self._db.transaction(user_id) as conn:
            assistant = await self._repo.update_assistant(conn, aid, writes)
        if assistant is None:
            raise not_found("assistant", "assistant_id", aid)
        return assistant

    async def delete_assistant(self, user_id: str, assistant_id: str) -> None:
        aid = parse_id(assistant_id, "assistant_id")
        async with self._db.transaction(user_id) as conn:
            deleted = await self._repo.delete_assistant(conn, aid)
            if deleted:
                await self._audit.write(conn, Kind.ASSISTANT_DELETED, subject=user_id, resource=str(aid))
        if not deleted:
            raise not_found("assistant", "assistant_id", aid)

    # -- runs -------------------------------------------------------------------------------

    async def create_run(
        self, user_id: str, draft: Draft, *, created_event: Callable[[Run], dict[str, Any]] | None = None
    ) -> Run:
        """Stores a queued run. With `created_event`, also its first event (sequence 1), whose
        body the callback makes from the stored run, in the same transaction."""
        violations: list[FieldViolation] = []
        sid = aid = None
        try:
            sid = parse_id(draft.get("session_id", ""), "run.session_id")
        except errors.InvalidArgument as error:
            violations += error.field_violations
        try:
            aid = parse_id(draft.get("assistant_id", ""), "run.assistant_id")
        except errors.InvalidArgument as error:
            violations += error.field_violations
        status = draft.get("status", 0)
        if status not in (0, RunStatus.QUEUED):
            violations.append(FieldViolation("run.status", "a new run is RUN_STATUS_QUEUED (or unspecified)"))
        strategy = draft.get("busy_session_strategy", 0)
        violations += enum_violations(strategy, BusySessionStrategy, "run.busy_session_strategy", allow_unspecified=True)
        violations += metadata_violations(draft.get("metadata", {}), "run.metadata")
        body = {k: v for k, v in draft.fields.items() if k in RUN_FIELDS and k not in RUN_COLUMNS}
        violations += body_violations(body, "run")
        errors.collect(violations)
        assert sid is not None and aid is not None
        strategy = BusySessionStrategy(strategy or BusySessionStrategy.QUEUE)
        async with self._db.transaction(user_id) as conn:
            # The session row lock serialises run creation per session: the busy check and
            # the insert cannot interleave with another create's.
            session_status = await self._repo.lock_session(conn, sid)
            if session_status is None:
                raise session_not_found(sid)
            if session_status == SessionStatus.CLOSED:
                raise errors.FailedPrecondition(f"session {sid} is closed and accepts no new runs",
                                                reason="SESSION_CLOSED", metadata={"session_id": str(sid)})
            if not await self._repo.assistant_exists(conn, aid):
                raise not_found("assistant", "assistant_id", aid)
            if strategy == BusySessionStrategy.REJECT:
                active = await self._repo.get_active_run(conn, sid)
                if active is not None:
                    raise errors.FailedPrecondition(
                        f"session {sid} already has an active run", reason="SESSION_BUSY",
                        metadata={"session_id": str(sid), "active_run_id": str(active.id)},
                    )
            run = await self._repo.insert_run(
                conn, session_id=sid, assistant_id=aid, strategy=strategy, expire_time=draft.get("expire_time"),
                body=body,
            )
            if created_event is not None:
                first = NewRunEvent(sequence=1, run_id=str(run.id), create_time=None, body=created_event(run))
                await self._repo.insert_events(conn, run.id, [first])
                await self._repo.set_last_sequence(conn, run.id, 1)
                run = replace(run, last_sequence=1)
            return run

    async def get_run(self, user_id: str, run_id: str) -> Run:
        rid = parse_id(run_id, "run_id")
        async with self._db.transaction(user_id, readonly=True) as conn:
            run = await self._repo.get_run(conn, rid)
        if run is None:
            raise not_found("run", "run_id", rid)
        return run

    async def list_runs(
        self, user_id: str, session_id: str, *, size: int, token: str, statuses: Iterable[int], order: int
    ) -> Page:
        sid = parse_id(session_id, "session_id")
        wanted, violations = _statuses(statuses, "statuses")
        violations += enum_violations(order, SortOrder, "order", allow_unspecified=True)
        errors.collect(violations)
        limit = page_size(size, default=20, maximum=100)
        sort = SortOrder(order) if order else SortOrder.DESCENDING
        query_key = f"runs|{user_id}|{sid}|{sorted(wanted)}|{sort}"
        after_seq = _seq_position(token, query_key)
        async with self._db.transaction(user_id, readonly=True) as conn:
            if not await self._repo.session_exists(conn, sid):
                raise session_not_found(sid)
            rows = await self._repo.list_runs(
                conn, sid, statuses=wanted, order=sort, after_seq=after_seq, limit=limit + 1
            )
        page, more = rows[:limit], len(rows) > limit
        next_token = encode_token(query_key, [page[-1][0]]) if more else ""
        return Page(items=[run for _, run in page], next_page_token=next_token)

    async def update_run(
        self,
        user_id: str,
        run_id: str,
        paths: Sequence[str],
        draft: Draft,
        *,
        expected_statuses: Iterable[int] = (),
        events: Sequence[NewRunEvent] = (),
        lease: Lease | None = None,
        require_session_head: bool = False,
    ) -> Run:
        rid = parse_id(run_id, "run.id")
        writes, violations = _writes(paths, draft, writable=RUN_FIELDS, columns=RUN_COLUMNS, prefix="run",
                                     allow_empty=bool(events) or lease is not None)
        if lease is not None:
            violations += _lease_violations(lease, "lease", allow_release=True)
        if "status" in writes.columns:
            violations += enum_violations(writes.columns["status"] or 0, RunStatus, "run.status", allow_unspecified=False)
        if "busy_session_strategy" in writes.columns:  # unspecified means queue, as at creation
            violations += enum_violations(writes.columns["busy_session_strategy"] or 0, BusySessionStrategy,
                                      "run.busy_session_strategy", allow_unspecified=True)
        if "metadata" in writes.set_body:
            violations += metadata_violations(writes.set_body["metadata"], "run.metadata")
        violations += body_violations(writes.set_body, "run")
        expected, found = _statuses(expected_statuses, "expected_statuses")
        violations += found + _event_violations(events, rid, required=False)
        errors.collect(violations)
        if "busy_session_strategy" in writes.columns:
            strategy = writes.columns["busy_session_strategy"] or BusySessionStrategy.QUEUE
            writes = replace(writes, columns={**writes.columns, "busy_session_strategy": strategy})
        async with self._db.transaction(user_id) as conn:
            current = await self._repo.lock_run(conn, rid)
            if current is None:
                raise not_found("run", "run_id", rid)
            status, last_sequence = current
            if require_session_head and not await self._repo.is_session_head(conn, rid):
                raise errors.Aborted(f"run {rid} waits behind an earlier run of its session",
                                     reason="RUN_NOT_SESSION_HEAD", metadata={"run_id": str(rid)})
            if expected and status not in expected:
                name = f"RUN_STATUS_{RunStatus(status).name}"
                raise errors.Aborted(f"run {rid} is {name}, not one of the expected statuses",
                                     reason="RUN_STATUS_CONFLICT", metadata={"run_id": str(rid), "status": name})
            if events:
                _check_sequence(rid, last_sequence, events)
                last_sequence = events[-1].sequence
            return await self._repo.update_run(conn, rid, writes, last_sequence=last_sequence, lease=lease,
                                               events=list(events))

    async def get_active_run(self, user_id: str, session_id: str) -> Run | None:
        sid = parse_id(session_id, "session_id")
        async with self._db.transaction(user_id, readonly=True) as conn:
            if not await self._repo.session_exists(conn, sid):
                raise session_not_found(sid)
            return await self._repo.get_active_run(conn, sid)

    # -- run steps --------------------------------------------------------------------------

    async def create_run_step(self, user_id: str, draft: Draft) -> RunStep:
        rid = parse_id(draft.get("run_id", ""), "run_step.run_id")
        step_type, status = draft.get("type", 0), draft.get("status", 0)
        violations = enum_violations(step_type, RunStepType, "run_step.type", allow_unspecified=False)
        violations += enum_violations(status, RunStepStatus, "run_step.status", allow_unspecified=True)
        for name, kind in RUN_STEP_DETAILS.items():
            if name in draft.fields and step_type != kind:
                violations.append(FieldViolation(f"run_step.{name}", "does not match the step's type"))
        body = {k: v for k, v in draft.fields.items() if k in RUN_STEP_FIELDS and k not in RUN_STEP_COLUMNS}
        violations += body_violations(body, "run_step")
        errors.collect(violations)
        async with self._db.transaction(user_id) as conn:
            step = await self._repo.insert_run_step(
                conn, rid, step_type=RunStepType(step_type), status=RunStepStatus(status or RunStepStatus.IN_PROGRESS),
                body=body,
            )
        if step is None:
            raise not_found("run", "run_id", rid)
        return step

    async def update_run_step(self, user_id: str, step_id: str, paths: Sequence[str], draft: Draft) -> RunStep:
        step_id_ = parse_id(step_id, "run_step.id")
        writes, violations = _writes(paths, draft, writable=RUN_STEP_FIELDS, columns=RUN_STEP_COLUMNS,
                                     prefix="run_step", oneof=tuple(RUN_STEP_DETAILS))
        if "type" in writes.columns:
            violations += enum_violations(writes.columns["type"] or 0, RunStepType, "run_step.type",
                                      allow_unspecified=False)
        if "status" in writes.columns:
            violations += enum_violations(writes.columns["status"] or 0, RunStepStatus, "run_step.status",
                                      allow_unspecified=False)
        violations += body_violations(writes.set_body, "run_step")
        errors.collect(violations)
        async with self._db.transaction(user_id) as conn:
            step = await self._repo.update_run_step(conn, step_id_, writes)
            if step is None:
                raise not_found("run_step", "run_step_id", step_id_)
            mismatched = [name for name, kind in RUN_STEP_DETAILS.items() if name in step.body and step.type != kind]
            if mismatched:  # raising rolls the update back
                raise errors.InvalidArgument.for_field(f"run_step.{mismatched[0]}", "does not match the step's type")
        return step

    async def list_run_steps(self, user_id: str, run_id: str, *, size: int, token: str) -> Page:
        rid = parse_id(run_id, "run_id")
        limit = page_size(size, default=20, maximum=100)
        query_key = f"run_steps|{user_id}|{rid}"
        after_seq = _seq_position(token, query_key)
        async with self._db.transaction(user_id, readonly=True) as conn:
            if not await self._repo.run_exists(conn, rid):
                raise not_found("run", "run_id", rid)
            rows = await self._repo.list_run_steps(conn, rid, after_seq=after_seq, limit=limit + 1)
        page, more = rows[:limit], len(rows) > limit
        next_token = encode_token(query_key, [page[-1][0]]) if more else ""
        return Page(items=[step for _, step in page], next_page_token=next_token)

    # -- run events -------------------------------------------------------------------------

    async def append_run_events(self, user_id: str, run_id: str, events: Sequence[NewRunEvent]) -> int:
        """Stores the events and returns the run's new last_sequence."""
        rid = parse_id(run_id, "run_id")
        errors.collect(_event_violations(events, rid, required=True))
        first = events[0].sequence
        consecutive = [e.sequence for e in events] == list(range(first, first + len(events)))
        async with self._db.transaction(user_id) as conn:
            # One statement in the common case (the batch is the run's next events); otherwise
            # the run row lock orders appenders and the error says what was expected.
            if consecutive and await self._repo.append_events(conn, rid, events):
                return events[-1].sequence
            current = await self._repo.lock_run(conn, rid)
            if current is None:
                raise not_found("run", "run_id", rid)
            _check_sequence(rid, current[1], events)
            await self._repo.insert_events(conn, rid, events)
            await self._repo.set_last_sequence(conn, rid, events[-1].sequence)
        return events[-1].sequence

    async def list_run_events(self, user_id: str, run_id: str, *, after_sequence: int, size: int, token: str) -> Page:
        rid = parse_id(run_id, "run_id")
        if after_sequence < 0:
            raise errors.InvalidArgument.for_field("after_sequence", "must not be negative")
        limit = page_size(size, default=100, maximum=1000)
        query_key = f"run_events|{user_id}|{rid}|{after_sequence}"
        position = _seq_position(token, query_key)
        after = after_sequence if position is None else max(position, after_sequence)
        async with self._db.transaction(user_id, readonly=True) as conn:
            last_sequence = await self._repo.get_last_sequence(conn, rid)
            if last_sequence is None:
                raise not_found("run", "run_id", rid)
            events: list[RunEvent] = []
            if after < last_sequence:  # past the end there is nothing to read
                events = await self._repo.list_events(conn, rid, after_sequence=after, limit=limit + 1)
        page, more = events[:limit], len(events) > limit
        next_token = encode_token(query_key, [page[-1].sequence]) if more else ""
        return Page(items=page, next_page_token=next_token)

    async def watch_run_events(
        self, user_id: str, run_id: str, *, after_sequence: int, status_only: bool = False, page: int = 500
    ) -> AsyncIterator[RunChange]:
        """Every stored event after `after_sequence`, then each new one as its commit lands,
        until the run has ended and its last event was yielded. Sleeps between changes (woken
        by the run's NOTIFY), never polls. With `status_only`, the changes of up to
        STATUS_ONLY_COALESCE_SECONDS are answered by one read (the latest status)."""
        rid = parse_id(run_id, "run_id")
        if after_sequence < 0:
            raise errors.InvalidArgument.for_field("after_sequence", "must not be negative")
        await self._changes.start()
        with self._changes.subscribe(rid) as changed:
            sent = after_sequence
            last_status: RunStatus | None = None
            while True:
                changed.clear()
                async with self._db.transaction(user_id, readonly=True) as conn:
                    current = await self._repo.get_status(conn, rid)
                    if current is None:
                        raise not_found("run", "run_id", rid)
                    status, last_sequence = current
                    events: list[RunEvent] = []
                    if not status_only and sent < last_sequence:
                        events = await self._repo.list_events(conn, rid, after_sequence=sent,
                                                              limit=min(page, last_sequence - sent))
                if events:
                    sent = events[-1].sequence
                if status_only:
                    sent = last_sequence
                if events or status != last_status:
                    last_status = RunStatus(status)
                    yield RunChange(events=events, status=last_status, last_sequence=last_sequence)
                if sent < last_sequence:
                    continue  # more stored than one page: read on without waiting
                if status not in ACTIVE_RUN_STATUSES:
                    return
                await changed.wait()
                if status_only:
                    # A running run changes at every event batch, and a status watcher
                    # (the engine, listening for a cancel) needs only the latest status:
                    # one read per interval instead of one per batch.
                    await asyncio.sleep(STATUS_ONLY_COALESCE_SECONDS)

    # -- the queue (engine scope, across users) ---------------------------------------------

    async def claim_runs(self, scopes: Iterable[str], lease: Lease, *, max_runs: int) -> list[Claim]:
        _require_engine(scopes)
        violations = _lease_violations(lease, "lease", allow_release=False)
        if not 0 <= max_runs <= MAX_CLAIMS:
            violations.append(FieldViolation("max_runs", f"must be between 1 and {MAX_CLAIMS} (0 for 10)"))
        errors.collect(violations)
        async with self._db.transaction(ENGINE_USER) as conn:
            return await self._repo.claim_runs(conn, lease, max_runs or 10)

    async def renew_run_leases(self, scopes: Iterable[str], lease: Lease, run_ids: Sequence[str]) -> list[uuid.UUID]:
        _require_engine(scopes)
        violations = _lease_violations(lease, "lease", allow_release=False)
        if len(run_ids) > MAX_RENEWALS:
            violations.append(FieldViolation("run_ids", f"has more than {MAX_RENEWALS} runs"))
        ids: list[uuid.UUID] = []
        for i, value in enumerate(run_ids[:MAX_RENEWALS]):
            try:
                ids.append(parse_id(value, f"run_ids[{i}]"))
            except errors.InvalidArgument as error:
                violations += error.field_violations
        errors.collect(violations)
        if not ids:
            return []
        async with self._db.transaction(ENGINE_USER) as conn:
            return await self._repo.renew_leases(conn, lease, ids)

    # -- function result cache --------------------------------------------------------------

    async def lookup_function_results(self, user_id: str, keys: Sequence[FunctionResult]) -> list[FunctionResult]:
        errors.collect(_function_key_violations(keys, "keys"))
        if not keys:
            return []
        wanted = {(k.name, _arguments_digest(k.arguments)): k for k in keys}
        async with self._db.transaction(user_id, readonly=True) as conn:
            rows = await self._repo.lookup_function_results(conn, [(n, d) for n, d in wanted])
        # The digest found the row; the stored text must also be the same (no collisions served).
        return [r for r in rows if (r.name, _arguments_digest(r.arguments)) in wanted
                and wanted[(r.name, _arguments_digest(r.arguments))].arguments == r.arguments]

    async def store_function_results(self, user_id: str, results: Sequence[FunctionResult]) -> None:
        violations = _function_key_violations(results, "results")
        now = datetime.now(timezone.utc)
        for i, result in enumerate(results[:MAX_FUNCTION_RESULTS]):
            if len(result.output) > FUNCTION_OUTPUT_MAX_CHARS:
                violations.append(FieldViolation(f"results[{i}].output",
                                                 f"must have at most {FUNCTION_OUTPUT_MAX_CHARS} characters"))
            violations += nul_violations(result.output, f"results[{i}].output")
            if result.expire_time is None:
                violations.append(FieldViolation(f"results[{i}].expire_time", "is required"))
            elif not now < result.expire_time <= now + FUNCTION_RESULT_MAX_TTL + timedelta(minutes=1):
                violations.append(FieldViolation(f"results[{i}].expire_time",
                                                 "must be in the future and at most 24 hours away"))
        errors.collect(violations)
        if not results:
            return
        async with self._db.transaction(user_id) as conn:
            await self._repo.store_function_results(
                conn, [(r.name, _arguments_digest(r.arguments), r.arguments, r.output, r.expire_time) for r in results]
            )
