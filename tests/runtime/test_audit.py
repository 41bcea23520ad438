"""The runtime's audit log and deletion marks on a real PostgreSQL: append-only for the service
role (and, through the trigger, for the owner too), events committed with their change or
not at all, queued events written in batches, retention through the definer function (itself
audited), listing with filters and keyset paging, and the deletion lock that keeps a
deleted user's late writes out."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from services.runtime import audit, errors
from services.runtime.audit import AuditFilter, AuditLog, AuditSettings, Kind, Outcome
from services.runtime.db import open_service_database, with_credentials
from services.runtime.user_data import deleted_since, deletion, delete_rows

SCHEMA, ROLE = "runtime_audit_test", "parley_runtime_audit_test"
NOTES = """
CREATE TABLE notes (id serial PRIMARY KEY, user_id text NOT NULL DEFAULT current_setting('app.user_id'), body text);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
CREATE POLICY notes_owner ON notes USING (user_id = current_setting('app.user_id'))
    WITH CHECK (user_id = current_setting('app.user_id'));
"""


@pytest.fixture(scope="module")
def migrations(tmp_path_factory):
    directory = tmp_path_factory.mktemp("audit-migrations")
    (directory / "001_notes.sql").write_text(NOTES)
    return directory


@pytest.fixture(scope="module")
async def db(admin_url, migrations):
    database = await open_service_database(schema=SCHEMA, role=ROLE, migrations_dir=migrations, admin_url=admin_url,
                                           database_url=None, role_password=None, pool_size=4, audit=True)
    yield database
    await database.close()


@pytest.fixture
def log(db):
    return AuditLog("tester", db, AuditSettings(retention_days=0, flush_interval_seconds=0.05, batch_size=3))


async def admin(admin_url) -> asyncpg.Connection:
    return await asyncpg.connect(admin_url, server_settings={"search_path": SCHEMA})


async def count(admin_url, where: str = "true", *args) -> int:
    conn = await admin(admin_url)
    try:
        return await conn.fetchval(f"SELECT count(*) FROM audit_events WHERE {where}", *args)
    finally:
        await conn.close()


async def test_the_role_may_append_and_read_but_never_change_or_remove(db, log, admin_url):
    async with db.transaction("alice") as conn:
        event = await log.write(conn, Kind.SESSION_DELETED, subject="alice", resource="s-1")
    role = await asyncpg.connect(with_credentials(admin_url, ROLE, None), server_settings={"search_path": SCHEMA})
    try:
        for statement in ("UPDATE audit_events SET kind = 'x' WHERE id = $1", "DELETE FROM audit_events WHERE id = $1"):
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await role.execute(statement, event.id)
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await role.execute("TRUNCATE audit_events")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):  # nor call past the definer's guard
            await role.execute("SELECT set_config('parley.audit_purge', 'on', false); DELETE FROM audit_events")
        # Reading needs the reader flag (the admin listing sets it): a user's query sees nothing.
        async with role.transaction():
            await role.execute("SELECT set_config('app.user_id', 'alice', true)")
            assert await role.fetchval("SELECT count(*) FROM audit_events") == 0
            await role.execute("SELECT set_config('app.audit_reader', 'on', true)")
            assert await role.fetchval("SELECT count(*) FROM audit_events WHERE id = $1", event.id) == 1
    finally:
        await role.close()
    owner = await admin(admin_url)  # the owner (a superuser) has the privileges; the trigger still refuses
    try:
        for statement in ("UPDATE audit_events SET kind = 'x'", "DELETE FROM audit_events", "TRUNCATE audit_events"):
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="append-only"):
                await owner.execute(statement)
    finally:
        await owner.close()
    assert await count(admin_url, "id = $1 AND kind = 'session.deleted'", event.id) == 1


async def test_an_event_commits_with_its_change_or_not_at_all(db, log, admin_url):
    with pytest.raises(RuntimeError):
        async with db.transaction("bob") as conn:
            await conn.execute("INSERT INTO notes (body) VALUES ('x')")
            rolled_back = await log.write(conn, Kind.FILE_DELETED, subject="bob", resource="f-rolled-back")
            raise RuntimeError("the change fails after the event was written")
    assert await count(admin_url, "id = $1", rolled_back.id) == 0
    async with db.transaction("bob") as conn:
        kept = await log.write(conn, Kind.FILE_DELETED, subject="bob", resource="f-kept")
    assert await count(admin_url, "id = $1", kept.id) == 1


async def test_queued_events_take_the_calls_context_and_are_written_in_batches(db, log, admin_url):
    class Context:
        def peer(self):
            return "ipv4:10.1.2.3:40000"

    async def one_call(i: int):
        audit.begin_call((("x-request-id", f"req-{i}"),), Context())
        audit.note_actor(f"actor-{i}")
        return log.record(Kind.PERMISSION_DENIED, outcome=Outcome.DENIED, resource="/svc/Method",
                          source=audit.call_source(), details={"reason": "SCOPE_MISSING", "note": "x" * 1000,
                                                               "nested": {"a": 1}})

    events = await asyncio.gather(*(asyncio.create_task(one_call(i)) for i in range(7)))
    assert log.pending == 7
    assert await log.flush() == 7  # three statements of at most 3 events
    assert log.pending == 0
    conn = await admin(admin_url)
    try:
        rows = {r["request_id"]: r for r in await conn.fetch(
            "SELECT * FROM audit_events WHERE id = ANY($1::uuid[])", [e.id for e in events])}
    finally:
        await conn.close()
    assert sorted(rows) == [f"req-{i}" for i in range(7)]
    row = rows["req-4"]
    assert (row["actor_user_id"], row["source"], row["outcome"], row["service"]) == ("actor-4", "10.1.2.3", "denied",
                                                                                    "tester")
    details = json.loads(row["details"])
    assert details["reason"] == "SCOPE_MISSING" and len(details["note"]) == audit.MAX_DETAIL_TEXT
    assert details["nested"] == "{'a': 1}"  # flattened to a short string, never a structure


async def test_the_flusher_writes_queued_events_in_the_background_and_at_close(db, admin_url):
    log = AuditLog("background", db, AuditSettings(retention_days=0, flush_interval_seconds=0.05))
    log.start()
    first = log.record(Kind.AUTH_FAILED, outcome=Outcome.DENIED, source="10.0.0.1")
    for _ in range(200):  # flushed every 50 ms: a bounded wait
        if await count(admin_url, "id = $1", first.id):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the queued event was not written")
    last = log.record(Kind.AUTH_FAILED, outcome=Outcome.DENIED, source="10.0.0.2")
    await log.aclose()
    assert await count(admin_url, "id = $1", last.id) == 1


async def test_retention_purges_old_events_through_the_definer_function_and_audits_itself(db, admin_url):
    log = AuditLog("retention", db, AuditSettings(retention_days=30))
    old_ids = [uuid.uuid4() for _ in range(5)]
    conn = await admin(admin_url)
    try:
        await conn.executemany(
            "INSERT INTO audit_events (id, event_time, service, kind, outcome) VALUES ($1, $2, 'retention', "
            "'auth.failed', 'denied')", [(i, datetime.now(timezone.utc) - timedelta(days=40)) for i in old_ids])
    finally:
        await conn.close()
    async with db.transaction("carol") as tx:
        recent = await log.write(tx, Kind.SESSION_DELETED, subject="carol")
    assert await log.purge(timedelta(days=30), batch=2) >= 5  # batches of two, each with its own event
    assert await count(admin_url, "id = ANY($1::uuid[])", old_ids) == 0
    assert await count(admin_url, "id = $1", recent.id) == 1
    conn = await admin(admin_url)
    try:
        purged = await conn.fetch("SELECT details::text FROM audit_events WHERE service = 'retention' "
                                  "AND kind = 'retention.purged'")
    finally:
        await conn.close()
    assert sum(json.loads(r["details"])["count"] for r in purged) >= 5
    assert all(json.loads(r["details"])["table"] == "audit_events" for r in purged)
    assert await log.purge(timedelta(days=30)) == 0  # nothing left to purge: no event either


async def test_listing_filters_and_pages_newest_first(db, admin_url):
    log = AuditLog("lister", db, AuditSettings(retention_days=0))
    subject = f"subj-{uuid.uuid4().hex[:8]}"
    written = []
    async with db.transaction(subject) as conn:
        for i in range(7):
            kind = Kind.FILE_DELETED if i % 2 else Kind.SESSION_DELETED
            written.append(await log.write(conn, kind, actor="admin-1" if i < 3 else "admin-2", subject=subject,
                                           resource=f"r{i}"))
    query = AuditFilter(subject_user_id=subject)
    pages, after = [], None
    while True:
        events, more = await log.list("admin-1", query, after=after, limit=3)
        pages.append([e.resource_id for e in events])
        if not more:
            break
        after = (events[-1].event_time, events[-1].id)
    assert pages == [["r6", "r5", "r4"], ["r3", "r2", "r1"], ["r0"]]
    files, _ = await log.list("admin-1", AuditFilter(subject_user_id=subject, kinds=("file.deleted",)), after=None,
                              limit=10)
    assert [e.resource_id for e in files] == ["r5", "r3", "r1"]
    by_actor, _ = await log.list("admin-1", AuditFilter(subject_user_id=subject, actor_user_id="admin-1"),
                                 after=None, limit=10)
    assert [e.resource_id for e in by_actor] == ["r2", "r1", "r0"]
    window, _ = await log.list("admin-1", AuditFilter(subject_user_id=subject, start=written[2].event_time,
                                                      end=written[5].event_time), after=None, limit=10)
    assert [e.resource_id for e in window] == ["r4", "r3", "r2"]
    assert AuditFilter(kinds=("no.such",), actor_user_id="bad user").violations()[0].field == "filter.kinds[0]"


async def test_without_a_database_events_are_log_lines(caplog):
    log = AuditLog("engine", None, AuditSettings(retention_days=0))
    with caplog.at_level(logging.INFO, logger="parley.audit"):
        log.record(Kind.USER_DATA_DELETED, actor="admin-1", subject="gone", details={"runs_stopped": 2})
    line = next(r for r in caplog.records if r.name == "parley.audit")
    assert line.fields["audit"]["kind"] == "user_data.deleted"
    assert line.fields["audit"]["details"] == {"runs_stopped": 2}
    assert not log.queryable
    with pytest.raises(errors.FailedPrecondition):
        await log.list("admin", AuditFilter(), after=None, limit=1)


async def test_a_write_in_flight_during_a_deletion_sees_the_mark_and_one_before_it_is_deleted_too(db):
    user = f"gone-{uuid.uuid4().hex[:8]}"
    started = datetime.now(timezone.utc)
    # A write that commits while the deletion waits for it: the deletion then removes it too.
    writer = db.pool.acquire()
    conn = await writer.__aenter__()
    tx = conn.transaction()
    await tx.start()
    await conn.execute("SELECT set_config('app.user_id', $1, true)", user)
    assert not await deleted_since(conn, user, started)
    await conn.execute("INSERT INTO notes (body) VALUES ('early')")

    async def delete():
        async with deletion(db, user) as dconn:
            return await delete_rows(dconn, ("notes",))

    deleting = asyncio.create_task(delete())
    await asyncio.sleep(0.3)
    assert not deleting.done()  # waiting for the write's shared lock
    await tx.commit()
    await writer.__aexit__(None, None, None)
    assert (await deleting) == {"notes": 1}
    # A write begun before the deletion, committing after it: it sees the mark.
    async with db.transaction(user) as conn:
        assert await deleted_since(conn, user, started)
        assert not await deleted_since(conn, user, datetime.now(timezone.utc) + timedelta(seconds=1))


async def test_two_flushes_at_once_write_each_event_once(db, admin_url):
    log = AuditLog("twice", db, AuditSettings(retention_days=0, batch_size=4))
    events = [log.record(Kind.AUTH_FAILED, outcome=Outcome.DENIED, source=f"10.9.0.{i}") for i in range(10)]
    assert sum(await asyncio.gather(log.flush(), log.flush(), log.flush())) == 10
    assert await count(admin_url, "id = ANY($1::uuid[])", [e.id for e in events]) == 10


async def test_a_batch_written_again_after_an_unanswered_commit_is_not_doubled(db, admin_url):
    log = AuditLog("again", db, AuditSettings(retention_days=0))
    events = [log.record(Kind.AUTH_FAILED, outcome=Outcome.DENIED, source="10.8.0.1") for _ in range(3)]
    await log.flush()
    for event in events:  # as if the commit had gone through but its answer was lost
        log._buffer.append(event)
    assert await log.flush() == 3
    assert await count(admin_url, "id = ANY($1::uuid[])", [e.id for e in events]) == 3
