"""The llm service's part of a user's data deletion, through its internal UserDataService
with a gateway identity holding the admin scope: usage records and budget go (or usage stays
for billing, when the deployment says so), a usage record buffered before the deletion and
written after it does not bring the user back, and only administrators may ask."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import asyncpg
import grpc
import pytest

from parley.admin.v1 import audit_pb2
from parley.admin.v1 import user_data_service_pb2_grpc as ugrpc
from parley.llm.v1 import llm_pb2
from parley.llm.v1 import llm_service_pb2 as api
from parley.llm.v1 import llm_service_pb2_grpc
from services.llm.usage import UsageRecord
from tests.conftest import channel_to, expect_error
from tests.llm.conftest import llm_settings, start_llm

ADMIN = ("admin",)


def prompt(text: str = "hi") -> api.GenerateRequest:
    return api.GenerateRequest(model="local/echo", messages=[
        llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text=text)])])


async def counts(admin_url: str, user: str) -> tuple[int, int]:
    conn = await asyncpg.connect(admin_url)
    try:
        return (await conn.fetchval("SELECT count(*) FROM llm.usage_records WHERE user_id = $1", user),
                await conn.fetchval("SELECT count(*) FROM llm.budgets WHERE user_id = $1", user))
    finally:
        await conn.close()


def record(user: str, when: datetime) -> UsageRecord:
    return UsageRecord(id=str(uuid.uuid4()), user_id=user, create_time=when, kind="chat", requested_model="local/echo",
                       model="local/echo", provider="local", status="ok", input_tokens=3, output_tokens=2)


@pytest.fixture(scope="module")
async def deleting_llm(admin_url, identity_public_key):
    """An llm service of its own (the test reaches into its ledger), usage deleted with users.
    Its ledger flushes only when the test says so: a background flush could otherwise write
    the "late" record before the deletion it is meant to arrive after."""
    app, running = await start_llm(llm_settings(admin_url, usage_flush_seconds=3600), identity_public_key)
    channel = channel_to(running)
    yield app, llm_service_pb2_grpc.LLMServiceStub(channel), channel
    await channel.close()
    await running.stop(0.5)


@pytest.fixture(scope="module")
async def billing_llm(admin_url, identity_public_key):
    """An llm service that keeps usage records for billing when a user's data is deleted."""
    app, running = await start_llm(llm_settings(admin_url, keep_usage_for_billing=True, usage_flush_seconds=3600),
                                   identity_public_key)
    yield app, running
    await running.stop(0.5)


async def populate(app, stub, as_user, user: str) -> None:
    await stub.Generate(prompt(), metadata=as_user(user))
    await stub.SetBudget(api.SetBudgetRequest(limits=[llm_pb2.BudgetLimit(period=llm_pb2.BUDGET_PERIOD_DAY,
                                                                          limit_usd=1.0)]), metadata=as_user(user))
    await app.ledger.flush()


async def test_usage_and_budget_go_and_a_late_record_does_not_bring_them_back(deleting_llm, admin_url, as_user):
    app, stub, channel = deleting_llm
    user, other = f"llm-gone-{uuid.uuid4().hex[:8]}", f"llm-stays-{uuid.uuid4().hex[:8]}"
    for who in (user, other):
        await populate(app, stub, as_user, who)
    # A call made before the deletion whose record is still buffered when it happens.
    late = record(user, datetime.now(timezone.utc) - timedelta(seconds=1))
    app.ledger.record(late)
    assert await counts(admin_url, user) == (1, 1)
    reply = await ugrpc.UserDataServiceStub(channel).DeleteUserData(
        audit_pb2.DeleteUserDataRequest(user_id=user), metadata=as_user("llm-admin", ADMIN))
    assert [(d.service, dict(d.removed), list(d.kept)) for d in reply.deletions] == [
        ("llm", {"usage_records": 1, "budgets": 1}, [])]
    await app.ledger.flush()  # the buffered record is written now: dropped, as the user is gone
    assert await counts(admin_url, user) == (0, 0)
    assert await counts(admin_url, other) == (1, 1)
    # What the user does after the deletion (if they still can) is theirs again.
    await stub.Generate(prompt(), metadata=as_user(user))
    await app.ledger.flush()
    assert (await counts(admin_url, user))[0] == 1


async def test_a_deployment_that_bills_keeps_usage_records(billing_llm, admin_url, as_user):
    app, running = billing_llm
    user = f"llm-billed-{uuid.uuid4().hex[:8]}"
    async with channel_to(running) as channel:
        stub = llm_service_pb2_grpc.LLMServiceStub(channel)
        await populate(app, stub, as_user, user)
        app.ledger.record(record(user, datetime.now(timezone.utc) - timedelta(seconds=1)))
        reply = await ugrpc.UserDataServiceStub(channel).DeleteUserData(
            audit_pb2.DeleteUserDataRequest(user_id=user), metadata=as_user("llm-admin", ADMIN))
    assert [(d.service, dict(d.removed), list(d.kept)) for d in reply.deletions] == [
        ("llm", {"budgets": 1}, ["usage_records"])]
    await app.ledger.flush()
    assert await counts(admin_url, user) == (2, 0)  # both records kept, the late one too


async def test_only_administrators_may_delete_and_bad_ids_are_refused(deleting_llm, as_user):
    stub = ugrpc.UserDataServiceStub(deleting_llm[2])
    await expect_error(stub.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id="someone"),
                                           metadata=as_user("plain-user")), grpc.StatusCode.PERMISSION_DENIED)
    for bad in ("", "no such user!", "y" * 129):
        _, fields = await expect_error(stub.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=bad),
                                                           metadata=as_user("llm-admin", ADMIN)),
                                       grpc.StatusCode.INVALID_ARGUMENT)
        assert fields == ["user_id"]
    reason, _ = await expect_error(stub.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id="llm-admin"),
                                                       metadata=as_user("llm-admin", ADMIN)),
                                   grpc.StatusCode.FAILED_PRECONDITION)
    assert reason == "CANNOT_DELETE_SELF"
    await expect_error(stub.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id="someone")),
                       grpc.StatusCode.UNAUTHENTICATED)


async def test_two_ledger_flushes_at_once_write_each_record_once(deleting_llm, admin_url):
    app = deleting_llm[0]
    user = f"llm-flush-{uuid.uuid4().hex[:8]}"
    for _ in range(7):
        app.ledger.record(record(user, datetime.now(timezone.utc)))
    assert sum(await asyncio.gather(app.ledger.flush(), app.ledger.flush(), app.ledger.flush())) == 7
    assert (await counts(admin_url, user))[0] == 7
