"""The usage ledger (batched, under RLS), GetUsage, budgets, and a database outage that must
not touch streams."""

from __future__ import annotations

import asyncio
import subprocess

import asyncpg
import grpc
import pytest

from parley.llm.v1 import llm_pb2 as pb
from parley.llm.v1 import llm_service_pb2 as api
from parley.llm.v1 import llm_service_pb2_grpc
from services.llm.repository import ROLE, SCHEMA
from services.runtime.db import with_credentials
from services.runtime.status import error_details, from_rpc_error
from tests.conftest import channel_to
from tests.llm.conftest import llm_settings, start_llm
from tests.llm.helpers import collect, user


async def wait_for_usage(stub, metadata, requests: int, **fields) -> api.GetUsageResponse:
    """GetUsage once the batched ledger has written at least `requests` calls (bounded wait)."""
    for _ in range(250):
        reply = await stub.GetUsage(api.GetUsageRequest(**fields), metadata=metadata)
        if reply.total.request_count >= requests:
            return reply
        await asyncio.sleep(0.02)
    raise AssertionError(f"the ledger never reached {requests} calls: {reply.total}")


async def test_every_call_is_recorded_and_aggregated(stub, fakes, as_user):
    me = as_user("ulla")
    fakes["openai"].script("budgeted", {"text": "one", "usage": (100, 10)}, {"text": "two", "usage": (50, 5, 20)},
                           {"status": 400, "error": "bad"})
    await stub.Generate(api.GenerateRequest(model="openai/budgeted", messages=[user("a")], temperature=0), metadata=me)
    await collect(stub.StreamGenerate(api.StreamGenerateRequest(model="openai/budgeted", messages=[user("b")]),
                                      metadata=me))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Generate(api.GenerateRequest(model="openai/budgeted", messages=[user("c")]), metadata=me)
    cached = await stub.Generate(api.GenerateRequest(model="openai/budgeted", messages=[user("a")], temperature=0),
                                 metadata=me)
    assert cached.cache_hit
    reply = await wait_for_usage(stub, me, 4, group_by=[pb.USAGE_GROUP_BY_MODEL, pb.USAGE_GROUP_BY_DAY])
    total = reply.total
    assert (total.request_count, total.error_count, total.cache_hit_count) == (4, 1, 1)
    assert (total.usage.input_tokens, total.usage.output_tokens, total.usage.cached_input_tokens) == (150, 15, 20)
    # 1000 USD per million tokens in the models file: (100 + 10) + (30 + 20 cached + 5) tokens.
    assert total.cost_usd == pytest.approx((110 + 30 + 20 + 5) * 1000 / 1e6)
    assert total.latency.max.ToTimedelta() > total.latency.p50.ToTimedelta() * 0
    assert [(r.model, r.request_count) for r in reply.rows] == [("openai/budgeted", 4)]
    assert reply.rows[0].HasField("day_start_time")
    assert reply.rows[0].time_to_first_token.max.ToTimedelta().total_seconds() > 0


async def test_usage_is_private_unless_admin(stub, as_user):
    await stub.Generate(api.GenerateRequest(model="local/echo", messages=[user("mine")]), metadata=as_user("vic"))
    await wait_for_usage(stub, as_user("vic"), 1)
    other = await stub.GetUsage(api.GetUsageRequest(), metadata=as_user("wanda"))
    assert other.total.request_count == 0 and not other.rows
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUsage(api.GetUsageRequest(target_user_id="vic"), metadata=as_user("wanda"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUsage(api.GetUsageRequest(all_users=True), metadata=as_user("wanda"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = as_user("root", scopes=("admin",))
    vic = await stub.GetUsage(api.GetUsageRequest(target_user_id="vic"), metadata=admin)
    assert vic.total.request_count >= 1
    everyone = await stub.GetUsage(api.GetUsageRequest(all_users=True, group_by=[pb.USAGE_GROUP_BY_USER],
                                                       page_size=1), metadata=admin)
    assert len(everyone.rows) == 1 and everyone.next_page_token
    assert everyone.total.request_count > vic.total.request_count
    page2 = await stub.GetUsage(api.GetUsageRequest(all_users=True, group_by=[pb.USAGE_GROUP_BY_USER], page_size=1,
                                                    page_token=everyone.next_page_token), metadata=admin)
    assert page2.rows[0].user_id > everyone.rows[0].user_id


async def test_budget_exceeded(stub, fakes, as_user):
    bob = as_user("bob")
    budget = await stub.SetBudget(api.SetBudgetRequest(limits=[
        pb.BudgetLimit(period=pb.BUDGET_PERIOD_DAY, limit_tokens=30)]), metadata=bob)
    assert budget.limits[0].limit_tokens == 30 and not budget.limits[0].admin_set
    fakes["openai"].script("gpt-4o-mini", {"text": "a", "usage": (11, 7)}, {"text": "b", "usage": (11, 7)})
    for _ in range(2):
        await stub.Generate(api.GenerateRequest(model="openai/gpt-4o-mini", messages=[user("q")]), metadata=bob)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub.StreamGenerate(api.StreamGenerateRequest(model="openai/gpt-4o-mini", messages=[user("q")]),
                                          metadata=bob))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    found = error_details(from_rpc_error(caught.value))
    assert found["ErrorInfo"].reason == "BUDGET_EXCEEDED"
    assert "budget exceeded" in caught.value.details()
    assert found["RetryInfo"].retry_delay.seconds > 0
    status = await stub.GetBudget(api.GetBudgetRequest(), metadata=bob)
    assert status.limits[0].spent_tokens >= 36
    assert status.limits[0].reset_time.ToDatetime() > status.limits[0].period_start_time.ToDatetime()
    # Other users are unaffected.
    await stub.Generate(api.GenerateRequest(model="local/echo", messages=[user("q")]), metadata=as_user("carl"))


async def test_admin_limits_can_only_be_lowered_by_their_user(stub, as_user):
    admin = as_user("root", scopes=("admin",))
    dana = as_user("dana")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetBudget(api.SetBudgetRequest(target_user_id="erin", limits=[]), metadata=dana)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    set_by_admin = await stub.SetBudget(api.SetBudgetRequest(target_user_id="dana", limits=[
        pb.BudgetLimit(period=pb.BUDGET_PERIOD_MONTH, limit_usd=10.0)]), metadata=admin)
    assert set_by_admin.limits[0].admin_set and set_by_admin.user_id == "dana"
    for limits in ([], [pb.BudgetLimit(period=pb.BUDGET_PERIOD_MONTH, limit_usd=20.0)]):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SetBudget(api.SetBudgetRequest(limits=limits), metadata=dana)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    lowered = await stub.SetBudget(api.SetBudgetRequest(limits=[
        pb.BudgetLimit(period=pb.BUDGET_PERIOD_MONTH, limit_usd=5.0),
        pb.BudgetLimit(period=pb.BUDGET_PERIOD_WEEK, limit_tokens=1000)]), metadata=dana)
    assert {(l.period, l.admin_set) for l in lowered.limits} == {(pb.BUDGET_PERIOD_MONTH, True),
                                                                  (pb.BUDGET_PERIOD_WEEK, False)}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetBudget(api.SetBudgetRequest(limits=[pb.BudgetLimit(period=pb.BUDGET_PERIOD_DAY)]), metadata=dana)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_database_outage_neither_blocks_streams_nor_loses_records(admin_url, identity_public_key, as_user,
                                                                        tmp_path):
    """The database dies: streams go on, records wait in the spool on disk, the process dies
    too, and the next process writes them once the database answers."""
    spool = tmp_path / "spool"
    settings = llm_settings(admin_url, usage_spool_dir=str(spool))
    app, running = await start_llm(settings, identity_public_key)
    channel = channel_to(running)
    stub = llm_service_pb2_grpc.LLMServiceStub(channel)
    try:
        app.db.pool.terminate()  # the database "crashes": every query now fails
        me = as_user("otto")
        for i in range(3):
            text, _, finish, _ = await collect(stub.StreamGenerate(
                api.StreamGenerateRequest(model="local/echo", messages=[user(f"still streaming {i}")]), metadata=me))
            assert text == f"still streaming {i}" and finish.finish_reason == pb.FINISH_REASON_STOP
        for _ in range(250):
            files = list(spool.glob("usage-*.jsonl"))
            if app.ledger.pending == 0 and files and len(files[0].read_text().splitlines()) == 3:
                break
            await asyncio.sleep(0.02)
        assert app.ledger.pending == 0
        [spooled] = spool.glob("usage-*.jsonl")
    finally:
        await channel.close()
        await running.stop(0.5)
    # The process "dies" with its spool on disk: give the file the pid of a finished process.
    dead = subprocess.Popen(["true"])
    dead.wait()
    spooled.rename(spool / f"usage-{dead.pid}-dead.jsonl")
    app, running = await start_llm(settings, identity_public_key)
    try:
        conn = await asyncpg.connect(admin_url)
        try:
            for _ in range(250):
                count = await conn.fetchval("SELECT count(*) FROM llm.usage_records WHERE user_id = 'otto'")
                if count == 3:
                    break
                await asyncio.sleep(0.02)
        finally:
            await conn.close()
        assert count == 3
        assert not list(spool.glob("usage-*.jsonl"))
    finally:
        await running.stop(0.5)


async def test_cancelled_calls_are_recorded(stub, fakes, admin_url, as_user):
    fakes["openai"].script("endless", {"endless": True})
    call = stub.StreamGenerate(api.StreamGenerateRequest(model="openai/endless", messages=[user("go")]),
                               metadata=as_user("cancelling-carol"))
    async for _ in call:
        call.cancel()
        break
    conn = await asyncpg.connect(admin_url)
    try:
        for _ in range(250):
            status = await conn.fetchval(
                "SELECT status FROM llm.usage_records WHERE user_id = 'cancelling-carol' AND model = 'openai/endless'")
            if status:
                break
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    assert status == "cancelled"


async def test_rls_is_forced_for_the_service_role(admin_url):
    """Even with a missing filter, the service role sees only the current user's rows."""
    url = with_credentials(admin_url, ROLE, None)
    conn = await asyncpg.connect(url, server_settings={"search_path": SCHEMA})
    try:
        assert await conn.fetchval("SELECT count(*) FROM usage_records") == 0  # no user set
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.user_id', 'ulla', true)")
            users = await conn.fetch("SELECT DISTINCT user_id FROM usage_records")
        assert [r["user_id"] for r in users] in ([], ["ulla"])
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute("ALTER TABLE usage_records DISABLE ROW LEVEL SECURITY")
    finally:
        await conn.close()
