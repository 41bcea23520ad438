"""Everything the sessions service keeps of one user, deleted for the gateway's
AdminService.DeleteUserData (services/runtime/user_data.py): sessions, messages, feedback,
and the run store's assistants, runs, steps, events and cached function results."""

from __future__ import annotations

from services.runtime.audit import AuditLog, Kind
from services.runtime.db import Database
from services.runtime.user_data import Removed, delete_rows, deletion

# Every table with user rows in schema `sessions`, children before their parents (each count
# is its own rows, not a cascade's); tests/sessions/test_user_data.py checks none is missing.
USER_TABLES = ("message_feedback", "run_events", "run_steps", "runs", "messages", "sessions", "assistants",
               "function_results")


async def delete_user_data(db: Database, audit: AuditLog, user_id: str) -> list[Removed]:
    async with deletion(db, user_id) as conn:
        counts = await delete_rows(conn, USER_TABLES)
        await audit.write(conn, Kind.USER_DATA_DELETED, subject=user_id, resource=user_id, details=counts)
    return [Removed("sessions", counts)]
