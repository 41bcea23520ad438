"""The engine behind the real gateway: an API key's user creates an assistant, streams a run,
answers its function call and watches it, with the gateway's identity reaching the engine and
the engine acting as that user downstream."""

from __future__ import annotations

import grpc

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as api
from parley.assistants.v1 import assistants_service_pb2_grpc as agrpc
from tests.assistants.helpers import collect, function_tool, statuses, text_of, user_message
from tests.conftest import expect_error


async def test_a_run_through_the_gateway(stack, user):
    me = user()
    secret = await stack.api_key(me)
    md = (("authorization", f"Bearer {secret}"),)
    model = stack.model("openai")
    stack.fakes["openai"].script(model.split("/")[1], {"tool_calls": [("g1", "lookup", '{"city": "Lima"}')]},
                                 {"text": "Lima is mild."})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
        stub = agrpc.AssistantServiceStub(channel)
        assistant = await stub.CreateAssistant(api.CreateAssistantRequest(model=model, tools=[function_tool("lookup")]),
                                               metadata=md)
        assert assistant.user_id == me
        first = await collect(stub.StreamRun(api.StreamRunRequest(run=api.CreateRunRequest(
            assistant_id=assistant.id, session=api.NewSession(messages=[user_message("Lima?")]))), metadata=md))
        assert statuses(first)[-1] == apb.RUN_STATUS_REQUIRES_ACTION
        run_id = first[-1].run_id
        rest = await collect(stub.SubmitToolOutputs(api.SubmitToolOutputsRequest(
            run_id=run_id, tool_outputs=[api.ToolOutput(tool_call_id="g1", output="18C")]), metadata=md))
        assert text_of(rest) == "Lima is mild." and rest[-1].done.status == apb.RUN_STATUS_COMPLETED
        replay = await collect(stub.WatchRun(api.WatchRunRequest(run_id=run_id), metadata=md))
        assert replay == first + rest
        await expect_error(stub.GetRun(api.GetRunRequest(run_id=run_id)), grpc.StatusCode.UNAUTHENTICATED)
