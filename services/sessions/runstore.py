"""The run store: assistants, runs, run steps and run event logs for the gateway's run
engine, independent of transport.

Every operation acts as one user inside one transaction. Requests are validated before the
transaction starts; the checks that depend on stored state (a busy session, a run's status
for compare-and-set, the next event sequence) happen under a row lock in the same
transaction as the write, so they cannot be raced, and a failed check writes nothing.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from services.runtime import errors
from services.runtime.db import Database
from services.runtime.errors import FieldViolation
from services.runtime.pagination import decode_time_and_id, decode_token, encode_time_and_id, encode_token, page_size
from services.runtime.validation import metadata_violations, parse_id, text_violations
from services.sessions.domain import _enum_value, _session_not_found
from services.sessions.models import Page, SessionStatus, SortOrder
from services.sessions.runstore_models import (
    ASSISTANT_FIELDS,
    RUN_FIELDS,
    RUN_STEP_DETAILS,
    RUN_STEP_FIELDS,
    Assistant,
    BusySessionStrategy,
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
from services.sessions.runstore_repository import RunStoreRepository

NAME_MAX_CHARS = 256
DESCRIPTION_MAX_CHARS = 512
MODEL_MAX_CHARS = 256
INSTRUCTIONS_MAX_CHARS = 256_000
MAX_TOOLS = 128
MAX_EVENTS_PER_APPEND = 1000

# Fields each resource keeps as columns; the rest of its writable fields live in `body`.
RUN_COLUMNS = ("status", "busy_session_strategy", "expire_time")
RUN_STEP_COLUMNS = ("type", "status")


def _not_found(kind: str, key: str, value: object) -> errors.NotFound:
    return errors.NotFound(f"{kind.replace('_', ' ')} {value} not found", reason=f"{kind.upper()}_NOT_FOUND",
                           metadata={key: str(value)})


def _invalid_token() -> errors.InvalidArgument:
    return errors.InvalidArgument.for_field("page_token", "is not a page token issued by this service",
                                           reason="PAGE_TOKEN_INVALID")


def _seq_position(token: str, query_key: str) -> int | None:
    position = decode_token(token, query_key)
    if position is None:
        return None
    if len(position) != 1 or not isinstance(position[0], int) or isinstance(position[0], bool):
        raise _invalid_token()
    if not 0 <= position[0] < 2**63:  # tokens are opaque, not signed: keep forged ones out of SQL
        raise _invalid_token()
    return position[0]


def _nul_violations(value: Any, path: str) -> list[FieldViolation]:
    """PostgreSQL's jsonb cannot hold NUL characters: name the first field that has one."""
    if isinstance(value, str):
        return [FieldViolation(path, "must not contain NUL characters")] if "\x00" in value else []
    if isinstance(value, dict):
        for key, item in value.items():
            found = _nul_violations(key, path) or _nul_violations(item, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _nul_violations(item, f"{path}[{i}]")
            if found:
                return found
    return []


def _body_violations(body: dict[str, Any], prefix: str) -> list[FieldViolation]:
    return [v for name, value in body.items() for v in _nul_violations(value, f"{prefix}.{name}")]


def _number_violations(value: Any, field: str, low: float, high: float) -> list[FieldViolation]:
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not low <= value <= high:
        return [FieldViolation(field, f"must be between {low:g} and {high:g}")]
    return []


def _writes(
    paths: Sequence[str], draft: Draft, *, writable: Sequence[str], columns: Sequence[str], prefix: str,
    oneof: Sequence[str] = (), allow_empty: bool = False,
) -> tuple[ColumnWrites, list[FieldViolation]]:
    """The writes an update mask asks for (AIP-134): without a mask, every writable field the
    request populates. Only top-level fields; messages, lists and maps are replaced whole, and
    writing one member of the `oneof` fields clears the others."""
    if not paths:
        paths = [name for name in writable if name in draft.fields]
        if not paths and not allow_empty:
            raise errors.InvalidArgument.for_field("update_mask", "names no field to update", reason="EMPTY_UPDATE")
    violations = [
        FieldViolation("update_mask", f"unknown path {p!r}; updatable: {', '.join(writable)}")
        for p in paths if p not in writable
    ]
    wanted = [p for p in dict.fromkeys(paths) if p in writable]
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
    found += _number_violations(fields.get("temperature"), f"{prefix}.temperature", 0, 2)
    found += _number_violations(fields.get("top_p"), f"{prefix}.top_p", 0, 1)
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
        found += _body_violations(event.body, f"events[{i}]")
    return found


def _check_sequence(run_id: uuid.UUID, last_sequence: int, events: Sequence[NewRunEvent]) -> None:
    expected = last_sequence + 1
    if [e.sequence for e in events] != list(range(expected, expected + len(events))):
        raise errors.Aborted(
            f"run {run_id} expects its next event to have sequence {expected}, then consecutive ones",
            reason="RUN_EVENT_SEQUENCE_CONFLICT",
            metadata={"run_id": str(run_id), "expected_sequence": str(expected)},
        )


def _statuses(values: Iterable[int], field: str) -> tuple[list[int], list[FieldViolation]]:
    values = list(dict.fromkeys(values))
    found: list[FieldViolation] = []
    for value in values:
        found += _enum_value(value, RunStatus, field, allow_unspecified=False)
    return values, found


class RunStore:
    def __init__(self, db: Database, repository: RunStoreRepository | None = None) -> None:
        self._db = db
        self._repo = repository or RunStoreRepository()

    # -- assistants -------------------------------------------------------------------------

    async def create_assistant(self, user_id: str, draft: Draft) -> Assistant:
        body = {k: v for k, v in draft.fields.items() if k in ASSISTANT_FIELDS}
        violations = _assistant_violations(body, "assistant") + _body_violations(body, "assistant")
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
            raise _not_found("assistant", "assistant_id", aid)
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
        violations += _body_violations(writes.set_body, "assistant")
        if "model" in writes.clear_body:  # unset in the request but named by the mask
            violations.append(FieldViolation("assistant.model", "is required"))
        errors.collect(violations)
        async with self._db.transaction(user_id) as conn:
            assistant = await self._repo.update_assistant(conn, aid, writes)
        if assistant is None:
            raise _not_found("assistant", "assistant_id", aid)
        return assistant

    async def delete_assistant(self, user_id: str, assistant_id: str) -> None:
        aid = parse_id(assistant_id, "assistant_id")
        async with self._db.transaction(user_id) as conn:
            deleted = await self._repo.delete_assistant(conn, aid)
        if not deleted:
            raise _not_found("assistant", "assistant_id", aid)

    # -- runs -------------------------------------------------------------------------------

    async def create_run(self, user_id: str, draft: Draft) -> Run:
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
        violations += _enum_value(strategy, BusySessionStrategy, "run.busy_session_strategy", allow_unspecified=True)
        violations += metadata_violations(draft.get("metadata", {}), "run.metadata")
        body = {k: v for k, v in draft.fields.items() if k in RUN_FIELDS and k not in RUN_COLUMNS}
        violations += _body_violations(body, "run")
        errors.collect(violations)
        assert sid is not None and aid is not None
        strategy = BusySessionStrategy(strategy or BusySessionStrategy.REJECT)
        async with self._db.transaction(user_id) as conn:
            # The session row lock serialises run creation per session: the busy check and
            # the insert cannot interleave with another create's.
            session_status = await self._repo.lock_session(conn, sid)
            if session_status is None:
                raise _session_not_found(sid)
            if session_status == SessionStatus.CLOSED:
                raise errors.FailedPrecondition(f"session {sid} is closed and accepts no new runs",
                                                reason="SESSION_CLOSED", metadata={"session_id": str(sid)})
            if not await self._repo.assistant_exists(conn, aid):
                raise _not_found("assistant", "assistant_id", aid)
            if strategy == BusySessionStrategy.REJECT:
                active = await self._repo.get_active_run(conn, sid)
                if active is not None:
                    raise errors.FailedPrecondition(
                        f"session {sid} already has an active run", reason="SESSION_BUSY",
                        metadata={"session_id": str(sid), "active_run_id": str(active.id)},
                    )
            return await self._repo.insert_run(
                conn, session_id=sid, assistant_id=aid, strategy=strategy, expire_time=draft.get("expire_time"),
                body=body,
            )

    async def get_run(self, user_id: str, run_id: str) -> Run:
        rid = parse_id(run_id, "run_id")
        async with self._db.transaction(user_id, readonly=True) as conn:
            run = await self._repo.get_run(conn, rid)
        if run is None:
            raise _not_found("run", "run_id", rid)
        return run

    async def list_runs(
        self, user_id: str, session_id: str, *, size: int, token: str, statuses: Iterable[int], order: int
    ) -> Page:
        sid = parse_id(session_id, "session_id")
        wanted, violations = _statuses(statuses, "statuses")
        violations += _enum_value(order, SortOrder, "order", allow_unspecified=True)
        errors.collect(violations)
        limit = page_size(size, default=20, maximum=100)
        sort = SortOrder(order) if order else SortOrder.DESCENDING
        query_key = f"runs|{user_id}|{sid}|{sorted(wanted)}|{sort}"
        after_seq = _seq_position(token, query_key)
        async with self._db.transaction(user_id, readonly=True) as conn:
            if not await self._repo.session_exists(conn, sid):
                raise _session_not_found(sid)
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
    ) -> Run:
        rid = parse_id(run_id, "run.id")
        writes, violations = _writes(paths, draft, writable=RUN_FIELDS, columns=RUN_COLUMNS, prefix="run",
                                     allow_empty=bool(events))
        if "status" in writes.columns:
            violations += _enum_value(writes.columns["status"] or 0, RunStatus, "run.status", allow_unspecified=False)
        if "busy_session_strategy" in writes.columns:  # unspecified means reject, as at creation
            violations += _enum_value(writes.columns["busy_session_strategy"] or 0, BusySessionStrategy,
                                      "run.busy_session_strategy", allow_unspecified=True)
        if "metadata" in writes.set_body:
            violations += metadata_violations(writes.set_body["metadata"], "run.metadata")
        violations += _body_violations(writes.set_body, "run")
        expected, found = _statuses(expected_statuses, "expected_statuses")
        violations += found + _event_violations(events, rid, required=False)
        errors.collect(violations)
        if "busy_session_strategy" in writes.columns:
            strategy = writes.columns["busy_session_strategy"] or BusySessionStrategy.REJECT
            writes = replace(writes, columns={**writes.columns, "busy_session_strategy": strategy})
        async with self._db.transaction(user_id) as conn:
            current = await self._repo.lock_run(conn, rid)
            if current is None:
                raise _not_found("run", "run_id", rid)
            status, last_sequence = current
            if expected and status not in expected:
                name = f"RUN_STATUS_{RunStatus(status).name}"
                raise errors.Aborted(f"run {rid} is {name}, not one of the expected statuses",
                                     reason="RUN_STATUS_CONFLICT", metadata={"run_id": str(rid), "status": name})
            if events:
                _check_sequence(rid, last_sequence, events)
                last_sequence = events[-1].sequence
                await self._repo.insert_events(conn, rid, events)
            return await self._repo.update_run(conn, rid, writes, last_sequence=last_sequence)

    async def get_active_run(self, user_id: str, session_id: str) -> Run | None:
        sid = parse_id(session_id, "session_id")
        async with self._db.transaction(user_id, readonly=True) as conn:
            if not await self._repo.session_exists(conn, sid):
                raise _session_not_found(sid)
            return await self._repo.get_active_run(conn, sid)

    # -- run steps --------------------------------------------------------------------------

    async def create_run_step(self, user_id: str, draft: Draft) -> RunStep:
        rid = parse_id(draft.get("run_id", ""), "run_step.run_id")
        step_type, status = draft.get("type", 0), draft.get("status", 0)
        violations = _enum_value(step_type, RunStepType, "run_step.type", allow_unspecified=False)
        violations += _enum_value(status, RunStepStatus, "run_step.status", allow_unspecified=True)
        for name, kind in RUN_STEP_DETAILS.items():
            if name in draft.fields and step_type != kind:
                violations.append(FieldViolation(f"run_step.{name}", "does not match the step's type"))
        body = {k: v for k, v in draft.fields.items() if k in RUN_STEP_FIELDS and k not in RUN_STEP_COLUMNS}
        violations += _body_violations(body, "run_step")
        errors.collect(violations)
        async with self._db.transaction(user_id) as conn:
            step = await self._repo.insert_run_step(
                conn, rid, step_type=RunStepType(step_type), status=RunStepStatus(status or RunStepStatus.IN_PROGRESS),
                body=body,
            )
        if step is None:
            raise _not_found("run", "run_id", rid)
        return step

    async def update_run_step(self, user_id: str, step_id: str, paths: Sequence[str], draft: Draft) -> RunStep:
        step_id_ = parse_id(step_id, "run_step.id")
        writes, violations = _writes(paths, draft, writable=RUN_STEP_FIELDS, columns=RUN_STEP_COLUMNS,
                                     prefix="run_step", oneof=tuple(RUN_STEP_DETAILS))
        if "type" in writes.columns:
            violations += _enum_value(writes.columns["type"] or 0, RunStepType, "run_step.type",
                                      allow_unspecified=False)
        if "status" in writes.columns:
            violations += _enum_value(writes.columns["status"] or 0, RunStepStatus, "run_step.status",
                                      allow_unspecified=False)
        violations += _body_violations(writes.set_body, "run_step")
        errors.collect(violations)
        async with self._db.transaction(user_id) as conn:
            step = await self._repo.update_run_step(conn, step_id_, writes)
            if step is None:
                raise _not_found("run_step", "run_step_id", step_id_)
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
                raise _not_found("run", "run_id", rid)
            rows = await self._repo.list_run_steps(conn, rid, after_seq=after_seq, limit=limit + 1)
        page, more = rows[:limit], len(rows) > limit
        next_token = encode_token(query_key, [page[-1][0]]) if more else ""
        return Page(items=[step for _, step in page], next_page_token=next_token)

    # -- run events -------------------------------------------------------------------------

    async def append_run_events(self, user_id: str, run_id: str, events: Sequence[NewRunEvent]) -> int:
        """Stores the events and returns the run's new last_sequence."""
        rid = parse_id(run_id, "run_id")
        errors.collect(_event_violations(events, rid, required=True))
        async with self._db.transaction(user_id) as conn:
            # The run row lock orders appenders: the second one sees the first one's sequence.
            current = await self._repo.lock_run(conn, rid)
            if current is None:
                raise _not_found("run", "run_id", rid)
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
                raise _not_found("run", "run_id", rid)
            events: list[RunEvent] = []
            if after < last_sequence:  # past the end there is nothing to read
                events = await self._repo.list_events(conn, rid, after_sequence=after, limit=limit + 1)
        page, more = events[:limit], len(events) > limit
        next_token = encode_token(query_key, [page[-1].sequence]) if more else ""
        return Page(items=page, next_page_token=next_token)
