"""The shared database start-up: migrate as the admin, connect as the service role, jsonb as
Python objects, and a statement_timeout on every pooled connection."""

from __future__ import annotations

import uuid

import pytest

from services.runtime import errors
from services.runtime.db import DEFAULT_STATEMENT_TIMEOUT_SECONDS, open_service_database, statement_timeout_from_env

MIGRATION = """
CREATE TABLE notes (user_id text NOT NULL DEFAULT current_setting('app.user_id'), body jsonb NOT NULL);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
CREATE POLICY notes_owner ON notes USING (user_id = current_setting('app.user_id'))
    WITH CHECK (user_id = current_setting('app.user_id'));
"""


@pytest.fixture
def migrations(tmp_path):
    (tmp_path / "001_notes.sql").write_text(MIGRATION)
    return tmp_path


async def _open(admin_url, migrations, **overrides):
    options = dict(schema="runtime_db_test", role="parley_runtime_db_test", migrations_dir=migrations,
                   admin_url=admin_url, database_url=None, role_password=None, pool_size=2)
    return await open_service_database(**{**options, **overrides})


async def test_migrates_then_serves_as_the_role_with_jsonb_and_a_statement_timeout(admin_url, migrations):
    db = await _open(admin_url, migrations, statement_timeout=1.5)
    try:
        async with db.transaction("alice") as conn:
            await conn.execute("INSERT INTO notes (body) VALUES ($1)", {"a": [1, "two"]})
            assert await conn.fetchval("SELECT body FROM notes") == {"a": [1, "two"]}
            assert await conn.fetchval("SHOW statement_timeout") == "1500ms"
            assert await conn.fetchval("SELECT current_user") == "parley_runtime_db_test"
            assert not await conn.fetchval("SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user")
        async with db.transaction("bob", readonly=True) as conn:
            assert await conn.fetchval("SELECT count(*) FROM notes") == 0  # RLS, as the role
        with pytest.raises(errors.DeadlineExceeded):
            async with db.transaction("alice") as conn:
                await conn.execute("SELECT pg_sleep(5)")
    finally:
        await db.close()


async def test_a_second_start_applies_nothing_twice_and_zero_disables_the_timeout(admin_url, migrations):
    checked: list[bool] = []

    async def check_server(url: str, is_admin: bool) -> None:
        checked.append(is_admin)

    db = await _open(admin_url, migrations, statement_timeout=0, jsonb=False, check_server=check_server)
    try:
        async with db.transaction("alice", readonly=True) as conn:
            assert await conn.fetchval("SHOW statement_timeout") == "0"
            assert isinstance(await conn.fetchval("SELECT '{\"a\": 1}'::jsonb"), str)  # no codec asked for
    finally:
        await db.close()
    assert checked == [True]


def test_the_timeout_comes_from_the_service_setting_then_the_shared_one(monkeypatch):
    assert statement_timeout_from_env("sessions") == DEFAULT_STATEMENT_TIMEOUT_SECONDS
    monkeypatch.setenv("PARLEY_DATABASE_STATEMENT_TIMEOUT_SECONDS", "12")
    assert statement_timeout_from_env("sessions") == 12
    monkeypatch.setenv("PARLEY_SESSIONS_STATEMENT_TIMEOUT_SECONDS", "3.5")
    assert statement_timeout_from_env("sessions") == 3.5
    assert statement_timeout_from_env("files") == 12


async def test_connections_cut_by_the_server_answer_unavailable_then_are_replaced(admin_url, migrations):
    """What a PostgreSQL restart does to a pool: every backend is terminated under it. The next
    transactions answer UNAVAILABLE (retryable), never an unexpected error, and the pool
    recovers without a restart of the service."""
    import asyncpg

    db = await _open(admin_url, migrations)
    user = f"cut-{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        async with db.transaction(user) as conn:
            await conn.execute("INSERT INTO notes (body) VALUES ('1')")
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE usename = 'parley_runtime_db_test'")
        outcomes = []
        for _ in range(4):
            try:
                async with db.transaction(user, readonly=True) as conn:
                    outcomes.append(await conn.fetchval("SELECT count(*) FROM notes"))
            except errors.Unavailable:
                outcomes.append("unavailable")
        assert outcomes[-1] == 1 and set(outcomes) <= {1, "unavailable"}, outcomes
    finally:
        await admin.close()
        await db.close()


async def test_a_connection_left_in_a_broken_protocol_state_is_never_handed_out_again(admin_url, migrations):
    import asyncpg

    db = await _open(admin_url, migrations, pool_size=1)
    try:
        async with db.acquire() as conn:
            broken_pid = conn.get_server_pid()
        with pytest.raises(asyncpg.exceptions._base.InternalClientError):
            async with db.acquire() as conn:
                assert conn.get_server_pid() == broken_pid
                # What asyncpg raises on a connection whose server went away mid-reply.
                raise asyncpg.exceptions._base.InternalClientError("cannot switch to state 15; another operation (2) "
                                                                   "is in progress")
        async with db.acquire() as conn:
            assert conn.get_server_pid() != broken_pid
            assert await conn.fetchval("SELECT 1") == 1
        with pytest.raises(errors.Unavailable):
            async with db.transaction("alice"):
                raise asyncpg.exceptions._base.InternalClientError("cannot switch to state 12")
    finally:
        await db.close()


async def test_transactions_cancelled_anywhere_leave_no_transaction_open_and_no_stray_cancel(admin_url, migrations):
    """A call cancelled by its client (a deadline, a stream closed early) cancels the task in
    the middle of whatever it awaits, BEGIN and COMMIT included. Each such transaction is
    rolled back where it was cancelled, not left open for the pool's reset to find (asyncpg
    logs that as an error), and the transactions after it on the same connection all work."""
    import asyncio
    import random

    db = await _open(admin_url, migrations, pool_size=1)
    loop = asyncio.get_running_loop()
    left_open: list[str] = []
    previous = loop.get_exception_handler()

    def handler(_loop, context):
        if "active transaction" in context.get("message", ""):
            left_open.append(context["message"])
        elif previous is not None:
            previous(_loop, context)
        else:
            _loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    user = f"cancel-{uuid.uuid4().hex[:8]}"
    rng = random.Random(13)
    failures = []
    try:
        for _ in range(150):
            async def one() -> None:
                async with db.transaction(user) as conn:
                    await conn.execute("INSERT INTO notes (body) VALUES ('1')")

            task = asyncio.create_task(one())
            await asyncio.sleep(rng.uniform(0, 0.003))
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            try:  # the next transaction on the (only) connection
                async with db.transaction(user, readonly=True) as conn:
                    await conn.fetchval("SELECT count(*) FROM notes")
            except errors.ParleyError as exc:
                failures.append(exc)
        async with db.acquire() as conn:
            assert not conn.is_in_transaction()
    finally:
        loop.set_exception_handler(previous)
        await db.close()
    assert left_open == [] and failures == [], (left_open[:2], failures[:2])
