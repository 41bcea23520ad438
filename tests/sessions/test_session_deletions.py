"""RunStoreService.WatchSessionDeletions: the engine hears each session deletion as it commits
(a NOTIFY from a trigger on the sessions table), with the session's owner, and nothing else."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from parley.runstore.v1 import runstore_service_pb2 as rs
from parley.sessions.v1 import sessions_service_pb2 as sapi
from services.sessions.runstore.models import ENGINE_SCOPE
from tests.conftest import rich_error


async def test_only_the_engine_may_watch_session_deletions(run_store_stub, as_user):
    call = run_store_stub.WatchSessionDeletions(rs.WatchSessionDeletionsRequest(), metadata=as_user("someone"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    code, reason, _ = rich_error(caught.value)
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ENGINE_SCOPE_REQUIRED")


async def test_a_deleted_session_is_announced_with_its_owner(run_store_stub, sessions_stub, as_user):
    owner = f"del-{uuid.uuid4().hex[:12]}"
    md = as_user(owner)
    kept = await sessions_stub.CreateSession(sapi.CreateSessionRequest(title="kept"), metadata=md)
    doomed = await sessions_stub.CreateSession(sapi.CreateSessionRequest(title="doomed"), metadata=md)
    call = run_store_stub.WatchSessionDeletions(rs.WatchSessionDeletionsRequest(),
                                                metadata=as_user("parley-assistants-engine", (ENGINE_SCOPE,)))
    try:
        first = await asyncio.wait_for(call.read(), 30)
        assert (first.session_id, first.user_id) == ("", "")  # listening
        await sessions_stub.DeleteSession(sapi.DeleteSessionRequest(session_id=doomed.id), metadata=md)
        # Other tests share the server: skip deletions that are not this test's.
        while True:
            deletion = await asyncio.wait_for(call.read(), 30)
            if deletion.user_id == owner:
                break
        assert deletion.session_id == doomed.id
        # A delete that deleted nothing (an unknown session) announces nothing.
        with pytest.raises(grpc.aio.AioRpcError):
            await sessions_stub.DeleteSession(sapi.DeleteSessionRequest(session_id=doomed.id), metadata=md)
        await sessions_stub.DeleteSession(sapi.DeleteSessionRequest(session_id=kept.id), metadata=md)
        while True:
            deletion = await asyncio.wait_for(call.read(), 30)
            if deletion.user_id == owner:
                break
        assert deletion.session_id == kept.id
    finally:
        call.cancel()
