"""SQL for sessions, messages and feedback. Every method runs inside a transaction opened by
`Database.transaction(user_id)`, so row-level security scopes each statement to the caller;
no query here filters on user_id itself, and none needs to."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from services.sessions.models import (
    Attachment,
    ContentPart,
    Feedback,
    Message,
    NewMessage,
    NewSession,
    Rating,
    Role,
    Session,
    SessionPatch,
    SessionStatus,
    SortOrder,
    ToolCall,
)
from services.runtime.validation import uuid7

_SESSION_COLUMNS = "id, user_id, title, status, metadata, assistant_id, create_time, update_time, message_count"
_MESSAGE_COLUMNS = (
    "m.seq, m.id, m.session_id, m.role, m.content, m.attachments, m.tool_calls, m.tool_call_id, m.metadata, "
    "m.assistant_id, m.run_id, m.create_time, "
    "f.rating AS f_rating, f.comment AS f_comment, f.create_time AS f_create_time, f.update_time AS f_update_time"
)


def _session(row: asyncpg.Record) -> Session:
    return Session(
        id=row["id"],
        user_id=row["user_id"],
        title=row["title"],
        status=SessionStatus(row["status"]),
        metadata=row["metadata"],
        assistant_id=row["assistant_id"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        message_count=row["message_count"],
    )


def _message(row: asyncpg.Record) -> Message:
    feedback = None
    if row["f_create_time"] is not None:
        feedback = Feedback(
            message_id=row["id"],
            rating=Rating(row["f_rating"]) if row["f_rating"] else None,
            comment=row["f_comment"],
            create_time=row["f_create_time"],
            update_time=row["f_update_time"],
        )
    return Message(
        id=row["id"],
        session_id=row["session_id"],
        role=Role(row["role"]),
        content=tuple(ContentPart.from_json(p) for p in row["content"]),
        attachments=tuple(Attachment(a["file_id"], tuple(a.get("tools", ()))) for a in row["attachments"]),
        tool_calls=tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in row["tool_calls"]),
        tool_call_id=row["tool_call_id"],
        metadata=row["metadata"],
        assistant_id=row["assistant_id"],
        run_id=row["run_id"],
        create_time=row["create_time"],
        feedback=feedback,
    )


class SessionRepository:
    """Stateless: every method takes the connection of the caller's transaction."""

    async def create_session(self, conn: asyncpg.Connection, new: NewSession) -> Session:
        row = await conn.fetchrow(
            f"INSERT INTO sessions (id, title, status, metadata, assistant_id) VALUES ($1, $2, $3, $4, $5) "
            f"RETURNING {_SESSION_COLUMNS}",
            uuid7(), new.title, SessionStatus.ACTIVE, new.metadata, new.assistant_id,
        )
        return _session(row)

    async def get_session(self, conn: asyncpg.Connection, session_id: uuid.UUID, *, for_update: bool = False) -> Session | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await conn.fetchrow(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = $1{lock}", session_id)
        return _session(row) if row else None

    async def list_sessions(
        self, conn: asyncpg.Connection, *, status: int, after: tuple[datetime, uuid.UUID] | None, limit: int,
        title_contains: str = "",
    ) -> list[Session]:
        conditions, args = [], []
        if status:
            args.append(status)
            conditions.append(f"status = ${len(args)}")
        if title_contains:
            # A filter on the caller's own rows, read through the per-user index (user_id,
            # create_time DESC, id DESC): an ordered walk that stops when the page is full, or a
            # bitmap of the user's rows and a sort. A trigram index would not help: under
            # row-level security PostgreSQL applies a non-leakproof ILIKE only after the policy,
            # never inside an index scan.
            args.append(_like_escape(title_contains))
            conditions.append(f"title ILIKE '%' || ${len(args)} || '%'")
        if after is not None:
            args.extend(after)
            conditions.append(f"(create_time, id) < (${len(args) - 1}, ${len(args)})")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        args.append(limit)
        rows = await conn.fetch(
            f"SELECT {_SESSION_COLUMNS} FROM sessions {where} ORDER BY create_time DESC, id DESC LIMIT ${len(args)}", *args
        )
        return [_session(r) for r in rows]

    async def update_session(self, conn: asyncpg.Connection, session_id: uuid.UUID, patch: SessionPatch) -> Session | None:
        sets, args = ["update_time = now()"], [session_id]
        for column in ("title", "status", "metadata"):
            value = getattr(patch, column)
            if value is not None:
                args.append(value)
                sets.append(f"{column} = ${len(args)}")
        row = await conn.fetchrow(
            f"UPDATE sessions SET {', '.join(sets)} WHERE id = $1 RETURNING {_SESSION_COLUMNS}", *args
        )
        return _session(row) if row else None

    async def delete_session(self, conn: asyncpg.Connection, session_id: uuid.UUID) -> bool:
        # Messages and their feedback go with it (ON DELETE CASCADE).
        return await conn.fetchval("DELETE FROM sessions WHERE id = $1 RETURNING true", session_id) is not None

    async def append_message(self, conn: asyncpg.Connection, session_id: uuid.UUID, new: NewMessage) -> Message | None:
        """Adds a message and bumps its session in one statement; None if the session is not
        visible or not open. The session row lock orders concurrent appends."""
        row = await conn.fetchrow(
            f"""
            WITH s AS (
                UPDATE sessions SET update_time = now(), message_count = message_count + 1
                WHERE id = $1 AND status <> {SessionStatus.CLOSED.value}
                RETURNING id
            ), m AS (
                INSERT INTO messages (id, session_id, role, content, attachments, tool_calls, tool_call_id,
                                      metadata, assistant_id, run_id)
                SELECT $2, s.id, $3, $4, $5, $6, $7, $8, $9, $10 FROM s
                RETURNING *
            )
            SELECT {_MESSAGE_COLUMNS} FROM m
            LEFT JOIN message_feedback f ON false
            """,
            session_id,
            uuid7(),
            new.role,
            [p.to_json() for p in new.content],
            [{"file_id": a.file_id, "tools": list(a.tools)} for a in new.attachments],
            [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in new.tool_calls],
            new.tool_call_id,
            new.metadata,
            new.assistant_id,
            new.run_id,
        )
        return _message(row) if row else None

    async def get_message(self, conn: asyncpg.Connection, session_id: uuid.UUID, message_id: uuid.UUID) -> Message | None:
        row = await conn.fetchrow(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m LEFT JOIN message_feedback f ON f.message_id = m.id "
            "WHERE m.id = $1 AND m.session_id = $2",
            message_id, session_id,
        )
        return _message(row) if row else None

    async def list_messages(
        self,
        conn: asyncpg.Connection,
        session_id: uuid.UUID,
        *,
        order: SortOrder,
        after_seq: int | None,
        run_id: str,
        limit: int,
    ) -> tuple[bool, list[tuple[int, Message]]]:
        """(whether the session is visible, up to `limit` (seq, message) pairs after `after_seq`).
        One statement: the session check and the page travel together."""
        comparison, direction = (">", "ASC") if order == SortOrder.ASCENDING else ("<", "DESC")
        args: list = [session_id, limit]
        conditions = ["m.session_id = s.id"]
        if after_seq is not None:
            args.append(after_seq)
            conditions.append(f"m.seq {comparison} ${len(args)}")
        if run_id:
            args.append(run_id)
            conditions.append(f"m.run_id = ${len(args)}")
        rows = await conn.fetch(
            f"""
            SELECT page.* FROM sessions s
            LEFT JOIN LATERAL (
                SELECT {_MESSAGE_COLUMNS} FROM messages m
                LEFT JOIN message_feedback f ON f.message_id = m.id
                WHERE {' AND '.join(conditions)}
                ORDER BY m.seq {direction} LIMIT $2
            ) page ON true
            WHERE s.id = $1
            """,
            *args,
        )
        if not rows:
            return False, []
        return True, [(r["seq"], _message(r)) for r in rows if r["id"] is not None]

    async def delete_message(self, conn: asyncpg.Connection, session_id: uuid.UUID, message_id: uuid.UUID) -> bool:
        deleted = await conn.fetchval(
            """
            WITH m AS (DELETE FROM messages WHERE id = $1 AND session_id = $2 RETURNING session_id)
            UPDATE sessions SET update_time = now(), message_count = message_count - 1
            WHERE id = (SELECT session_id FROM m) RETURNING true
            """,
            message_id, session_id,
        )
        return deleted is not None

    async def put_feedback(
        self, conn: asyncpg.Connection, message_id: uuid.UUID, rating: Rating | None, comment: str
    ) -> Feedback:
        row = await conn.fetchrow(
            """
            INSERT INTO message_feedback (message_id, rating, comment) VALUES ($1, $2, $3)
            ON CONFLICT (message_id) DO UPDATE
                SET rating = EXCLUDED.rating, comment = EXCLUDED.comment, update_time = now()
            RETURNING message_id, rating, comment, create_time, update_time
            """,
            message_id, rating, comment,
        )
        return Feedback(
            message_id=row["message_id"],
            rating=Rating(row["rating"]) if row["rating"] else None,
            comment=row["comment"],
            create_time=row["create_time"],
            update_time=row["update_time"],
        )

    async def touch_session(self, conn: asyncpg.Connection, session_id: uuid.UUID) -> None:
        await conn.execute("UPDATE sessions SET update_time = now() WHERE id = $1", session_id)

    async def purge_idle_sessions(self, conn: asyncpg.Connection, idle_before: datetime, max_rows: int) -> int:
        return await conn.fetchval("SELECT purge_idle_sessions($1, $2)", idle_before, max_rows)


def _like_escape(text: str) -> str:
    """`text` matched literally inside a LIKE pattern (backslash is LIKE's default escape)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
