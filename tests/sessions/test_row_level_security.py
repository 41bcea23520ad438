"""Row-level security checked in the database itself, connected as the service role: a
missing filter in application code must still leak nothing."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from services.runtime.db import with_credentials
from services.sessions.app import ROLE


@pytest.fixture(scope="module")
async def service_url(sessions_server, admin_url):  # the server's start-up ran the migrations
    return with_credentials(admin_url, ROLE, None)


@pytest.fixture(scope="module")
async def rows_of_a_and_b(service_url):
    """One session with one message for each of users A and B, written as themselves."""
    ids = {}
    conn = await asyncpg.connect(service_url, server_settings={"search_path": "sessions"})
    try:
        for user in ("rls-a", "rls-b"):
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.user_id', $1, true)", user)
                session_id = uuid.uuid4()
                await conn.execute("INSERT INTO sessions (id, status, title) VALUES ($1, 1, $2)", session_id, user)
                message_id = uuid.uuid4()
                await conn.execute(
                    "INSERT INTO messages (id, session_id, role, content) VALUES ($1, $2, 1, $3::jsonb)",
                    message_id, session_id, json.dumps([{"type": "text", "text": "secret of " + user}]),
                )
                ids[user] = (session_id, message_id)
    finally:
        await conn.close()
    return ids


async def as_user(service_url: str, user: str | None):
    conn = await asyncpg.connect(service_url, server_settings={"search_path": "sessions"})
    tx = conn.transaction()
    await tx.start()
    if user is not None:
        await conn.execute("SELECT set_config('app.user_id', $1, true)", user)
    return conn, tx


async def test_the_service_role_is_neither_superuser_nor_bypassrls(service_url):
    conn = await asyncpg.connect(service_url)
    try:
        row = await conn.fetchrow("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        assert await conn.fetchval("SELECT current_user") == ROLE
        assert row["rolsuper"] is False and row["rolbypassrls"] is False
    finally:
        await conn.close()


async def test_every_user_table_has_rls_enabled_and_forced_with_four_policies(admin_url, sessions_server):
    conn = await asyncpg.connect(admin_url)
    try:
        tables = await conn.fetch(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'sessions' AND c.relkind = 'r' "
            # The runtime's audit log is append-only, not per user (tests/runtime/test_audit.py).
            "AND c.relname NOT IN ('schema_migrations', 'audit_events')"
        )
        assert {t["relname"] for t in tables} >= {"sessions", "messages", "message_feedback"}
        for table in tables:
            assert table["relrowsecurity"] and table["relforcerowsecurity"], table["relname"]
            commands = {r["cmd"] for r in await conn.fetch(
                "SELECT cmd FROM pg_policies WHERE schemaname = 'sessions' AND tablename = $1", table["relname"])}
            assert commands == {"SELECT", "INSERT", "UPDATE", "DELETE"}, table["relname"]
    finally:
        await conn.close()


async def test_a_sees_only_own_rows(service_url, rows_of_a_and_b):
    conn, tx = await as_user(service_url, "rls-a")
    try:
        sessions = await conn.fetch("SELECT id, user_id FROM sessions")
        messages = await conn.fetch("SELECT id, user_id FROM messages")
        assert {r["user_id"] for r in sessions} == {"rls-a"}
        assert {r["user_id"] for r in messages} == {"rls-a"}
        b_session, b_message = rows_of_a_and_b["rls-b"]
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE id = $1", b_session) == 0
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE id = $1", b_message) == 0
    finally:
        await tx.rollback()
        await conn.close()


async def test_a_cannot_update_or_delete_b_rows(service_url, rows_of_a_and_b, admin_url):
    b_session, b_message = rows_of_a_and_b["rls-b"]
    conn, tx = await as_user(service_url, "rls-a")
    try:
        assert await conn.execute("UPDATE sessions SET title = 'hijacked' WHERE id = $1", b_session) == "UPDATE 0"
        assert await conn.execute("UPDATE messages SET content = '[]' WHERE id = $1", b_message) == "UPDATE 0"
        assert await conn.execute("DELETE FROM messages WHERE id = $1", b_message) == "DELETE 0"
        assert await conn.execute("DELETE FROM sessions WHERE id = $1", b_session) == "DELETE 0"
        # Even without any WHERE clause, only A's own rows are touched.
        assert await conn.execute("UPDATE sessions SET title = title") == "UPDATE 1"
    finally:
        await tx.commit()
        await conn.close()
    admin = await asyncpg.connect(admin_url)
    try:
        assert await admin.fetchval("SELECT title FROM sessions.sessions WHERE id = $1", b_session) == "rls-b"
        assert await admin.fetchval("SELECT count(*) FROM sessions.messages WHERE id = $1", b_message) == 1
    finally:
        await admin.close()


async def test_insert_carrying_b_id_is_rejected(service_url, rows_of_a_and_b):
    b_session, _ = rows_of_a_and_b["rls-b"]
    for statement, args in [
        ("INSERT INTO sessions (id, user_id, status) VALUES ($1, 'rls-b', 1)", (uuid.uuid4(),)),
        # A message into B's session, owned by B ...
        ("INSERT INTO messages (id, session_id, user_id, role, content) VALUES ($1, $2, 'rls-b', 1, '[]')",
         (uuid.uuid4(), b_session)),
    ]:
        conn, tx = await as_user(service_url, "rls-a")
        try:
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="row-level security"):
                await conn.execute(statement, *args)
        finally:
            await tx.rollback()
            await conn.close()
    # ... or owned by A: the composite foreign key says a message's owner is its session's.
    conn, tx = await as_user(service_url, "rls-a")
    try:
        with pytest.raises(asyncpg.exceptions.ForeignKeyViolationError):
            await conn.execute(
                "INSERT INTO messages (id, session_id, role, content) VALUES ($1, $2, 1, '[]')", uuid.uuid4(), b_session
            )
    finally:
        await tx.rollback()
        await conn.close()


async def test_without_a_user_nothing_is_visible_or_writable(service_url, rows_of_a_and_b):
    conn, tx = await as_user(service_url, None)
    try:
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 0
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
        assert await conn.fetchval("SELECT count(*) FROM message_feedback") == 0
        assert await conn.execute("DELETE FROM sessions") == "DELETE 0"
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO sessions (id, status) VALUES ($1, 1)", uuid.uuid4())
    finally:
        await tx.rollback()
        await conn.close()


async def test_the_service_role_cannot_turn_rls_off(service_url):
    conn = await asyncpg.connect(service_url, server_settings={"search_path": "sessions"})
    try:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute("ALTER TABLE sessions DISABLE ROW LEVEL SECURITY")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute("SET row_security = off; SELECT count(*) FROM sessions")
    finally:
        await conn.close()
