"""AdminService.DeleteUserData with every service: the real gateway in front of the engine
(a real `python -m services.assistants` process with its sandbox service), sessions, files
and llm. A run of the user still streaming from its model stops (the vendor sees the hang-up),
the user's sandboxes go with their files, the run store's rows and the rest go service by
service, and the engine's and the sandbox's parts are audited as log lines while the
gateway records the whole. Deleting an assistant through the gateway is audited by the run
store that holds it."""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc

from parley.admin.v1 import admin_service_pb2 as aapi
from parley.admin.v1 import admin_service_pb2_grpc as adgrpc
from parley.admin.v1 import audit_pb2
from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as api
from parley.assistants.v1 import assistants_service_pb2_grpc as agrpc
from parley.sandbox.v1 import sandbox_service_pb2 as sbapi
from parley.sandbox.v1 import sandbox_service_pb2_grpc as sbgrpc
from tests.assistants.helpers import user_message, wait_for_status
from tests.conftest import channel_to, expect_error, user_rows


async def run_rows(sessions_url: str, user: str) -> dict[str, int]:
    return await user_rows(sessions_url, "sessions", ("sessions", "messages", "assistants", "runs", "run_events"), user)


async def test_a_running_run_stops_sandboxes_go_and_every_service_deletes(stack, code_interpreter_stack, minter):
    ci = code_interpreter_stack
    user, admin_user = f"asst-gone-{uuid.uuid4().hex[:8]}", f"asst-admin-{uuid.uuid4().hex[:8]}"
    key, admin = await stack.api_key(user), await stack.api_key(admin_user, scopes=("admin",))
    md, admin_md = (("authorization", f"Bearer {key}"),), (("authorization", f"Bearer {admin}"),)
    model = stack.model("openai")
    fake = stack.fakes["openai"]
    fake.script(model.split("/", 1)[1], {"hang": True})  # the model never answers: the run stays in progress
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ci.gateway.port}") as channel, channel_to(ci.sandbox) as sbc:
        assistants = agrpc.AssistantServiceStub(channel)
        assistant = await assistants.CreateAssistant(api.CreateAssistantRequest(model=model, name="doomed"),
                                                     metadata=md)
        run = await assistants.CreateRun(api.CreateRunRequest(
            assistant_id=assistant.id, additional_messages=[user_message("Tell me everything")]), metadata=md)
        await wait_for_status(assistants, md, run.id, apb.RUN_STATUS_IN_PROGRESS)
        for _ in range(300):  # the engine's call has reached the vendor: a bounded wait
            if fake.requests_for(model.split("/", 1)[1]):
                break
            await asyncio.sleep(0.1)
        # A sandbox of the user's session, as the engine makes them for the code interpreter.
        sandboxes = sbgrpc.SandboxServiceStub(sbc)
        who = minter.metadata(user, ("sandbox",))
        sandbox = await sandboxes.CreateSandbox(sbapi.CreateSandboxRequest(session_id=run.session_id), metadata=who)
        assert (await run_rows(ci.sessions_url, user))["runs"] == 1

        reply = await adgrpc.AdminServiceStub(channel).DeleteUserData(
            audit_pb2.DeleteUserDataRequest(user_id=user), metadata=admin_md, timeout=120)
        removed = {d.service: dict(d.removed) for d in reply.deletions}
        assert [d.service for d in reply.deletions] == ["assistants", "sandbox", "sessions", "files", "llm",
                                                        "gateway"]
        assert removed["assistants"] == {"runs_stopped": 1}
        assert removed["sandbox"]["sandboxes"] in (0, 1)  # the session's deletion may have got there first
        assert removed["sessions"]["runs"] == 1 and removed["sessions"]["assistants"] == 1
        assert removed["gateway"]["api_keys"] == 1

        for _ in range(300):  # the engine's model call is cancelled: the vendor sees its client leave
            if model.split("/", 1)[1] in fake.disconnects:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the deleted user's run kept its model call open")
        await expect_error(sandboxes.GetSandbox(sbapi.GetSandboxRequest(sandbox_id=sandbox.id), metadata=who),
                           grpc.StatusCode.NOT_FOUND)
        assert not (ci.sandbox.app.sandboxes.settings.root_dir / sandbox.id).exists()
        await asyncio.sleep(1.0)  # the abandoned run writes nothing more (its lease and log are gone)
        assert await run_rows(ci.sessions_url, user) == dict.fromkeys(
            ("sessions", "messages", "assistants", "runs", "run_events"), 0)
        await expect_error(assistants.GetRun(api.GetRunRequest(run_id=run.id), metadata=admin_md),
                           grpc.StatusCode.NOT_FOUND)

        again = await adgrpc.AdminServiceStub(channel).DeleteUserData(
            audit_pb2.DeleteUserDataRequest(user_id=user), metadata=admin_md, timeout=120)
        assert all(v == 0 for d in again.deletions for v in d.removed.values())

    # The engine's part is a log line of its own; the gateway's event holds the whole.
    engine_log = ci.engine.log_path.read_text()
    lines = [json.loads(line)["audit"] for line in engine_log.splitlines()
             if '"audit"' in line and user in line]
    assert lines and lines[0]["kind"] == "user_data.deleted" and lines[0]["actor_user_id"] == admin_user
    assert lines[0]["details"]["assistants.runs_stopped"] == 1
    await ci.gateway.app.audit_log.flush()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ci.gateway.port}") as channel:
        page = await adgrpc.AdminServiceStub(channel).ListAuditEvents(aapi.ListAuditEventsRequest(
            filter=audit_pb2.AuditEventFilter(subject_user_id=user, kinds=["user_data.deleted"]),
            services=["gateway", "sessions"]), metadata=admin_md)
    services = sorted(e.service for e in page.audit_events)
    assert services == ["gateway", "gateway", "sessions", "sessions"]  # twice: the repeat is audited too


async def test_deleting_an_assistant_through_the_gateway_is_audited_by_the_run_store(stack, code_interpreter_stack):
    ci = code_interpreter_stack
    user = f"asst-del-{uuid.uuid4().hex[:8]}"
    md = (("authorization", f"Bearer {await stack.api_key(user)}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ci.gateway.port}") as channel:
        stub = agrpc.AssistantServiceStub(channel)
        assistant = await stub.CreateAssistant(api.CreateAssistantRequest(model=stack.model("openai")), metadata=md)
        await stub.DeleteAssistant(api.DeleteAssistantRequest(assistant_id=assistant.id), metadata=md)
    from services.runtime.audit import AuditFilter

    events, _ = await ci.sessions.app.audit_log.list("auditor", AuditFilter(subject_user_id=user), after=None,
                                                     limit=10)
    assert [(e.kind, e.actor_user_id, e.resource_id) for e in events] == [("assistant.deleted", user, assistant.id)]
    assert len(events[0].trace_id) == 32  # the call's trace, carried from the gateway through the engine
