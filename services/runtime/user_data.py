"""Deleting everything a service keeps of one user (the gateway's AdminService.DeleteUserData
asks every backend's UserDataService), and keeping it deleted.

A service deletes inside `deletion(db, user_id)`: one transaction as the target user, so
row-level security confines every statement to that user's rows, which first takes the
user's exclusive advisory lock and marks the user deleted (`user_deletions`). Writes that
may have begun before a deletion and commit after it (a usage batch, an upload in flight)
check `deleted_since` (or the SQL function `user_deleted_since`) in their own transaction:
it takes the shared lock, so either the write commits first and the waiting deletion
removes it too, or it sees the mark and stores nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

from services.runtime import errors
from services.runtime.identity import USER_ID_PATTERN


@dataclass(frozen=True)
class Removed:
    """What one service removed of a user's: counts by kind (rows per table, stored files,
    sandboxes, keys) and what it keeps on purpose."""

    service: str
    counts: Mapping[str, int]
    kept: tuple[str, ...] = field(default=())

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def checked_user_id(user_id: str, field_name: str = "user_id") -> str:
    if not user_id:
        raise errors.InvalidArgument.for_field(field_name, "is required", reason="FIELD_REQUIRED")
    if not USER_ID_PATTERN.match(user_id):
        raise errors.InvalidArgument.for_field(
            field_name, "is not a valid user id (letters, digits and _.@:|+- up to 128 characters)",
            reason="INVALID_USER_ID")
    return user_id


def not_yourself() -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        "an administrator cannot delete their own data (the call would lose its own credential midway); "
        "use another administrator's key", reason="CANNOT_DELETE_SELF")


_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('parley-user-data:' || $1, 0))"
_MARK = ("INSERT INTO user_deletions (user_id, delete_time) VALUES ($1, now()) "
         "ON CONFLICT (user_id) DO UPDATE SET delete_time = excluded.delete_time")


@asynccontextmanager
async def deletion(db, user_id: str) -> AsyncIterator:
    """A transaction as `user_id` holding the user's deletion lock, with the user marked
    deleted (when it commits)."""
    async with db.transaction(user_id) as conn:
        await conn.execute(_LOCK, user_id)
        await conn.execute(_MARK, user_id)
        yield conn


async def delete_rows(conn, tables: Sequence[str]) -> dict[str, int]:
    """`DELETE FROM` each table in order (children before parents, so each count is its own),
    under row-level security: only the transaction's user's rows go."""
    counts = {}
    for table in tables:
        status = await conn.execute(f"DELETE FROM {table}")
        counts[table] = int(status.rsplit(" ", 1)[-1])
    return counts


async def deleted_since(conn, user_id: str, since: datetime) -> bool:
    """Whether the user's data was deleted at or after `since` (a write begun then is stale);
    waits for a deletion in progress."""
    return bool(await conn.fetchval("SELECT user_deleted_since($1, $2)", user_id, since))


def stale_write() -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        "the user's data was deleted while this request was in progress; nothing was stored",
        reason="USER_DATA_DELETED")
