"""The audit log: security-relevant events, appended to the service's own `audit_events`
table (created by the runtime's migrations, `open_service_database(..., audit=True)`).

One writer for every service:

- `await audit.write(conn, Kind.SESSION_DELETED, ...)` inserts the event in the caller's
  transaction, so a change and its event commit (or roll back) together;
- `audit.record(Kind.PERMISSION_DENIED, ...)` queues an event that accompanies no write
  (denials, authentication failures, reads): it costs the request a few microseconds and is
  written with others in one statement by a background flusher (every `flush_interval`, or
  sooner when `batch_size` wait), so what a crash can lose is the last flush interval.

Who, which request and which trace are filled in from the call being served (the error
mapping starts a call context, the identity check names the actor). A service without a
database (the assistants engine, the sandbox) writes its events as log lines instead.

The table is append-only for the service role (SELECT and INSERT only, no UPDATE or DELETE
policy, and a trigger that refuses changes); old events go only through the SECURITY
DEFINER function `purge_audit_events`, which the retention loop calls every
`retention_interval` for events older than `retention_days` (0 keeps them forever), writing
a `retention.purged` event with each batch it deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import json
import logging
import math
import re
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from opentelemetry import trace

from services.runtime import errors
from services.runtime.config import env_float, env_int
from services.runtime.identity import USER_ID_PATTERN
from services.runtime.validation import uuid7

log = logging.getLogger("parley.audit")


class Kind(enum.StrEnum):
    """Every kind of audit event (docs/audit.md says where each is written)."""

    API_KEY_CREATED = "api_key.created"
    API_KEY_ROTATED = "api_key.rotated"
    API_KEY_REVOKED = "api_key.revoked"
    AUTH_FAILED = "auth.failed"
    PERMISSION_DENIED = "permission.denied"
    USAGE_READ_OTHER_USER = "usage.read_other_user"
    BUDGET_READ_OTHER_USER = "budget.read_other_user"
    BUDGET_CHANGED = "budget.changed"
    RETENTION_PURGED = "retention.purged"
    USER_DATA_DELETED = "user_data.deleted"
    SESSION_DELETED = "session.deleted"
    FILE_DELETED = "file.deleted"
    VECTOR_STORE_DELETED = "vector_store.deleted"
    ASSISTANT_DELETED = "assistant.deleted"
    AUDIT_LOG_READ = "audit_log.read"
    AUDIT_LOG_EXPORTED = "audit_log.exported"


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


# Details are a few small facts; anything bigger is cut, so an event can never carry content.
MAX_DETAILS = 16
MAX_DETAIL_KEY = 64
MAX_DETAIL_TEXT = 256
MAX_FIELD_TEXT = 256
DetailValue = str | int | float | bool


# Slots, not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
# which doubled the cost of queueing an event (bench.audit_log). Events are not changed.
@dataclass(slots=True)
class AuditEvent:
    kind: str
    service: str
    id: uuid.UUID = field(default_factory=uuid7)
    event_time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    outcome: str = Outcome.SUCCESS
    actor_user_id: str = ""
    subject_user_id: str = ""
    request_id: str = ""
    trace_id: str = ""
    source: str = ""
    resource_id: str = ""
    details: Mapping[str, DetailValue] = field(default_factory=dict)

    def as_json(self) -> dict:
        """The event as one JSON object (the log sink's and the export's field names)."""
        return {"id": str(self.id), "event_time": self.event_time.isoformat(), "service": self.service,
                "kind": self.kind, "actor_user_id": self.actor_user_id, "subject_user_id": self.subject_user_id,
                "request_id": self.request_id, "trace_id": self.trace_id, "source": self.source,
                "resource_id": self.resource_id, "outcome": self.outcome, "details": dict(self.details)}


def clean_details(details: Mapping[str, object] | None) -> dict[str, DetailValue]:
    """At most MAX_DETAILS flat entries of short strings, numbers and booleans."""
    cleaned: dict[str, DetailValue] = {}
    if not details:
        return cleaned
    for key, value in details.items():
        if len(cleaned) == MAX_DETAILS:
            break
        key = str(key)[:MAX_DETAIL_KEY]
        if isinstance(value, int):  # bool included
            cleaned[key] = value
        elif isinstance(value, float):
            cleaned[key] = value if math.isfinite(value) else str(value)
        else:
            cleaned[key] = str(value)[:MAX_DETAIL_TEXT]
    return cleaned


# --- the call being served ------------------------------------------------------------------


class _Call:
    """What an event learns from the call it happens in. Filled lazily: most calls record
    nothing, so nothing is looked up until an event is made."""

    __slots__ = ("metadata", "context", "actor", "request_id")

    def __init__(self, metadata, context, request_id: str | None = None) -> None:
        self.metadata = metadata
        self.context = context
        self.actor = ""
        self.request_id = request_id  # None: not looked up yet


_call: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("parley_audit_call", default=None)
REQUEST_ID_KEY = "x-request-id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def begin_call(metadata, context, request_id: str | None = None) -> None:
    """Called by the error mapping as each call starts (the gateway's forwarding does it
    itself, with the request id it settled on): `metadata` the call's invocation metadata,
    `context` its servicer context."""
    _call.set(_Call(metadata, context, request_id))


def note_actor(user_id: str) -> None:
    """The verified caller of the call being served (the identity check, or the gateway once
    it has authenticated the credential)."""
    call = _call.get()
    if call is not None:
        call.actor = user_id


def peer_host(peer: str | None) -> str:
    """The host of a gRPC peer string (`ipv4:10.0.0.7:53211` → `10.0.0.7`, `ipv6:[::1]:5` →
    `::1`): a source, whatever port a connection happened to use."""
    if not peer:
        return ""
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv6" and rest.startswith("["):
        return rest[1:rest.find("]")] if "]" in rest else rest
    if scheme in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0]
    return peer[:MAX_FIELD_TEXT]


def call_source() -> str:
    call = _call.get()
    if call is None or call.context is None:
        return ""
    try:
        return peer_host(call.context.peer())
    except Exception:  # noqa: BLE001 - a context without a peer (tests, closed calls)
        return ""


def _call_request_id(call: _Call | None) -> str:
    if call is None:
        return ""
    if call.request_id is None:
        call.request_id = ""
        for key, value in call.metadata or ():
            if key == REQUEST_ID_KEY and _REQUEST_ID.match(str(value)):
                call.request_id = str(value)
                break
    return call.request_id


def current_request_id() -> str:
    """The request id of the call being served: the caller's x-request-id, else one made up
    now (the gateway's own services, called without one); "" outside a call."""
    call = _call.get()
    if call is None:
        return ""
    if not _call_request_id(call):
        call.request_id = uuid.uuid4().hex
    return call.request_id


def _trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


# --- filters ------------------------------------------------------------------------------

MAX_FILTER_KINDS = 32
KINDS = frozenset(k.value for k in Kind)


@dataclass(frozen=True)
class AuditFilter:
    start: datetime | None = None
    end: datetime | None = None
    kinds: tuple[str, ...] = ()
    actor_user_id: str = ""
    subject_user_id: str = ""

    def violations(self, prefix: str = "filter.") -> list[errors.FieldViolation]:
        found = []
        if len(self.kinds) > MAX_FILTER_KINDS:
            found.append(errors.FieldViolation(f"{prefix}kinds", f"at most {MAX_FILTER_KINDS} kinds"))
        for i, kind in enumerate(self.kinds[:MAX_FILTER_KINDS]):
            if kind not in KINDS:
                found.append(errors.FieldViolation(f"{prefix}kinds[{i}]", "is not a known audit event kind"))
        for name in ("actor_user_id", "subject_user_id"):
            value = getattr(self, name)
            if value and not USER_ID_PATTERN.match(value):
                found.append(errors.FieldViolation(f"{prefix}{name}", "is not a valid user id"))
        if self.start is not None and self.end is not None and self.start >= self.end:
            found.append(errors.FieldViolation(f"{prefix}start_time", "must be before end_time"))
        return found

    def key(self) -> str:
        """A fingerprint of the filter, for page tokens."""
        return json.dumps([self.start.isoformat() if self.start else "", self.end.isoformat() if self.end else "",
                           sorted(set(self.kinds)), self.actor_user_id, self.subject_user_id])


Position = tuple[datetime, uuid.UUID]


def _text(value: enum.StrEnum | str) -> str:
    return value.value if isinstance(value, enum.Enum) else value


# --- the log --------------------------------------------------------------------------------

_COLUMNS = ("id, event_time, service, kind, actor_user_id, subject_user_id, request_id, trace_id, source, "
            "resource_id, outcome, details")
_INSERT_ONE = (f"INSERT INTO audit_events ({_COLUMNS}) "
               "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb)")
_INSERT_MANY = (f"INSERT INTO audit_events ({_COLUMNS}) "
                "SELECT i, t, s, k, a, u, r, tr, so, re, o, d::jsonb FROM unnest("
                "$1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], "
                "$8::text[], $9::text[], $10::text[], $11::text[], $12::text[]) AS x(i, t, s, k, a, u, r, tr, so, re, o, d) "
                # A batch whose commit went unanswered (a lost connection, a flush cancelled at
                # shutdown) is written again: the ids it already stored are skipped. (The conflict
                # check reads the table, so the flush runs as a reader: see `flush`.)
                "ON CONFLICT (id) DO NOTHING")
PURGE_BATCH = 10_000


def _row(event: AuditEvent) -> tuple:
    return (event.id, event.event_time, event.service, event.kind, event.actor_user_id, event.subject_user_id,
            event.request_id, event.trace_id, event.source, event.resource_id, event.outcome,
            json.dumps(dict(event.details), separators=(",", ":")))


def _event(row) -> AuditEvent:
    return AuditEvent(kind=row["kind"], service=row["service"], id=row["id"], event_time=row["event_time"],
                      outcome=row["outcome"], actor_user_id=row["actor_user_id"],
                      subject_user_id=row["subject_user_id"], request_id=row["request_id"], trace_id=row["trace_id"],
                      source=row["source"], resource_id=row["resource_id"], details=json.loads(row["details"]))


@dataclass(frozen=True)
class AuditSettings:
    # Events older than this many days are purged; 0 keeps them forever.
    retention_days: float = 365.0
    retention_interval_seconds: float = 3600.0
    flush_interval_seconds: float = 0.5
    batch_size: int = 500
    max_buffered: int = 100_000

    @classmethod
    def from_env(cls) -> AuditSettings:
        return cls(
            retention_days=env_float("PARLEY_AUDIT_RETENTION_DAYS", 365.0, minimum=0),
            retention_interval_seconds=env_float("PARLEY_AUDIT_RETENTION_INTERVAL_SECONDS", 3600.0, minimum=1),
            flush_interval_seconds=env_float("PARLEY_AUDIT_FLUSH_SECONDS", 0.5, minimum=0.01),
            batch_size=env_int("PARLEY_AUDIT_BATCH_SIZE", 500, minimum=1),
            max_buffered=env_int("PARLEY_AUDIT_MAX_BUFFERED", 100_000, minimum=1),
        )


class AuditLog:
    """One service's audit log. With a database (`db`, opened with `audit=True`) events go to
    its `audit_events` table and can be listed; without, each event is one log line."""

    def __init__(self, service: str, db=None, settings: AuditSettings | None = None, *, enabled: bool = True) -> None:
        self.service = service
        self.db = db
        self.settings = settings or AuditSettings.from_env()
        self.enabled = enabled
        self._buffer: deque[AuditEvent] = deque()
        self._wake: asyncio.Event | None = None  # made by start(), inside the running loop
        self._flushing = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._dropped = 0
        self.written = 0
        # Called as the log closes, before its last flush (e.g. summaries still pending).
        self.before_close: list = []

    @classmethod
    def discarding(cls) -> AuditLog:
        """A log that records nothing (domain objects built without one, in tests)."""
        return cls("", None, AuditSettings(retention_days=0), enabled=False)

    @property
    def queryable(self) -> bool:
        return self.enabled and self.db is not None

    # -- making events ----------------------------------------------------------------------

    def event(self, kind: Kind | str, *, outcome: Outcome | str = Outcome.SUCCESS, actor: str | None = None,
              subject: str = "", resource: str = "", source: str | None = None,
              details: Mapping[str, object] | None = None) -> AuditEvent:
        """An event of this service, with the actor, request id, trace id (and, unless given,
        no source) of the call being served."""
        call = _call.get()
        return AuditEvent(
            kind=_text(kind), service=self.service, id=uuid7(), event_time=datetime.now(timezone.utc),
            outcome=_text(outcome),
            actor_user_id=(call.actor if actor is None and call is not None else actor or "")[:MAX_FIELD_TEXT],
            subject_user_id=subject[:MAX_FIELD_TEXT], request_id=_call_request_id(call), trace_id=_trace_id(),
            source=(source or "")[:MAX_FIELD_TEXT], resource_id=resource[:MAX_FIELD_TEXT],
            details=clean_details(details),
        )

    async def write(self, conn, kind: Kind | str, **fields) -> AuditEvent | None:
        """Appends an event inside the caller's transaction on `conn` (see `event` for the
        fields): it commits or rolls back with the change it records."""
        if not self.enabled:
            return None
        event = self.event(kind, **fields)
        if self.db is None or conn is None:
            self._log(event)
        else:
            await conn.execute(_INSERT_ONE, *_row(event))
        return event

    def record(self, kind: Kind | str, **fields) -> AuditEvent | None:
        """Queues an event for the background flusher; never blocks, never raises."""
        if not self.enabled:
            return None
        try:
            event = self.event(kind, **fields)
        except Exception:  # noqa: BLE001 - auditing must never break the call it watches
            log.exception("could not make an audit event")
            return None
        if self.db is None:
            self._log(event)
            return event
        if len(self._buffer) >= self.settings.max_buffered:
            self._buffer.popleft()
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                log.error("audit buffer full: %d events dropped so far", self._dropped)
        self._buffer.append(event)
        if self._wake is not None and len(self._buffer) >= self.settings.batch_size:
            self._wake.set()
        return event

    def _log(self, event: AuditEvent) -> None:
        log.info("audit %s", event.kind, extra={"fields": {"audit": event.as_json()}})

    # -- writing queued events --------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self) -> int:
        """Writes every queued event (in batches, one statement each); raises on a database
        failure, keeping what was not written. One flush at a time (the background flusher and
        a shutdown, or a test, may ask together): a batch is never written twice."""
        written = 0
        async with self._flushing:
            while self._buffer and self.db is not None:
                batch = [self._buffer[i] for i in range(min(self.settings.batch_size, len(self._buffer)))]
                columns = list(zip(*(_row(e) for e in batch)))
                async with self.db.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT set_config('app.audit_reader', 'on', true)")
                    await conn.execute(_INSERT_MANY, *columns)
                for _ in batch:
                    self._buffer.popleft()
                written += len(batch)
        self.written += written
        return written

    def start(self) -> None:
        """Starts the flusher and, with a retention, the purge loop (the bootstrap calls it)."""
        if self._tasks or not self.queryable:
            return
        self._wake = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._flush_forever(), name=f"audit-flush-{self.service}"))
        if self.settings.retention_days > 0:
            self._tasks.append(asyncio.create_task(self._purge_forever(), name=f"audit-retention-{self.service}"))

    async def _flush_forever(self) -> None:
        backoff = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(self.settings.flush_interval_seconds, backoff)):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                backoff = 0.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep the events, try again later
                backoff = min(max(backoff * 2, 1.0), 30.0)
                log.warning("audit flush failed (%s); %d events queued, retrying in %.0fs",
                            type(exc).__name__, len(self._buffer), backoff)

    async def _purge_forever(self) -> None:
        while True:
            try:
                await self.purge(timedelta(days=self.settings.retention_days))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried at the next interval
                log.warning("audit retention purge failed (%s)", type(exc).__name__)
            await asyncio.sleep(self.settings.retention_interval_seconds)

    async def aclose(self, timeout: float = 5.0) -> None:
        for hook in self.before_close:
            hook()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._buffer and self.db is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self.flush()
            except Exception as exc:  # noqa: BLE001
                log.error("audit: %d events not written at shutdown (%s)", len(self._buffer), type(exc).__name__)

    # -- retention ----------------------------------------------------------------------------

    async def purge(self, older_than: timedelta, *, batch: int = PURGE_BATCH) -> int:
        """Deletes the events older than `older_than` through `purge_audit_events`, each batch
        in a transaction with its own `retention.purged` event; returns how many went."""
        if not self.queryable:
            return 0
        cutoff = datetime.now(timezone.utc) - older_than
        total = 0
        while True:
            async with self.db.acquire() as conn, conn.transaction():
                purged = await conn.fetchval("SELECT purge_audit_events($1, $2)", cutoff, batch)
                if purged:
                    await self.write(conn, Kind.RETENTION_PURGED, actor="", details={
                        "table": "audit_events", "count": purged, "before": cutoff.isoformat()})
            total += purged
            if purged < batch:
                if total:
                    log.info("audit retention purged %d events older than %s", total, cutoff.isoformat())
                return total

    # -- reading ------------------------------------------------------------------------------

    async def list(self, reader: str, query: AuditFilter, *, after: Position | None, limit: int
                   ) -> tuple[list[AuditEvent], bool]:
        """Events matching `query`, newest first, strictly after `after`; (events, more).
        `reader` is the administrator's user id (checked by the caller for the admin scope)."""
        if not self.queryable:
            raise errors.FailedPrecondition("this service keeps no audit log", reason="NO_AUDIT_LOG")
        conditions, args = [], []

        def arg(value) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.start is not None:
            conditions.append(f"event_time >= {arg(query.start)}")
        if query.end is not None:
            conditions.append(f"event_time < {arg(query.end)}")
        if query.kinds:
            conditions.append(f"kind = ANY({arg(list(query.kinds))}::text[])")
        if query.actor_user_id:
            conditions.append(f"actor_user_id <> '' AND actor_user_id = {arg(query.actor_user_id)}")
        if query.subject_user_id:
            conditions.append(f"subject_user_id <> '' AND subject_user_id = {arg(query.subject_user_id)}")
        if after is not None:
            conditions.append(f"(event_time, id) < ({arg(after[0])}, {arg(after[1])})")
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
        sql = (f"SELECT {_COLUMNS.replace('details', 'details::text AS details')} FROM audit_events {where} "
               f"ORDER BY event_time DESC, id DESC LIMIT {arg(limit + 1)}")
        async with self.db.transaction(reader, readonly=True) as conn:
            await conn.execute("SELECT set_config('app.audit_reader', 'on', true)")
            rows = await conn.fetch(sql, *args)
        events = [_event(r) for r in rows[:limit]]
        return events, len(rows) > limit
