"""AdminService.DeleteUserData through the real gateway, with the real sessions, files and llm
services (no engine here: tests/assistants/test_user_data_deletion.py has the engine and the
sandbox). Each backend's rows of the user are counted in its own database before and after,
the stored bytes looked for on disk, the user's keys tried; another user's data must not
move; a second call reports zeros; bad input is the caller's mistake."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest

from parley.admin.v1 import admin_service_pb2 as aapi
from parley.admin.v1 import admin_service_pb2_grpc as agrpc
from parley.admin.v1 import audit_pb2
from parley.files.v1 import files_pb2
from parley.files.v1 import files_service_pb2 as fapi
from parley.files.v1 import files_service_pb2_grpc as fgrpc
from parley.llm.v1 import llm_pb2
from parley.llm.v1 import llm_service_pb2 as lapi
from parley.llm.v1 import llm_service_pb2_grpc as lgrpc
from parley.sessions.v1 import sessions_pb2 as spb
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from services.files.user_data import USER_TABLES as FILES_TABLES
from services.sessions.user_data import USER_TABLES as SESSIONS_TABLES
from tests.conftest import expect_error, user_rows
from tests.gateway.audit_helpers import audit_events, details, flush
from tests.gateway.conftest import bearer

SCOPES = ("llm", "sessions", "files", "assistants")
LLM_TABLES = ("usage_records", "budgets")


async def everything(admin_url: str, files_url: str, user: str) -> dict[str, dict[str, int]]:
    return {
        "sessions": await user_rows(admin_url, "sessions", ("message_feedback", "messages", "sessions"), user),
        "files": await user_rows(files_url, "files", FILES_TABLES, user),
        "llm": await user_rows(admin_url, "llm", LLM_TABLES, user),
        "gateway": await user_rows(admin_url, "gateway", ("api_keys",), user),
    }


async def storage_keys(files_url: str, user: str) -> list[str]:
    conn = await asyncpg.connect(files_url)
    try:
        return [r[0] for r in await conn.fetch("SELECT storage_key FROM files.files WHERE user_id = $1", user)]
    finally:
        await conn.close()


async def populate(channel, secret: str, admin_secret: str, user: str) -> None:
    """Sessions with messages and feedback, files (one in a vector store, indexed), usage and
    a budget: something in every table a user can fill through the gateway."""
    md = bearer(secret)
    sessions = sgrpc.SessionServiceStub(channel)
    for title in ("one", "two"):
        session = await sessions.CreateSession(sapi.CreateSessionRequest(title=title), metadata=md)
        for text in ("hello", "again"):
            message = await sessions.CreateMessage(sapi.CreateMessageRequest(
                session_id=session.id, role=spb.ROLE_USER, content=[spb.ContentPart(text=text)]), metadata=md)
        await sessions.SubmitFeedback(sapi.SubmitFeedbackRequest(session_id=session.id, message_id=message.id,
                                                                 rating=spb.RATING_THUMBS_UP), metadata=md)
    files = fgrpc.FileServiceStub(channel)
    ids = []
    for name in ("a.txt", "b.md"):
        async def upload(name=name):
            yield fapi.UploadFileRequest(metadata=fapi.UploadFileMetadata(
                filename=name, purpose=files_pb2.FILE_PURPOSE_ASSISTANTS))
            yield fapi.UploadFileRequest(chunk=f"Parley keeps {name} of {user} for the deletion test.\n".encode())

        ids.append((await files.UploadFile(upload(), metadata=md)).id)
    store = await files.CreateVectorStore(fapi.CreateVectorStoreRequest(name="s"), metadata=md)
    await files.AddVectorStoreFile(fapi.AddVectorStoreFileRequest(vector_store_id=store.id, file_id=ids[0]),
                                   metadata=md)
    for _ in range(1800):  # indexing (the local embedding model may still be loading): a bounded wait
        entry = await files.GetVectorStoreFile(fapi.GetVectorStoreFileRequest(vector_store_id=store.id,
                                                                              file_id=ids[0]), metadata=md)
        if entry.status != files_pb2.VECTOR_STORE_FILE_STATUS_IN_PROGRESS:
            break
        await asyncio.sleep(0.1)
    assert entry.status == files_pb2.VECTOR_STORE_FILE_STATUS_COMPLETED, entry.last_error.message
    llm = lgrpc.LLMServiceStub(channel)
    await llm.Generate(lapi.GenerateRequest(model="local/echo", messages=[llm_pb2.ChatMessage(
        role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text="hi")])]), metadata=md)
    await llm.SetBudget(lapi.SetBudgetRequest(target_user_id=user, limits=[
        llm_pb2.BudgetLimit(period=llm_pb2.BUDGET_PERIOD_DAY, limit_usd=3.0)]), metadata=bearer(admin_secret))


@pytest.fixture
async def people(gw_channel, make_key, llm_backend):
    admin_user = f"deleter-{uuid.uuid4().hex[:8]}"
    admin = await make_key(admin_user, ["admin"])
    gone, stays = f"gone-{uuid.uuid4().hex[:8]}", f"stays-{uuid.uuid4().hex[:8]}"
    keys = {user: await make_key(user, SCOPES) for user in (gone, stays)}
    for user in (gone, stays):
        await populate(gw_channel, keys[user], admin, user)
    await llm_backend.app.ledger.flush()  # usage records are written in batches
    return admin_user, admin, gone, stays, keys


async def test_every_service_removes_the_users_rows_and_files_and_nobody_elses(
        gw_channel, people, admin_url, files_admin_url, files_backend, gateway, sessions_backend, llm_backend):
    admin_user, admin, gone, stays, keys = people
    before = await everything(admin_url, files_admin_url, gone)
    assert all(n > 0 for service in before.values() for n in service.values()), before
    others = await everything(admin_url, files_admin_url, stays)
    blobs = [files_backend.app.storage.path_of(k) for k in await storage_keys(files_admin_url, gone)]
    assert len(blobs) == 2 and all(p.exists() for p in blobs)

    reply = await agrpc.AdminServiceStub(gw_channel).DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=gone),
                                                                    metadata=bearer(admin), timeout=120)
    by_service = {d.service: d for d in reply.deletions}
    assert [d.service for d in reply.deletions] == ["assistants", "sessions", "files", "llm", "gateway"]
    assert by_service["assistants"].not_configured  # this gateway has no engine
    for table, count in before["sessions"].items():
        assert by_service["sessions"].removed[table] == count
    assert {t: by_service["files"].removed[t] for t in FILES_TABLES} == before["files"]
    assert by_service["files"].removed["stored_files"] == 2
    assert {t: by_service["llm"].removed[t] for t in LLM_TABLES} == before["llm"]
    assert by_service["gateway"].removed["api_keys"] == before["gateway"]["api_keys"]

    after = await everything(admin_url, files_admin_url, gone)
    assert all(n == 0 for service in after.values() for n in service.values()), after
    assert not any(p.exists() for p in blobs)
    assert await everything(admin_url, files_admin_url, stays) == others
    await expect_error(sgrpc.SessionServiceStub(gw_channel).ListSessions(sapi.ListSessionsRequest(),
                                                                          metadata=bearer(keys[gone])),
                       grpc.StatusCode.UNAUTHENTICATED)
    assert (await sgrpc.SessionServiceStub(gw_channel).ListSessions(sapi.ListSessionsRequest(),
                                                                    metadata=bearer(keys[stays]))).sessions

    # Audited: one event per service and the gateway's overall one, the admin acting on the
    # user; and the trail about the user survives the deletion.
    await flush(gateway, sessions_backend, llm_backend, files_backend)
    events = await audit_events(gw_channel, admin, subject_user_id=gone)
    deleted = {e.service: e for e in events if e.kind == "user_data.deleted"}
    assert set(deleted) == {"gateway", "sessions", "files", "llm"}
    assert all(e.actor_user_id == admin_user for e in deleted.values())
    overall = details(deleted["gateway"])
    assert overall["gateway.api_keys"] == before["gateway"]["api_keys"] and overall["assistants.not_configured"]
    assert overall["sessions"] == sum(by_service["sessions"].removed.values())
    assert details(deleted["llm"])["usage_kept_for_billing"] is False
    assert any(e.kind == "api_key.created" for e in events) and any(e.kind == "budget.changed" for e in events)

    # Idempotent: again, and everything reports zero.
    again = await agrpc.AdminServiceStub(gw_channel).DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=gone),
                                                                    metadata=bearer(admin), timeout=120)
    assert [d.service for d in again.deletions] == ["assistants", "sessions", "files", "llm", "gateway"]
    assert all(v == 0 for d in again.deletions for v in d.removed.values())


async def test_bad_requests_are_the_callers_mistake_and_delete_nothing(gw_channel, make_key, jwks):
    admin_user = f"deleter-{uuid.uuid4().hex[:8]}"
    admin = await make_key(admin_user, ["admin"])
    stub = agrpc.AdminServiceStub(gw_channel)
    for user_id, reason in [("", "FIELD_REQUIRED"), ("not a user", "INVALID_USER_ID"), ("x" * 300, "INVALID_USER_ID"),
                            ("../etc", "INVALID_USER_ID"), ("a\x00b", "INVALID_USER_ID")]:
        got, fields = await expect_error(stub.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=user_id),
                                                             metadata=bearer(admin)), grpc.StatusCode.INVALID_ARGUMENT)
        assert (got, fields) == (reason, ["user_id"])
    got, _ = await expect_error(stub.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=admin_user),
                                                    metadata=bearer(admin)), grpc.StatusCode.FAILED_PRECONDITION)
    assert got == "CANNOT_DELETE_SELF"
    plain = await make_key(admin_user + "-plain", SCOPES)
    for metadata in (bearer(plain), bearer(jwks.token("k1", user="user_jwt_admin_wannabe"))):
        await expect_error(stub.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id="someone"), metadata=metadata),
                           grpc.StatusCode.PERMISSION_DENIED)
    # The admin's own key still works: nothing was revoked along the way.
    await stub.ListAuditEvents(aapi.ListAuditEventsRequest(page_size=1), metadata=bearer(admin))


@pytest.mark.parametrize("table_schema", ["sessions", "files", "llm", "gateway"])
async def test_every_table_with_user_rows_is_in_a_deletion(table_schema, admin_url, files_admin_url, gateway):
    """A table added later with a user_id column must join its service's deletion."""
    url = files_admin_url if table_schema == "files" else admin_url
    conn = await asyncpg.connect(url)
    try:
        tables = {r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = $1 AND column_name = 'user_id'",
            table_schema)}
    finally:
        await conn.close()
    deleted = {"sessions": set(SESSIONS_TABLES), "files": set(FILES_TABLES), "llm": set(LLM_TABLES),
               "gateway": {"api_keys"}}[table_schema]
    # The deletion marks themselves stay (a user id and a time; the audit log says as much).
    assert tables - {"user_deletions"} == deleted
