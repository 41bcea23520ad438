"""Sessions idle past the retention age are purged, with their messages, for every user."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg

from parley.sessions.v1 import sessions_pb2 as pb
from parley.sessions.v1 import sessions_service_pb2 as api
from services.runtime.audit import AuditFilter
from services.sessions.app import build_app
from tests.sessions.conftest import sessions_settings


async def _age(admin_url: str, session_id: str, days: int) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("UPDATE sessions.sessions SET update_time = now() - make_interval(days => $2) WHERE id = $1",
                           uuid.UUID(session_id), days)
    finally:
        await conn.close()


async def _exists(admin_url: str, session_id: str) -> tuple[bool, int]:
    conn = await asyncpg.connect(admin_url)
    try:
        sid = uuid.UUID(session_id)
        return (await conn.fetchval("SELECT count(*) FROM sessions.sessions WHERE id = $1", sid) == 1,
                await conn.fetchval("SELECT count(*) FROM sessions.messages WHERE session_id = $1", sid))
    finally:
        await conn.close()


async def _session_with_message(stub, me, title):
    session = await stub.CreateSession(api.CreateSessionRequest(title=title), metadata=me)
    await stub.CreateMessage(api.CreateMessageRequest(session_id=session.id, role=pb.ROLE_USER,
                                                      content=[pb.ContentPart(text="hi")]), metadata=me)
    return session


async def test_purge_removes_only_idle_sessions_of_all_users(sessions_server, sessions_stub, as_user, admin_url):
    old_a = await _session_with_message(sessions_stub, as_user("ret-a"), "old a")
    old_b = await _session_with_message(sessions_stub, as_user("ret-b"), "old b")
    fresh = await _session_with_message(sessions_stub, as_user("ret-a"), "fresh")
    await _age(admin_url, old_a.id, 40)
    await _age(admin_url, old_b.id, 31)
    await _age(admin_url, fresh.id, 29)

    purged = await sessions_server.app.sessions.purge_idle_sessions(timedelta(days=30), batch=1)
    assert purged >= 2
    # Each batch committed with its own audit event (the system acting: no actor).
    events, _ = await sessions_server.app.audit_log.list("auditor", AuditFilter(kinds=("retention.purged",)),
                                                         after=None, limit=1000)
    mine = [e for e in events if e.details.get("table") == "sessions"]
    assert sum(e.details["count"] for e in mine) >= 2 and all(e.details["count"] == 1 for e in mine)
    assert all(e.actor_user_id == "" and e.service == "sessions" for e in mine)
    assert await _exists(admin_url, old_a.id) == (False, 0)
    assert await _exists(admin_url, old_b.id) == (False, 0)
    assert await _exists(admin_url, fresh.id) == (True, 1)


async def test_activity_resets_the_idle_clock(sessions_server, sessions_stub, as_user, admin_url):
    me = as_user("ret-active")
    session = await _session_with_message(sessions_stub, me, "revived")
    await _age(admin_url, session.id, 40)
    await sessions_stub.CreateMessage(api.CreateMessageRequest(session_id=session.id, role=pb.ROLE_USER,
                                                               content=[pb.ContentPart(text="back")]), metadata=me)
    await sessions_server.app.sessions.purge_idle_sessions(timedelta(days=30))
    assert await _exists(admin_url, session.id) == (True, 2)


async def test_the_service_runs_the_purge_on_its_own(sessions_stub, as_user, admin_url):
    session = await _session_with_message(sessions_stub, as_user("ret-job"), "forgotten")
    await _age(admin_url, session.id, 400)
    app = await build_app(sessions_settings(admin_url, retention_days=365, retention_interval_seconds=0.05))
    try:
        for _ in range(200):
            if not (await _exists(admin_url, session.id))[0]:
                break
            await asyncio.sleep(0.05)
        assert await _exists(admin_url, session.id) == (False, 0)
    finally:
        await app.aclose()
