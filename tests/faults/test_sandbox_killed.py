"""The sandbox service killed (SIGKILL) in the middle of a code-interpreter execution, under
the real run engine and the real bubblewrap sandbox.

The engine's design: a tool that fails tells the model, it does not end the run. So the
tool call's output says the code interpreter could not run the code (the model reads it in
its next call), the run goes on and completes with the model's answer, and once the
sandbox service is started again (its kernels died with it: bubblewrap's
--die-with-parent) the next execution in the same conversation works, in a new kernel.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as api
from parley.assistants.v1 import assistants_service_pb2_grpc as agrpc
from tests.assistants.helpers import collect, text_of, user_message

RUN_ENDS_WITHIN = 60.0


def _code(call_id: str, code: str) -> tuple[str, str, str]:
    return call_id, "code_interpreter", json.dumps({"code": code})


def _tool_output(request: dict, call_id: str) -> str:
    for message in request["messages"]:
        if message["role"] == "tool" and message["tool_call_id"] == call_id:
            content = message["content"]
            return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
    raise AssertionError(f"no output for {call_id} in the model's request")


async def test_a_sandbox_killed_mid_execution_is_reported_to_the_model_and_the_next_execution_works(fault_stack):
    sandbox = fault_stack.suite["sandbox"]
    fake = fault_stack.fakes["openai"]
    model = fault_stack.model("openai")
    name = model.split("/", 1)[1]
    fake.script(name,
                {"tool_calls": [_code("call_long", "import time\nprint('started', flush=True)\ntime.sleep(120)")]},
                {"text": "The sandbox died; I will try again later."},
                {"tool_calls": [_code("call_again", "print(6 * 7)")]},
                {"text": "It is 42."})
    async with fault_stack.channel() as channel:
        stub = agrpc.AssistantServiceStub(channel)
        assistant = await stub.CreateAssistant(api.CreateAssistantRequest(
            model=model, tools=[apb.Tool(code_interpreter=apb.CodeInterpreterTool())]), metadata=fault_stack.auth)
        stream = stub.StreamRun(api.StreamRunRequest(run=api.CreateRunRequest(
            assistant_id=assistant.id, session=api.NewSession(messages=[user_message("Run the long job")]))), metadata=fault_stack.auth,
            timeout=RUN_ENDS_WITHIN + 120)
        events = []
        async for response in stream:  # until the code is running in the kernel
            events.append(response.event)
            if response.event.HasField("tool_call_delta") and "started" in response.event.tool_call_delta.code_logs:
                break
        killed_at = time.monotonic()
        await asyncio.to_thread(sandbox.kill)
        try:
            events += await collect(stream, timeout=RUN_ENDS_WITHIN)
        finally:
            ended_after = time.monotonic() - killed_at
            await asyncio.to_thread(sandbox.start().wait_serving)
        done = events[-1]
        assert done.HasField("done") and done.done.status == apb.RUN_STATUS_COMPLETED, done
        assert text_of(events) == "The sandbox died; I will try again later."
        reported = _tool_output(fake.requests_for(name)[-1], "call_long")
        assert "could not run the code (unavailable)" in reported, reported

        # The same conversation, after the restart: a new kernel runs the next code.
        session_id = next(e.run_status_changed.session_id for e in events if e.HasField("run_status_changed"))
        again = await collect(stub.StreamRun(api.StreamRunRequest(run=api.CreateRunRequest(
            assistant_id=assistant.id, session_id=session_id,
            additional_messages=[user_message("Try a small one")])), metadata=fault_stack.auth, timeout=120), timeout=120)
        assert again[-1].done.status == apb.RUN_STATUS_COMPLETED, again[-1]
        assert _tool_output(fake.requests_for(name)[-1], "call_again").startswith("42")
    print(f"\n[fault] sandbox SIGKILLed mid-execution: the run completed {ended_after:.2f} s after the kill; the model "
          f"was told {reported[:120]!r}; after the restart the next execution in the session printed 42")


async def test_calls_to_a_dead_sandbox_answer_unavailable_to_the_engine_not_internal(fault_stack):
    """The engine reaches the sandbox by its own channel: while the sandbox is down a run's
    code call is reported to the model too (the first test covers a kill mid-call)."""
    sandbox = fault_stack.suite["sandbox"]
    fake = fault_stack.fakes["openai"]
    model = fault_stack.model("openai")
    name = model.split("/", 1)[1]
    fake.script(name, {"tool_calls": [_code("call_down", "print(1)")]}, {"text": "No sandbox."})
    await asyncio.to_thread(sandbox.kill)
    try:
        async with fault_stack.channel() as channel:
            stub = agrpc.AssistantServiceStub(channel)
            assistant = await stub.CreateAssistant(api.CreateAssistantRequest(
                model=model, tools=[apb.Tool(code_interpreter=apb.CodeInterpreterTool())]), metadata=fault_stack.auth)
            events = await collect(stub.StreamRun(api.StreamRunRequest(run=api.CreateRunRequest(
                assistant_id=assistant.id, session=api.NewSession(messages=[user_message("Run it")]))), metadata=fault_stack.auth,
                timeout=120), timeout=120)
    except grpc.aio.AioRpcError as error:
        raise AssertionError(f"the run's stream failed: {error.code().name}: {error.details()}") from None
    finally:
        await asyncio.to_thread(sandbox.start().wait_serving)
    assert events[-1].done.status == apb.RUN_STATUS_COMPLETED, events[-1]
    reported = _tool_output(fake.requests_for(name)[-1], "call_down")
    assert "could not run the code (unavailable)" in reported, reported
