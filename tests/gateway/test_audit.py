"""The audit log end to end: the real gateway in front of the real llm, sessions and files
services, each writing its own append-only log, read back merged through AdminService with an
admin key. Each kind of event names the right actor and subject and never a secret; denials
are recorded once, where they happen; listings page across services and filter; the export
is JSON lines; only admin keys may read (and reading is audited too)."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from datetime import datetime, timezone

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from parley.admin.v1 import admin_service_pb2 as aapi
from parley.admin.v1 import admin_service_pb2_grpc as agrpc
from parley.admin.v1 import audit_pb2
from parley.files.v1 import files_pb2
from parley.files.v1 import files_service_pb2 as fapi
from parley.files.v1 import files_service_pb2_grpc as fgrpc
from parley.gateway.v1 import gateway_pb2
from parley.gateway.v1 import gateway_service_pb2 as kapi
from parley.gateway.v1 import gateway_service_pb2_grpc as kgrpc
from parley.llm.v1 import llm_pb2
from parley.llm.v1 import llm_service_pb2 as lapi
from parley.llm.v1 import llm_service_pb2_grpc as lgrpc
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from tests.conftest import expect_error
from tests.gateway.audit_helpers import as_json, audit_events, details, flush
from tests.gateway.conftest import bearer, gateway_settings, sensitive, start_gateway

ALL_SCOPES = ("llm", "sessions", "files", "assistants")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def admin_key(make_key):
    return await make_key(unique("auditor"), ["admin"])


@pytest.fixture
async def servers(gateway, sessions_backend, llm_backend, files_backend):
    return gateway, sessions_backend, llm_backend, files_backend


async def test_api_key_events_name_the_key_and_its_owner_and_never_its_secret(gw_channel, jwks, admin_key, servers):
    user = unique("user_keys")
    keys = kgrpc.ApiKeyServiceStub(gw_channel)
    jwt = bearer(jwks.token("k1", user=user))
    created = await keys.CreateApiKey(kapi.CreateApiKeyRequest(name="ci", scopes=[gateway_pb2.SCOPE_LLM]),
                                      metadata=jwt)
    sensitive(created.secret)
    rotated = await keys.RotateApiKey(kapi.RotateApiKeyRequest(api_key_id=created.api_key.id,
                                                               grace_period=Duration(seconds=60)), metadata=jwt)
    sensitive(rotated.secret)
    await keys.RevokeApiKey(kapi.RevokeApiKeyRequest(api_key_id=created.api_key.id), metadata=jwt)
    await flush(*servers)
    events = await audit_events(gw_channel, admin_key, subject_user_id=user)
    assert [e.kind for e in events] == ["api_key.revoked", "api_key.rotated", "api_key.created"]
    for event in events:
        assert (event.service, event.actor_user_id, event.subject_user_id) == ("gateway", user, user)
        assert event.resource_id == created.api_key.id
        assert event.outcome == audit_pb2.AUDIT_OUTCOME_SUCCESS and event.request_id and event.id
        text = as_json(event)
        for secret in (created.secret, rotated.secret):
            assert secret[8:20] not in text and created.api_key.prefix not in text
    assert details(events[2]) == {"scopes": "llm", "caller": "jwt"}
    assert details(events[1])["grace_seconds"] == 60


async def test_authentication_failures_are_rate_limited_per_source_and_hold_no_credential(
        admin_url, identity_private_key, make_key, keys, admin_key, servers):
    gateway = await start_gateway(gateway_settings(admin_url, identity_private_key, targets={
        "llm": None, "sessions": f"127.0.0.1:{servers[1].port}", "files": None, "assistants": None},
        auth_failure_events_per_minute=3))
    started = datetime.now(timezone.utc)
    unknown = sensitive("pk_live_" + secrets.token_urlsafe(32))
    garbage = sensitive("not-a-credential-" + secrets.token_hex(8))
    revoked_owner = unique("user_revoked")
    revoked = await make_key(revoked_owner, ["sessions"])
    from services.gateway.models import Principal

    key_id = (await keys.authenticate(revoked)).key_id
    await keys.revoke(Principal(revoked_owner, frozenset({"admin"}), "cli"), key_id)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = sgrpc.SessionServiceStub(channel)
            attempts = [bearer(revoked)] + [bearer(unknown)] * 5 + [(("authorization", f"Bearer {garbage}"),)] * 2 + [()]
            for metadata in attempts:
                await expect_error(stub.ListSessions(sapi.ListSessionsRequest(), metadata=metadata),
                                   grpc.StatusCode.UNAUTHENTICATED)
        gateway.app.gate.auth_failures.sweep(force=True)  # the minute is over: the summary
        await gateway.app.audit_log.flush()
    finally:
        await gateway.stop(0.5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers[0].port}") as channel:
        events = await audit_events(channel, admin_key, services=["gateway"], kinds=["auth.failed"],
                                    start_time=_stamp(started))
    one_by_one = [e for e in events if not details(e).get("summary")]
    summaries = [e for e in events if details(e).get("summary")]
    assert len(one_by_one) == 3 and len(summaries) == 1  # 3 per source and minute, then a count
    assert {e.source for e in events} == {"127.0.0.1"}
    assert details(summaries[0])["suppressed"] == len(attempts) - 3
    assert set(details(summaries[0])["reasons"].split(",")) <= {"API_KEY_UNKNOWN", "CREDENTIALS_MALFORMED",
                                                                "CREDENTIALS_MISSING"}
    first = one_by_one[-1]  # oldest: the revoked key, whose id and owner are known
    assert details(first) == {"reason": "API_KEY_REVOKED", "credential": "api_key", "api_key_id": key_id}
    assert first.subject_user_id == revoked_owner and first.actor_user_id == ""
    assert first.resource_id == "/parley.sessions.v1.SessionService/ListSessions"
    assert [details(e)["credential"] for e in reversed(one_by_one)] == ["api_key", "api_key", "api_key"]
    text = "".join(as_json(e) for e in events)
    for credential in (unknown, garbage, revoked):
        assert credential not in text and credential[8:24] not in text and credential[:12] not in text


def _stamp(moment: datetime):
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def test_permission_denials_are_recorded_once_where_they_happen(gw_channel, make_key, jwks, admin_key, servers):
    user = unique("user_denied")
    sessions_only = await make_key(user, ["sessions"])
    llm_only = await make_key(user, ["llm"])
    # The gateway's own scope check (a forwarded method).
    await expect_error(lgrpc.LLMServiceStub(gw_channel).ListModels(lapi.ListModelsRequest(),
                                                                   metadata=bearer(sessions_only)),
                       grpc.StatusCode.PERMISSION_DENIED)
    # A backend's (llm: another user's usage needs the admin scope).
    await expect_error(lgrpc.LLMServiceStub(gw_channel).GetUsage(lapi.GetUsageRequest(target_user_id="someone-else"),
                                                                 metadata=bearer(llm_only)),
                       grpc.StatusCode.PERMISSION_DENIED)
    # The gateway's own services: key management with a plain key, administration without admin.
    await expect_error(kgrpc.ApiKeyServiceStub(gw_channel).ListApiKeys(kapi.ListApiKeysRequest(),
                                                                        metadata=bearer(llm_only)),
                       grpc.StatusCode.PERMISSION_DENIED)
    admin_stub = agrpc.AdminServiceStub(gw_channel)
    await expect_error(admin_stub.ListAuditEvents(aapi.ListAuditEventsRequest(), metadata=bearer(llm_only)),
                       grpc.StatusCode.PERMISSION_DENIED)
    await expect_error(admin_stub.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id="x"),
                                                 metadata=bearer(jwks.token("k1", user=user))),
                       grpc.StatusCode.PERMISSION_DENIED)
    export = admin_stub.ExportAuditEvents(aapi.ExportAuditEventsRequest(), metadata=bearer(sessions_only))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in export:
            pass
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await flush(*servers)
    events = await audit_events(gw_channel, admin_key, actor_user_id=user, kinds=["permission.denied"])
    seen = sorted((e.service, e.resource_id, details(e)["reason"]) for e in events)
    assert seen == sorted([
        ("gateway", "/parley.llm.v1.LLMService/ListModels", "SCOPE_MISSING"),
        ("llm", "/parley.llm.v1.LLMService/GetUsage", "ADMIN_REQUIRED"),
        ("gateway", "/parley.gateway.v1.ApiKeyService/ListApiKeys", "SCOPE_MISSING"),
        ("gateway", "/parley.admin.v1.AdminService/ListAuditEvents", "ADMIN_REQUIRED"),
        ("gateway", "/parley.admin.v1.AdminService/DeleteUserData", "ADMIN_REQUIRED"),
        ("gateway", "/parley.admin.v1.AdminService/ExportAuditEvents", "ADMIN_REQUIRED"),
    ])
    assert all(e.outcome == audit_pb2.AUDIT_OUTCOME_DENIED and e.source == "127.0.0.1" for e in events)
    assert details(next(e for e in events if e.service == "llm"))  # the backend knew who and what, too
    assert all(e.request_id for e in events)


async def test_admin_reads_of_other_users_and_budget_changes_are_recorded(gw_channel, make_key, admin_key, servers):
    target = unique("user_budget")
    own = await make_key(target, ["llm"])
    llm = lgrpc.LLMServiceStub(gw_channel)
    await llm.GetUsage(lapi.GetUsageRequest(), metadata=bearer(own))  # one's own: not audited
    await llm.GetBudget(lapi.GetBudgetRequest(), metadata=bearer(own))
    await llm.GetUsage(lapi.GetUsageRequest(target_user_id=target), metadata=bearer(admin_key))
    await llm.GetBudget(lapi.GetBudgetRequest(target_user_id=target), metadata=bearer(admin_key))
    await llm.SetBudget(lapi.SetBudgetRequest(target_user_id=target, limits=[
        llm_pb2.BudgetLimit(period=llm_pb2.BUDGET_PERIOD_DAY, limit_usd=5.0)]), metadata=bearer(admin_key))
    await llm.SetBudget(lapi.SetBudgetRequest(limits=[
        llm_pb2.BudgetLimit(period=llm_pb2.BUDGET_PERIOD_DAY, limit_usd=2.5)]), metadata=bearer(own))
    await flush(*servers)
    events = await audit_events(gw_channel, admin_key, subject_user_id=target, services=["llm"])
    kinds = [(e.kind, e.actor_user_id == target) for e in reversed(events)]
    assert kinds == [("usage.read_other_user", False), ("budget.read_other_user", False),
                     ("budget.changed", False), ("budget.changed", True)]
    assert details(events[1]) == {"limits": "day:usd=5"} and details(events[0]) == {"limits": "day:usd=2.5"}
    everyone = await llm.GetUsage(lapi.GetUsageRequest(all_users=True), metadata=bearer(admin_key))
    assert everyone is not None
    await flush(*servers)
    admin_user = (await servers[0].app.gate.keys.authenticate(admin_key)).user_id
    reads = await audit_events(gw_channel, admin_key, actor_user_id=admin_user, kinds=["usage.read_other_user"])
    assert details(reads[0]) == {"all_users": True} and reads[0].subject_user_id == ""


async def test_deletions_of_sessions_files_and_vector_stores_are_recorded(gw_channel, make_key, admin_key, servers):
    user = unique("user_deletes")
    key = await make_key(user, ALL_SCOPES)
    session = await sgrpc.SessionServiceStub(gw_channel).CreateSession(sapi.CreateSessionRequest(title="t"),
                                                                       metadata=bearer(key))
    await sgrpc.SessionServiceStub(gw_channel).DeleteSession(sapi.DeleteSessionRequest(session_id=session.id),
                                                             metadata=bearer(key))
    files = fgrpc.FileServiceStub(gw_channel)

    async def upload():
        yield fapi.UploadFileRequest(metadata=fapi.UploadFileMetadata(filename="a.txt",
                                                                       purpose=files_pb2.FILE_PURPOSE_ASSISTANTS))
        yield fapi.UploadFileRequest(chunk=b"hello audit\n")

    file = await files.UploadFile(upload(), metadata=bearer(key))
    await files.DeleteFile(fapi.DeleteFileRequest(file_id=file.id), metadata=bearer(key))
    store = await files.CreateVectorStore(fapi.CreateVectorStoreRequest(name="s"), metadata=bearer(key))
    await files.DeleteVectorStore(fapi.DeleteVectorStoreRequest(vector_store_id=store.id), metadata=bearer(key))
    # A refused delete (nothing there) records nothing.
    await expect_error(files.DeleteFile(fapi.DeleteFileRequest(file_id=file.id), metadata=bearer(key)),
                       grpc.StatusCode.NOT_FOUND)
    await flush(*servers)
    events = await audit_events(gw_channel, admin_key, actor_user_id=user,
                                kinds=["session.deleted", "file.deleted", "vector_store.deleted"])
    assert sorted((e.service, e.kind, e.resource_id) for e in events) == sorted([
        ("sessions", "session.deleted", session.id), ("files", "file.deleted", file.id),
        ("files", "vector_store.deleted", store.id)])
    assert all(e.subject_user_id == user for e in events)


async def test_the_listing_merges_every_service_page_by_page_and_filters(gw_channel, make_key, admin_key, servers):
    user = unique("user_merge")
    key = await make_key(user, ALL_SCOPES)  # gateway: api_key.created
    stub = sgrpc.SessionServiceStub(gw_channel)
    for _ in range(3):  # sessions: session.deleted ×3
        session = await stub.CreateSession(sapi.CreateSessionRequest(), metadata=bearer(key))
        await stub.DeleteSession(sapi.DeleteSessionRequest(session_id=session.id), metadata=bearer(key))
        await asyncio.sleep(0.01)
    await lgrpc.LLMServiceStub(gw_channel).SetBudget(lapi.SetBudgetRequest(target_user_id=user, limits=[
        llm_pb2.BudgetLimit(period=llm_pb2.BUDGET_PERIOD_MONTH, limit_tokens=1000)]), metadata=bearer(admin_key))
    store = await fgrpc.FileServiceStub(gw_channel).CreateVectorStore(fapi.CreateVectorStoreRequest(),
                                                                     metadata=bearer(key))
    await fgrpc.FileServiceStub(gw_channel).DeleteVectorStore(
        fapi.DeleteVectorStoreRequest(vector_store_id=store.id), metadata=bearer(key))
    await flush(*servers)
    whole = await audit_events(gw_channel, admin_key, subject_user_id=user)
    assert {e.service for e in whole} == {"gateway", "sessions", "llm", "files"}
    assert len(whole) == 6
    moments = [(e.event_time.ToDatetime(), e.id) for e in whole]
    assert moments == sorted(moments, reverse=True)  # newest first across services
    paged = await audit_events(gw_channel, admin_key, subject_user_id=user, page_size=1)
    assert [e.id for e in paged] == [e.id for e in whole]
    two = await audit_events(gw_channel, admin_key, subject_user_id=user, page_size=4)
    assert [e.id for e in two] == [e.id for e in whole]
    only = await audit_events(gw_channel, admin_key, subject_user_id=user, services=["sessions", "files"])
    assert [e.id for e in only] == [e.id for e in whole if e.service in ("sessions", "files")]
    kinds = await audit_events(gw_channel, admin_key, subject_user_id=user, kinds=["budget.changed",
                                                                                    "api_key.created"])
    assert sorted(e.kind for e in kinds) == ["api_key.created", "budget.changed"]
    window = await audit_events(gw_channel, admin_key, subject_user_id=user, start_time=whole[4].event_time,
                                end_time=whole[1].event_time)
    assert [e.id for e in window] == [e.id for e in whole[2:5]]
    # A page token belongs to its listing; wrong filters and services are the caller's mistakes.
    admin = agrpc.AdminServiceStub(gw_channel)
    first = await admin.ListAuditEvents(aapi.ListAuditEventsRequest(
        filter=audit_pb2.AuditEventFilter(subject_user_id=user), page_size=2), metadata=bearer(admin_key))
    reason, _ = await expect_error(admin.ListAuditEvents(aapi.ListAuditEventsRequest(
        filter=audit_pb2.AuditEventFilter(subject_user_id="someone-else"), page_size=2,
        page_token=first.next_page_token), metadata=bearer(admin_key)), grpc.StatusCode.INVALID_ARGUMENT)
    assert reason == "PAGE_TOKEN_MISMATCH"
    for request, field in [
        (aapi.ListAuditEventsRequest(filter=audit_pb2.AuditEventFilter(kinds=["no.such.kind"])), "filter.kinds[0]"),
        (aapi.ListAuditEventsRequest(filter=audit_pb2.AuditEventFilter(subject_user_id="not a user")),
         "filter.subject_user_id"),
        (aapi.ListAuditEventsRequest(services=["sandbox"]), "services[0]"),
        (aapi.ListAuditEventsRequest(page_size=5000), "page_size"),
        (aapi.ListAuditEventsRequest(page_token="forged"), "page_token"),
    ]:
        _, fields = await expect_error(admin.ListAuditEvents(request, metadata=bearer(admin_key)),
                                       grpc.StatusCode.INVALID_ARGUMENT)
        assert fields == [field]


async def test_the_export_is_json_lines_of_the_same_events(gw_channel, make_key, admin_key, servers):
    user = unique("user_export")
    key = await make_key(user, ALL_SCOPES)
    stub = sgrpc.SessionServiceStub(gw_channel)
    for _ in range(2):
        session = await stub.CreateSession(sapi.CreateSessionRequest(), metadata=bearer(key))
        await stub.DeleteSession(sapi.DeleteSessionRequest(session_id=session.id), metadata=bearer(key))
    await flush(*servers)
    listed = await audit_events(gw_channel, admin_key, subject_user_id=user)
    chunks = [c.data async for c in agrpc.AdminServiceStub(gw_channel).ExportAuditEvents(
        aapi.ExportAuditEventsRequest(filter=audit_pb2.AuditEventFilter(subject_user_id=user)),
        metadata=bearer(admin_key))]
    lines = b"".join(chunks).decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [e.id for e in listed]
    first = json.loads(lines[-1])
    assert first["kind"] == "api_key.created" and first["service"] == "gateway" and first["subject_user_id"] == user
    assert first["outcome"] == "AUDIT_OUTCOME_SUCCESS"


async def test_reading_and_exporting_the_log_is_itself_recorded(gw_channel, make_key, servers):
    auditor = unique("auditor_read")
    secret = await make_key(auditor, ["admin"])
    await audit_events(gw_channel, secret, subject_user_id="whoever", kinds=["auth.failed"])
    async for _ in agrpc.AdminServiceStub(gw_channel).ExportAuditEvents(
            aapi.ExportAuditEventsRequest(services=["gateway"], filter=audit_pb2.AuditEventFilter(
                kinds=["api_key.created"], actor_user_id=auditor)), metadata=bearer(secret)):
        pass
    await flush(*servers)
    events = await audit_events(gw_channel, secret, actor_user_id=auditor,
                                kinds=["audit_log.read", "audit_log.exported"])
    assert [e.kind for e in events] == ["audit_log.exported", "audit_log.read"]
    assert details(events[1])["kinds"] == "auth.failed" and details(events[1])["subject_user_id"] == "whoever"
    assert events[1].subject_user_id == ""  # looking at a user's trail is not an event of that user's
    assert details(events[0])["services"] == "gateway"


async def test_the_backends_internal_admin_services_are_not_served_by_the_gateway(gw_channel, admin_key):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from parley.admin.v1 import audit_log_service_pb2 as lapi
    from parley.admin.v1 import audit_log_service_pb2_grpc as lgrpc
    from parley.admin.v1 import user_data_service_pb2_grpc as ugrpc

    await expect_error(ugrpc.UserDataServiceStub(gw_channel).DeleteUserData(
        audit_pb2.DeleteUserDataRequest(user_id="someone"), metadata=bearer(admin_key)), grpc.StatusCode.UNIMPLEMENTED)
    await expect_error(lgrpc.AuditLogServiceStub(gw_channel).ListServiceAuditEvents(
        lapi.ListServiceAuditEventsRequest(), metadata=bearer(admin_key)), grpc.StatusCode.UNIMPLEMENTED)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for response in reflection_pb2_grpc.ServerReflectionStub(gw_channel).ServerReflectionInfo(requests()):
        names |= {s.name for s in response.list_services_response.service}
    assert "parley.admin.v1.AdminService" in names
    assert not names & {"parley.admin.v1.UserDataService", "parley.admin.v1.AuditLogService"}


@pytest.mark.parametrize("service", ["gateway", "llm", "sessions", "files"])
async def test_every_services_role_may_only_append_to_and_read_its_log(service, admin_url, files_admin_url, servers):
    """The runtime test covers the mechanism; here each real service's role, on its real schema."""
    import asyncpg

    from services.runtime.db import with_credentials

    url = with_credentials(files_admin_url if service == "files" else admin_url, f"parley_{service}", None)
    conn = await asyncpg.connect(url, server_settings={"search_path": service})
    try:
        event_id = uuid.uuid4()
        async with conn.transaction():
            await conn.execute("INSERT INTO audit_events (id, event_time, service, kind, outcome) "
                               "VALUES ($1, now(), $2, 'auth.failed', 'denied')", event_id, service)
            await conn.execute("SELECT set_config('app.audit_reader', 'on', true)")
            assert await conn.fetchval("SELECT count(*) FROM audit_events WHERE id = $1", event_id) == 1
        for statement in ("UPDATE audit_events SET kind = 'x'", "DELETE FROM audit_events", "TRUNCATE audit_events"):
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.execute(statement)
        privileges = await conn.fetchval(
            "SELECT array_agg(privilege_type ORDER BY privilege_type) FROM information_schema.role_table_grants "
            "WHERE grantee = current_user AND table_schema = $1 AND table_name = 'audit_events'", service)
        assert privileges == ["INSERT", "SELECT"]
    finally:
        await conn.close()
