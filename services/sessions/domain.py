"""Sessions, messages and feedback: the rules, independent of transport.

Every operation acts as one user (from the verified identity) inside one transaction, and
leaves nothing half-written: validation happens before the transaction starts, and each
change is a single statement or commits as a whole.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

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
from services.runtime.validation import metadata_violations, nul_violations, parse_id, text_violations, update_mask_paths
from services.sessions.export import render_export
from services.sessions.models import (
    ExportFormat,
    Feedback,
    Message,
    NewMessage,
    NewSession,
    Page,
    Rating,
    Role,
    Session,
    SessionPatch,
    SessionStatus,
    SortOrder,
)
from services.sessions.repository import SessionRepository

TITLE_MAX_CHARS = 256
COMMENT_MAX_CHARS = 4096
REFERENCE_MAX_CHARS = 128
UPDATABLE_PATHS = ("title", "status", "metadata")
# Messages an export reads per transaction.
EXPORT_PAGE_MESSAGES = 200
_REFERENCE = re.compile(r"^[A-Za-z0-9_.:-]*$")
_IMAGE_URL = re.compile(r"^(https?://|data:image/)", re.IGNORECASE)


@dataclass(frozen=True)
class Limits:
    # All content of one message together (text, URLs, tool-call arguments), in UTF-8 bytes.
    max_message_bytes: int = 1024 * 1024
    max_parts: int = 64
    max_attachments: int = 32
    max_tool_calls: int = 128


def _session_not_found(session_id: object) -> errors.NotFound:
    return errors.NotFound(f"session {session_id} not found", reason="SESSION_NOT_FOUND",
                           metadata={"session_id": str(session_id)})


def _message_not_found(message_id: object) -> errors.NotFound:
    return errors.NotFound(f"message {message_id} not found", reason="MESSAGE_NOT_FOUND",
                           metadata={"message_id": str(message_id)})


def _reference_violations(value: str, field: str) -> list[FieldViolation]:
    if len(value) > REFERENCE_MAX_CHARS or not _REFERENCE.match(value):
        return [FieldViolation(field, f"must be an id of at most {REFERENCE_MAX_CHARS} letters, digits, '_', '.', ':' or '-'")]
    return []


def _enum_value(value: int, enum: type, field: str, *, allow_unspecified: bool) -> list[FieldViolation]:
    if value == 0 and allow_unspecified:
        return []
    if value not in enum._value2member_map_:
        names = ", ".join(m.name for m in enum)
        return [FieldViolation(field, f"must be one of {names}" if value else "is required")]
    return []


class Sessions:
    def __init__(self, db: Database, limits: Limits | None = None, repository: SessionRepository | None = None,
                 audit: AuditLog | None = None) -> None:
        self._db = db
        self._repo = repository or SessionRepository()
        self.limits = limits or Limits()
        self._audit = audit or AuditLog.discarding()

    # -- sessions ---------------------------------------------------------------------------

    async def create_session(self, user_id: str, new: NewSession) -> Session:
        violations = text_violations(new.title, "title", max_chars=TITLE_MAX_CHARS, single_line=True)
        violations += metadata_violations(new.metadata)
        violations += _reference_violations(new.assistant_id, "assistant_id")
        errors.collect(violations)
        async with self._db.transaction(user_id) as conn:
            return await self._repo.create_session(conn, new)

    async def get_session(self, user_id: str, session_id: str) -> Session:
        sid = parse_id(session_id, "session_id")
        async with self._db.transaction(user_id, readonly=True) as conn:
            session = await self._repo.get_session(conn, sid)
        if session is None:
            raise _session_not_found(sid)
        return session

    async def list_sessions(self, user_id: str, *, status: int, size: int, token: str,
                            title_contains: str = "") -> Page:
        errors.collect(_enum_value(status, SessionStatus, "status", allow_unspecified=True)
                       + text_violations(title_contains, "title_contains", max_chars=TITLE_MAX_CHARS, single_line=True))
        limit = page_size(size, default=20, maximum=100)
        # The filter is part of the listing a page token is bound to.
        query_key = f"sessions|{user_id}|{status}|{title_contains}"
        after = decode_time_and_id(token, query_key)
        async with self._db.transaction(user_id, readonly=True) as conn:
            rows = await self._repo.list_sessions(conn, status=status, after=after, limit=limit + 1,
                                                  title_contains=title_contains)
        items, more = rows[:limit], len(rows) > limit
        next_token = encode_time_and_id(query_key, items[-1].create_time, items[-1].id) if more else ""
        return Page(items=items, next_page_token=next_token)

    async def update_session(self, user_id: str, session_id: str, paths: list[str], values: SessionPatch) -> Session:
        sid = parse_id(session_id, "session.id")
        # AIP-134: without a mask, every field the request populates is written.
        paths, violations = update_mask_paths(paths, updatable=UPDATABLE_PATHS,
                                              populated=[p for p in UPDATABLE_PATHS if getattr(values, p)])
        patch = SessionPatch(
            title=(values.title or "") if "title" in paths else None,
            status=values.status if "status" in paths else None,
            metadata=(values.metadata or {}) if "metadata" in paths else None,
        )
        if patch.title is not None:
            violations += text_violations(patch.title, "session.title", max_chars=TITLE_MAX_CHARS, single_line=True)
        if patch.status is not None:
            violations += _enum_value(patch.status, SessionStatus, "session.status", allow_unspecified=False)
        if patch.metadata is not None:
            violations += metadata_violations(patch.metadata, "session.metadata")
        errors.collect(violations)
        async with self._db.transaction(user_id) as conn:
            session = await self._repo.update_session(conn, sid, patch)
        if session is None:
            raise _session_not_found(sid)
        return session

    async def delete_session(self, user_id: str, session_id: str) -> None:
        sid = parse_id(session_id, "session_id")
        async with self._db.transaction(user_id) as conn:
            deleted = await self._repo.delete_session(conn, sid)
            if deleted:
                await self._audit.write(conn, Kind.SESSION_DELETED, subject=user_id, resource=str(sid))
        if not deleted:
            raise _session_not_found(sid)

    # -- messages ---------------------------------------------------------------------------

    def _message_violations(self, new: NewMessage) -> list[FieldViolation]:
        found = _enum_value(new.role, Role, "role", allow_unspecified=False)
        if not new.content and not (new.role == Role.ASSISTANT and new.tool_calls):
            found.append(FieldViolation("content", "needs at least one part"))
        if len(new.content) > self.limits.max_parts:
            found.append(FieldViolation("content", f"has more than {self.limits.max_parts} parts"))
        size = 0
        for i, part in enumerate(new.content):
            field = f"content[{i}]"
            if part.type == "text":
                size += len(part.text.encode())
                found += nul_violations(part.text, f"{field}.text")
            elif part.type == "image_url":
                size += len(part.url)
                if not _IMAGE_URL.match(part.url):
                    found.append(FieldViolation(f"{field}.image_url.url", "must be an http(s) URL or a data:image URL"))
            elif part.type == "image_file":
                found += _reference_violations(part.file_id, f"{field}.image_file.file_id")
                if not part.file_id:
                    found.append(FieldViolation(f"{field}.image_file.file_id", "is required"))
            else:
                found.append(FieldViolation(field, "must set text, image_url or image_file"))
        if len(new.attachments) > self.limits.max_attachments:
            found.append(FieldViolation("attachments", f"has more than {self.limits.max_attachments} files"))
        for i, attachment in enumerate(new.attachments):
            if not attachment.file_id:
                found.append(FieldViolation(f"attachments[{i}].file_id", "is required"))
            found += _reference_violations(attachment.file_id, f"attachments[{i}].file_id")
        if new.tool_calls and new.role != Role.ASSISTANT:
            found.append(FieldViolation("tool_calls", "only assistant messages carry tool calls"))
        if len(new.tool_calls) > self.limits.max_tool_calls:
            found.append(FieldViolation("tool_calls", f"has more than {self.limits.max_tool_calls} calls"))
        for i, call in enumerate(new.tool_calls):
            size += len(call.arguments.encode())
            if not call.id or not call.name:
                found.append(FieldViolation(f"tool_calls[{i}]", "needs an id and a name"))
            found += nul_violations(call.arguments, f"tool_calls[{i}].arguments")
        if new.role == Role.TOOL and not new.tool_call_id:
            found.append(FieldViolation("tool_call_id", "is required for tool messages"))
        if new.tool_call_id and new.role != Role.TOOL:
            found.append(FieldViolation("tool_call_id", "only tool messages answer a tool call"))
        found += _reference_violations(new.tool_call_id, "tool_call_id")
        found += _reference_violations(new.assistant_id, "assistant_id")
        found += _reference_violations(new.run_id, "run_id")
        found += metadata_violations(new.metadata)
        if size > self.limits.max_message_bytes:
            found.append(FieldViolation("content", f"is {size} bytes; the limit is {self.limits.max_message_bytes}"))
        return found

    async def create_message(self, user_id: str, session_id: str, new: NewMessage) -> Message:
        sid = parse_id(session_id, "session_id")
        errors.collect(self._message_violations(new))
        async with self._db.transaction(user_id) as conn:
            message = await self._repo.append_message(conn, sid, new)
            if message is None:
                session = await self._repo.get_session(conn, sid)
        if message is not None:
            return message
        if session is None:
            raise _session_not_found(sid)
        raise errors.FailedPrecondition(f"session {sid} is closed and accepts no new messages", reason="SESSION_CLOSED",
                                        metadata={"session_id": str(sid)})

    async def get_message(self, user_id: str, session_id: str, message_id: str) -> Message:
        sid, mid = parse_id(session_id, "session_id"), parse_id(message_id, "message_id")
        async with self._db.transaction(user_id, readonly=True) as conn:
            message = await self._repo.get_message(conn, sid, mid)
        if message is None:
            raise _message_not_found(mid)
        return message

    async def list_messages(self, user_id: str, session_id: str, *, size: int, token: str, order: int, run_id: str) -> Page:
        sid = parse_id(session_id, "session_id")
        violations = _enum_value(order, SortOrder, "order", allow_unspecified=True)
        violations += _reference_violations(run_id, "run_id")
        errors.collect(violations)
        limit = page_size(size, default=50, maximum=100)
        sort = SortOrder(order) if order else SortOrder.ASCENDING
        query_key = f"messages|{user_id}|{sid}|{sort}|{run_id}"
        position = decode_token(token, query_key, kinds=(Position.COUNT,))
        after_seq = position[0] if position is not None else None
        async with self._db.transaction(user_id, readonly=True) as conn:
            visible, rows = await self._repo.list_messages(
                conn, sid, order=sort, after_seq=after_seq, run_id=run_id, limit=limit + 1
            )
        if not visible:
            raise _session_not_found(sid)
        page, more = rows[:limit], len(rows) > limit
        next_token = encode_token(query_key, [page[-1][0]]) if more else ""
        return Page(items=[m for _, m in page], next_page_token=next_token)

    async def delete_message(self, user_id: str, session_id: str, message_id: str) -> None:
        sid, mid = parse_id(session_id, "session_id"), parse_id(message_id, "message_id")
        async with self._db.transaction(user_id) as conn:
            deleted = await self._repo.delete_message(conn, sid, mid)
        if not deleted:
            raise _message_not_found(mid)

    async def submit_feedback(self, user_id: str, session_id: str, message_id: str, rating: int, comment: str) -> Feedback:
        sid, mid = parse_id(session_id, "session_id"), parse_id(message_id, "message_id")
        violations = _enum_value(rating, Rating, "rating", allow_unspecified=True)
        violations += text_violations(comment, "comment", max_chars=COMMENT_MAX_CHARS)
        if not rating and not comment:
            violations.append(FieldViolation("rating", "give a rating, a comment, or both"))
        errors.collect(violations)
        async with self._db.transaction(user_id) as conn:
            if await self._repo.get_message(conn, sid, mid) is None:
                raise _message_not_found(mid)
            feedback = await self._repo.put_feedback(conn, mid, Rating(rating) if rating else None, comment)
            await self._repo.touch_session(conn, sid)
        return feedback

    # -- export and retention ---------------------------------------------------------------

    async def export_session(self, user_id: str, session_id: str, fmt: int) -> tuple[str, str, AsyncIterator[bytes]]:
        """(media type, file name, the document's bytes in chunks). Messages are read in pages
        of EXPORT_PAGE_MESSAGES, each in its own short transaction, so a slow reader holds no
        pooled connection while it takes its time; a message created during the export may
        or may not be in it."""
        sid = parse_id(session_id, "session_id")
        errors.collect(_enum_value(fmt, ExportFormat, "format", allow_unspecified=True))
        export_format = ExportFormat(fmt) if fmt else ExportFormat.JSON
        session = await self.get_session(user_id, session_id)  # NOT_FOUND before any byte is sent
        media_type, extension = (
            ("application/json", "json") if export_format == ExportFormat.JSON else ("text/markdown", "md")
        )
        chunks = render_export(export_format, session, self._messages_in_pages(user_id, sid))
        return media_type, f"session-{session.id}.{extension}", chunks

    async def _messages_in_pages(self, user_id: str, sid: uuid.UUID) -> AsyncIterator[Message]:
        after_seq = None
        while True:
            async with self._db.transaction(user_id, readonly=True) as conn:
                visible, rows = await self._repo.list_messages(conn, sid, order=SortOrder.ASCENDING,
                                                               after_seq=after_seq, run_id="", limit=EXPORT_PAGE_MESSAGES)
            if not visible:  # deleted while it was being exported
                raise _session_not_found(sid)
            for _, message in rows:
                yield message
            if len(rows) < EXPORT_PAGE_MESSAGES:
                return
            after_seq = rows[-1][0]

    async def purge_idle_sessions(self, idle_for: timedelta, *, batch: int = 1000) -> int:
        """Deletes every session (of any user) idle for longer than `idle_for`. Maintenance,
        not a user action: it runs through a SECURITY DEFINER function in the database. Each
        batch commits with its `retention.purged` audit event."""
        cutoff = datetime.now(timezone.utc) - idle_for
        total = 0
        while True:
            async with self._db.acquire() as conn, conn.transaction():
                purged = await self._repo.purge_idle_sessions(conn, cutoff, batch)
                if purged:
                    await self._audit.write(conn, Kind.RETENTION_PURGED, actor="", details={
                        "table": "sessions", "count": purged, "idle_before": cutoff.isoformat()})
            total += purged
            if purged < batch:
                return total
