"""AdminService's work: the audit logs of every service merged into one listing (and export),
and the deletion of one user's data across every service.

The gateway reads no other service's tables: it asks each backend with an audit log for a
page of its own events (`AuditLogService.ListServiceAuditEvents`, after a cursor) and merges
them with its own by (event time, id), newest first. The page token holds one cursor per
source, signed like every page token, so the next page continues each log where the last
one stopped.

A deletion revokes the user's API keys first (no new call of theirs starts meanwhile), asks
the backends in turn — the engine (its runs of the user stop, the sandboxes go), sessions,
files, llm — and deletes the keys last, with the overall audit event: a deletion that fails
half-way (a backend unreachable) leaves the keys revoked and can simply be run again.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from google.protobuf.json_format import MessageToDict

from parley.admin.v1 import audit_pb2 as pb
from services.gateway.apikeys import ApiKeys
from services.gateway.models import Principal
from services.runtime import errors
from services.runtime.admin_servicers import deletion_to_proto, event_to_proto
from services.runtime.audit import AuditFilter, AuditLog, Kind
from services.runtime.pagination import decode_token, encode_token, page_size
from services.runtime.user_data import Removed, checked_user_id, not_yourself

# Services with an audit log, in the order their cursors sit in a page token.
AUDIT_SOURCES = ("gateway", "llm", "sessions", "files")
# Backends asked to delete a user's data, in this order (the engine first: its runs stop
# before sessions deletes what they write).
DELETION_ORDER = ("assistants", "sessions", "files", "llm")
DEFAULT_PAGE, MAX_PAGE = 100, 1000
EXPORT_PAGE = 500
EXPORT_CHUNK_BYTES = 64 * 1024
_DONE = "-"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _at(event: pb.AuditEvent) -> tuple[datetime, uuid.UUID]:
    return event.event_time.ToDatetime().replace(tzinfo=None), uuid.UUID(event.id)


def _cursor(event: pb.AuditEvent) -> str:
    return f"{event.event_time.seconds}.{event.event_time.nanos:09d}|{event.id}"


@dataclass(frozen=True)
class Cursor:
    """Where one source's listing stands: not started (""), after an event, or done."""

    raw: str = ""

    @property
    def done(self) -> bool:
        return self.raw == _DONE

    def position(self) -> tuple[int, int, str] | None:
        if not self.raw or self.done:
            return None
        try:
            stamp, event_id = self.raw.split("|")
            seconds, nanos = stamp.split(".")
            return int(seconds), int(nanos), str(uuid.UUID(event_id))
        except ValueError:
            raise errors.InvalidArgument.for_field("page_token", "is not a page token issued by this service",
                                                   reason="PAGE_TOKEN_INVALID") from None


# One source's page for an administrator: (events newest first, whether more follow) after
# a position (seconds, nanos, event id).
Position = tuple[int, int, str]
SourcePage = Callable[[Principal, AuditFilter, Position | None, int], Awaitable[tuple[list[pb.AuditEvent], bool]]]
# One backend's DeleteUserData, on behalf of an administrator.
Deleter = Callable[[Principal, str], Awaitable[list[Removed]]]


class Admin:
    def __init__(self, audit: AuditLog, keys: ApiKeys, sources: dict[str, SourcePage],
                 deleters: dict[str, Deleter | None]) -> None:
        """`sources`: audit source name → page reader (the gateway's own log included);
        `deleters`: backend → its DeleteUserData, or None when this gateway has no such backend."""
        self._audit = audit
        self._keys = keys
        self._sources = sources
        self._deleters = deleters

    # -- the audit log --------------------------------------------------------------------------

    def _sources_of(self, services: Sequence[str]) -> tuple[str, ...]:
        for i, name in enumerate(services):
            if name not in AUDIT_SOURCES:
                raise errors.InvalidArgument.for_field(
                    f"services[{i}]", f"has no audit log; one of {', '.join(AUDIT_SOURCES)}", reason="UNKNOWN_SERVICE")
        chosen = tuple(s for s in AUDIT_SOURCES if not services or s in services)
        missing = [s for s in chosen if s not in self._sources]
        if missing and services:
            raise errors.FailedPrecondition(f"this gateway routes to no {missing[0]} service",
                                            reason="BACKEND_NOT_CONFIGURED", metadata={"backend": missing[0]})
        return tuple(s for s in chosen if s in self._sources)

    async def list(self, admin: Principal, query: AuditFilter, services: Sequence[str], *, size: int,
                   token: str) -> tuple[list[pb.AuditEvent], str]:
        limit = page_size(size, default=DEFAULT_PAGE, maximum=MAX_PAGE)
        chosen = self._sources_of(services)
        query_key = f"audit|{query.key()}|{','.join(chosen)}"
        position = decode_token(token, query_key)
        if position is not None and (len(position) != len(chosen) or not all(isinstance(p, str) for p in position)):
            raise errors.InvalidArgument.for_field("page_token", "is not a page token issued by this service",
                                                   reason="PAGE_TOKEN_INVALID")
        cursors = dict(zip(chosen, (Cursor(p) for p in position))) if position else {s: Cursor() for s in chosen}
        events, cursors = await self._page(admin, query, cursors, limit)
        if not token:  # once per listing, after its first page (which therefore never shows it)
            self._audit.record(Kind.AUDIT_LOG_READ, actor=admin.user_id, details=_filter_details(query, chosen))
        more = not all(c.done for c in cursors.values())
        return events, encode_token(query_key, [cursors[s].raw for s in chosen]) if more else ""

    async def _page(self, admin: Principal, query: AuditFilter, cursors: dict[str, Cursor], limit: int
                    ) -> tuple[list[pb.AuditEvent], dict[str, Cursor]]:
        live = [s for s, c in cursors.items() if not c.done]
        pages = await asyncio.gather(*(self._sources[s](admin, query, cursors[s].position(), limit) for s in live))
        fetched = {s: page for s, page in zip(live, pages)}
        # Newest first across sources: (time, id) descending.
        merged = heapq.merge(*([(s, e) for e in events] for s, (events, _) in fetched.items()),
                             key=lambda item: _at(item[1]), reverse=True)
        taken = [item for _, item in zip(range(limit), merged)]
        result = dict(cursors)
        for source, (events, more) in fetched.items():
            mine = [e for s, e in taken if s == source]
            if mine and (len(mine) < len(events) or more):
                result[source] = Cursor(_cursor(mine[-1]))
            elif len(mine) == len(events) and not more:
                result[source] = Cursor(_DONE)
        return [e for _, e in taken], result

    async def export(self, admin: Principal, query: AuditFilter, services: Sequence[str]) -> AsyncIterator[bytes]:
        """Every matching event as JSON lines, newest first, in chunks of about 64 KiB."""
        chosen = self._sources_of(services)
        self._audit.record(Kind.AUDIT_LOG_EXPORTED, actor=admin.user_id, details=_filter_details(query, chosen))
        cursors = {s: Cursor() for s in chosen}
        buffer = bytearray()
        while not all(c.done for c in cursors.values()):
            events, cursors = await self._page(admin, query, cursors, EXPORT_PAGE)
            for event in events:
                buffer += json.dumps(MessageToDict(event, preserving_proto_field_name=True),
                                     separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
                if len(buffer) >= EXPORT_CHUNK_BYTES:
                    yield bytes(buffer)
                    buffer.clear()
        if buffer:
            yield bytes(buffer)

    # -- deleting a user's data -------------------------------------------------------------------

    async def delete_user_data(self, admin: Principal, user_id: str) -> pb.DeleteUserDataResponse:
        user_id = checked_user_id(user_id)
        if user_id == admin.user_id:
            raise not_yourself()
        revoked = await self._keys.revoke_all(user_id)
        deletions: list[pb.ServiceDataDeletion] = []
        summary: dict[str, object] = {"gateway.api_keys_revoked_first": revoked}
        for backend in DELETION_ORDER:
            delete = self._deleters.get(backend)
            if delete is None:
                deletions.append(pb.ServiceDataDeletion(service=backend, not_configured=True))
                summary[f"{backend}.not_configured"] = True
                continue
            for removed in await delete(admin, user_id):
                deletions.append(deletion_to_proto(removed))
                summary[removed.service] = removed.total
        removed = await self._keys.delete_all(user_id, summary)
        deletions.append(deletion_to_proto(removed))
        return pb.DeleteUserDataResponse(user_id=user_id, deletions=deletions)


def _filter_details(query: AuditFilter, services: Sequence[str]) -> dict[str, object]:
    """What an administrator looked at. The user a filter was about is named here, not as the
    event's subject: "events about a user" should list what happened to them, not each look."""
    return {"services": ",".join(services), "kinds": ",".join(sorted(query.kinds)),
            "actor_user_id": query.actor_user_id, "subject_user_id": query.subject_user_id,
            "start": query.start.isoformat() if query.start else "", "end": query.end.isoformat() if query.end else ""}


def own_source(audit: AuditLog) -> SourcePage:
    """The gateway's own log as a source of the merged listing."""

    async def page(admin: Principal, query: AuditFilter, after: Position | None, limit: int
                   ) -> tuple[list[pb.AuditEvent], bool]:
        position = None
        if after is not None:
            seconds, nanos, event_id = after
            position = (_EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000), uuid.UUID(event_id))
        events, more = await audit.list(admin.user_id, query, after=position, limit=limit)
        return [event_to_proto(e) for e in events], more

    return page
