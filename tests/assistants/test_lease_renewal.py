"""Lease renewal racing with a run that moves on: a renewal asked while a run executed here
may be answered after the run went to wait for tool outputs and SubmitToolOutputs started it
again on this replica. The answer ("not leased here any more") is about the execution that
was asked for, never about the new one, which goes on to the run's end.

The engine runs in this process so the test can hold the run store's answer to the renewal
(the real RenewRunLeases of the real run store) until the run has moved on: the soak hit this
window by chance under load."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as api
from parley.assistants.v1 import assistants_service_pb2_grpc as agrpc
from services.assistants.app import AssistantsSettings, build_app
from tests.assistants.helpers import collect, function_tool, new_assistant, statuses, text_of, user_message
from tests.conftest import channel_to, serve_app


def _settings(stack) -> AssistantsSettings:
    env = stack.engine_env
    return AssistantsSettings(
        sessions_target=env["PARLEY_SESSIONS_TARGET"], llm_target=env["PARLEY_LLM_TARGET"],
        files_target=env["PARLEY_FILES_TARGET"], sandbox_target=env["PARLEY_SANDBOX_TARGET"],
        identity_private_key=Path(env["PARLEY_IDENTITY_PRIVATE_KEY_FILE"]).read_bytes(), identity_ttl_seconds=60.0,
        replica_id=f"lease-race-{uuid.uuid4().hex[:8]}",
        # Long: the only renewal in this test is the one it drives.
        lease_seconds=300.0, claim_interval_seconds=0.3, action_timeout_seconds=600.0, event_flush_seconds=0.05,
        max_concurrent_runs=8, file_search_token_budget=4000)


async def test_a_renewal_answered_after_the_run_moved_on_leaves_its_next_execution_running(
        stack, user, identity_public_key):
    engine = await serve_app(await build_app(_settings(stack)), "assistants", identity_public_key)
    app = engine.app
    asked, answered = asyncio.Event(), asyncio.Event()
    send, deliver = asyncio.Event(), asyncio.Event()
    real_renew = app.store.renew

    async def renew_held(request):
        """The real renewal, sent only on `send` and answered only on `deliver`."""
        asked.set()
        await send.wait()
        reply = await real_renew(request)
        answered.set()
        await deliver.wait()
        return reply

    app.store.renew = renew_held
    try:
        async with channel_to(engine) as channel:
            stub, md = agrpc.AssistantServiceStub(channel), stack.direct(user())
            model = stack.model("openai")
            stack.fakes["openai"].script(
                model.split("/")[1],
                {"text": " ".join(f"looking{i}" for i in range(20)), "pace": 0.05,
                 "tool_calls": [("call_1", "lookup", '{"city": "Oslo"}')], "usage": (20, 25, 0)},
                {"text": " ".join(f"answer{i}" for i in range(40)), "pace": 0.05, "usage": (40, 40, 0)})
            assistant = await new_assistant(stub, md, model, tools=[function_tool("lookup")])

            first: list[apb.RunEvent] = []
            renewal = None
            async for response in stub.StreamRun(api.StreamRunRequest(run=api.CreateRunRequest(
                    assistant_id=assistant.id, session=api.NewSession(messages=[user_message("Oslo?")]))),
                    metadata=md, timeout=60):
                first.append(response.event)
                if renewal is None and response.event.HasField("message_delta"):
                    # The run executes here, holding its lease: a renewal takes it on its list.
                    assert app.runs.executions[response.event.run_id].holds_lease
                    renewal = asyncio.create_task(app.runs.renew_leases())
                    await asyncio.wait_for(asked.wait(), 10)
            assert renewal is not None and statuses(first)[-1] == apb.RUN_STATUS_REQUIRES_ACTION
            run_id = first[-1].run_id

            # The store answers while the run waits for its outputs: not leased here any more.
            send.set()
            await asyncio.wait_for(answered.wait(), 10)
            submit = stub.SubmitToolOutputs(api.SubmitToolOutputsRequest(run_id=run_id, tool_outputs=[
                api.ToolOutput(tool_call_id="call_1", output="sunny")]), metadata=md, timeout=60)
            resumed = [(await anext(aiter(submit))).event]  # a new execution of the run, here
            assert app.runs.executions[run_id].holds_lease
            deliver.set()
            await asyncio.wait_for(renewal, 10)

            resumed += await collect(submit, timeout=30)
            assert resumed[-1].HasField("done") and resumed[-1].done.status == apb.RUN_STATUS_COMPLETED, statuses(
                resumed)
            assert text_of(resumed) == " ".join(f"answer{i}" for i in range(40))
    finally:
        send.set()
        deliver.set()
        await engine.stop(0.5)
