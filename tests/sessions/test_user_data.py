"""The sessions service's part of a user's data deletion, through its internal
UserDataService with an administrator's gateway identity: sessions, messages, feedback and
the run store's assistants, runs, steps, events and cached function results of the user go,
counted table by table, in one transaction with its audit event; another user's stay. And
the deletions users make themselves (DeleteSession, the engine's DeleteAssistant) are
audited with the change."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from parley.admin.v1 import audit_pb2
from parley.admin.v1 import user_data_service_pb2_grpc as ugrpc
from parley.assistants.v1 import assistants_pb2 as apb
from parley.runstore.v1 import runstore_service_pb2 as rs
from parley.sessions.v1 import sessions_pb2 as spb
from parley.sessions.v1 import sessions_service_pb2 as sapi
from services.runtime.audit import AuditFilter
from services.sessions.user_data import USER_TABLES
from tests.conftest import channel_to, expect_error, user_rows

ADMIN = ("admin",)


@pytest.fixture(scope="module")
async def user_data(sessions_server):
    channel = channel_to(sessions_server)
    yield ugrpc.UserDataServiceStub(channel)
    await channel.close()


async def rows(admin_url: str, user: str) -> dict[str, int]:
    return await user_rows(admin_url, "sessions", USER_TABLES, user)


async def populate(sessions, store, md) -> None:
    """A row in every table of the service."""
    session = await sessions.CreateSession(sapi.CreateSessionRequest(title="t"), metadata=md)
    for text in ("one", "two"):
        message = await sessions.CreateMessage(sapi.CreateMessageRequest(
            session_id=session.id, role=spb.ROLE_USER, content=[spb.ContentPart(text=text)]), metadata=md)
    await sessions.SubmitFeedback(sapi.SubmitFeedbackRequest(session_id=session.id, message_id=message.id,
                                                             rating=spb.RATING_THUMBS_DOWN), metadata=md)
    assistant = await store.CreateAssistant(rs.CreateAssistantRequest(assistant=apb.Assistant(
        name="a", model="local/echo")), metadata=md)
    run = await store.CreateRun(rs.CreateRunRequest(run=apb.Run(
        session_id=session.id, assistant_id=assistant.id, model="local/echo")), metadata=md)
    await store.CreateRunStep(rs.CreateRunStepRequest(run_step=apb.RunStep(
        run_id=run.id, type=apb.RUN_STEP_TYPE_MESSAGE_CREATION, message_creation=apb.MessageCreationDetails())),
        metadata=md)
    await store.AppendRunEvents(rs.AppendRunEventsRequest(run_id=run.id, events=[
        apb.RunEvent(sequence=i, message_delta=apb.MessageDelta(step_id="s", index=0, text="x")) for i in (1, 2)]),
        metadata=md)
    later = Timestamp()
    later.FromDatetime(datetime.now(timezone.utc) + timedelta(minutes=5))
    await store.StoreFunctionResults(rs.StoreFunctionResultsRequest(results=[
        rs.FunctionResult(name="f", arguments="{}", output="1", expire_time=later)]), metadata=md)


async def test_every_table_of_the_user_is_emptied_and_nobody_elses(sessions_stub, run_store_stub, user_data, as_user,
                                                                  admin_url, sessions_server):
    user, other = f"ses-gone-{uuid.uuid4().hex[:8]}", f"ses-stays-{uuid.uuid4().hex[:8]}"
    for who in (user, other):
        await populate(sessions_stub, run_store_stub, as_user(who))
    before, others = await rows(admin_url, user), await rows(admin_url, other)
    assert all(n > 0 for n in before.values()), before
    reply = await user_data.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=user),
                                           metadata=as_user("ses-admin", ADMIN))
    assert [(d.service, dict(d.removed)) for d in reply.deletions] == [("sessions", before)]
    assert await rows(admin_url, user) == dict.fromkeys(USER_TABLES, 0)
    assert await rows(admin_url, other) == others
    events, _ = await sessions_server.app.audit_log.list("auditor", AuditFilter(subject_user_id=user), after=None,
                                                         limit=10)
    assert [(e.kind, e.actor_user_id, e.details["sessions"]) for e in events] == [
        ("user_data.deleted", "ses-admin", before["sessions"])]
    again = await user_data.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=user),
                                           metadata=as_user("ses-admin", ADMIN))
    assert dict(again.deletions[0].removed) == dict.fromkeys(USER_TABLES, 0)
    await expect_error(user_data.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=other),
                                                metadata=as_user("ses-not-admin")), grpc.StatusCode.PERMISSION_DENIED)


async def test_a_users_own_deletions_are_audited_with_the_change(sessions_stub, run_store_stub, as_user,
                                                                sessions_server):
    user = f"ses-own-{uuid.uuid4().hex[:8]}"
    md = as_user(user)
    session = await sessions_stub.CreateSession(sapi.CreateSessionRequest(title="t"), metadata=md)
    await sessions_stub.DeleteSession(sapi.DeleteSessionRequest(session_id=session.id), metadata=md)
    assistant = await run_store_stub.CreateAssistant(rs.CreateAssistantRequest(assistant=apb.Assistant(
        name="a", model="local/echo")), metadata=md)
    await run_store_stub.DeleteAssistant(rs.DeleteAssistantRequest(assistant_id=assistant.id), metadata=md)
    await expect_error(run_store_stub.DeleteAssistant(rs.DeleteAssistantRequest(assistant_id=assistant.id),
                                                      metadata=md), grpc.StatusCode.NOT_FOUND)
    events, _ = await sessions_server.app.audit_log.list("auditor", AuditFilter(actor_user_id=user), after=None,
                                                         limit=10)
    assert [(e.kind, e.resource_id, e.subject_user_id) for e in events] == [
        ("assistant.deleted", assistant.id, user), ("session.deleted", session.id, user)]
