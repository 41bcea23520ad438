"""PostgreSQL restarted under load, with every service left running.

Clients keep appending messages (sessions, through the gateway) and making model calls (the
llm service records one usage record per call, written in batches off the call path) while
PostgreSQL is restarted twice: a fast restart (SIGINT, what `pg_ctl restart -m fast` sends,
and started again at once) and an outage of a few seconds. Every call answers OK or a
retryable status with a reason (UNAVAILABLE; DEADLINE_EXCEEDED for one cut mid-statement),
never INTERNAL/UNKNOWN; afterwards the same processes answer again (their asyncpg pools
replace the broken connections), every acknowledged message is stored, and every successful
model call has its usage record — counted by id.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import asyncpg
import grpc

from parley.llm.v1 import llm_service_pb2 as lapi
from parley.llm.v1 import llm_service_pb2_grpc as lgrpc
from parley.sessions.v1 import sessions_pb2 as spb
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from tests.faults.conftest import assert_clear
from tests.llm.helpers import user

WRITERS = 4
CALLERS = 2
OUTAGE_SECONDS = 3.0
# After PostgreSQL is back, calls must succeed again within this (the pools reconnect on the
# next acquire; generous for a loaded machine), and the usage ledger must have caught up
# within FLUSHED_WITHIN (its retry backoff after a failure starts at 1 s and doubles).
RECOVERS_WITHIN = 20.0
FLUSHED_WITHIN = 40.0
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Load:
    def __init__(self) -> None:
        self.acknowledged: list[str] = []  # message ids
        self.answered: list[str] = []  # model call ids
        self.failures: Counter[str] = Counter()
        self.last_ok = {"messages": 0.0, "model": 0.0}
        self.stopping = False

    def failed(self, error: grpc.aio.AioRpcError) -> None:
        reason = assert_clear(error, *RETRYABLE)
        self.failures[f"{error.code().name}/{reason}"] += 1

    async def write_messages(self, stub, auth, session_id: str, writer: int) -> None:
        n = 0
        while not self.stopping:
            n += 1
            try:
                message = await stub.CreateMessage(sapi.CreateMessageRequest(
                    session_id=session_id, role=spb.ROLE_USER, content=[spb.ContentPart(text=f"w{writer} #{n}")]),
                    metadata=auth, timeout=5)
                self.acknowledged.append(message.id)
                self.last_ok["messages"] = time.monotonic()
            except grpc.aio.AioRpcError as error:
                self.failed(error)
                await asyncio.sleep(0.05)

    async def call_models(self, stub, auth) -> None:
        while not self.stopping:
            try:
                reply = await stub.Generate(lapi.GenerateRequest(model="local/echo", messages=[user("count me")]),
                                            metadata=auth, timeout=5)
                self.answered.append(reply.id)
                self.last_ok["model"] = time.monotonic()
            except grpc.aio.AioRpcError as error:
                self.failed(error)
                await asyncio.sleep(0.05)

    async def until_both_succeed_after(self, moment: float) -> float:
        started = time.monotonic()
        while min(self.last_ok.values()) <= moment:
            assert time.monotonic() - started < RECOVERS_WITHIN, \
                f"calls did not succeed again within {RECOVERS_WITHIN:.0f} s; failures so far: {dict(self.failures)}"
            await asyncio.sleep(0.05)
        return time.monotonic() - moment


async def _stored(url: str, user_id: str, message_ids: list[str], call_ids: list[str]) -> tuple[int, int, int, int]:
    conn = await asyncpg.connect(url)
    try:
        messages = await conn.fetchval("SELECT count(*) FROM sessions.messages WHERE id = ANY($1::uuid[])", message_ids)
        all_messages = await conn.fetchval("SELECT count(*) FROM sessions.messages WHERE user_id = $1", user_id)
        calls = await conn.fetchval("SELECT count(*) FROM llm.usage_records WHERE id = ANY($1::uuid[]) AND status = 'ok'",
                                    call_ids)
        all_calls = await conn.fetchval("SELECT count(*) FROM llm.usage_records WHERE user_id = $1", user_id)
    finally:
        await conn.close()
    return messages, all_messages, calls, all_calls


async def test_postgres_restarted_under_load_loses_no_acknowledged_write(fault_stack):
    postgres = fault_stack.postgres
    user_id = f"pg-{uuid.uuid4().hex[:8]}"
    key = await asyncio.to_thread(fault_stack.suite.admin_key, user_id)
    auth = (("authorization", f"Bearer {key}"),)
    load = Load()
    timeline = []
    async with fault_stack.channel() as channel:
        sessions, llm = sgrpc.SessionServiceStub(channel), lgrpc.LLMServiceStub(channel)
        session_ids = [(await sessions.CreateSession(sapi.CreateSessionRequest(title=f"load {i}"), metadata=auth,
                                                      timeout=10)).id for i in range(WRITERS)]
        tasks = [asyncio.create_task(load.write_messages(sessions, auth, sid, i)) for i, sid in enumerate(session_ids)]
        tasks += [asyncio.create_task(load.call_models(llm, auth)) for _ in range(CALLERS)]
        try:
            await asyncio.sleep(1.5)
            # A fast restart: every connection is cut, the server is back at once.
            cut = time.monotonic()
            await asyncio.to_thread(postgres.stop, "fast")
            await asyncio.to_thread(postgres.start)
            timeline.append(("fast restart", time.monotonic() - cut, await load.until_both_succeed_after(cut)))
            await asyncio.sleep(1.5)
            # An outage of a few seconds.
            cut = time.monotonic()
            await asyncio.to_thread(postgres.stop, "fast")
            await asyncio.sleep(OUTAGE_SECONDS)
            await asyncio.to_thread(postgres.start)
            timeline.append(("outage", time.monotonic() - cut, await load.until_both_succeed_after(cut)))
            await asyncio.sleep(1.5)
        finally:
            load.stopping = True
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    deadline = time.monotonic() + FLUSHED_WITHIN
    while True:
        messages, all_messages, calls, all_calls = await _stored(postgres.url, user_id, load.acknowledged, load.answered)
        if calls == len(load.answered) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    for what, down, back in timeline:
        print(f"\n[fault] PostgreSQL {what}: down {down:.2f} s; messages and model calls succeeded again "
              f"{back:.2f} s after it went down")
    print(f"[fault] {len(load.acknowledged)} messages acknowledged, {messages} of them found "
          f"({all_messages} stored in all); {len(load.answered)} model calls answered, {calls} usage records "
          f"of them found ({all_calls} records in all); failed calls: {dict(load.failures) or 'none'}")
    assert load.failures, "no call failed: PostgreSQL was not really down under the load"
    assert messages == len(load.acknowledged), "acknowledged messages were lost"
    assert calls == len(load.answered), "successful model calls lost their usage records"
    # A message may be stored whose acknowledgement was lost with the connection, never more.
    assert all_messages - messages <= sum(load.failures.values())
