"""Function calling: parallel calls stop the run in REQUIRES_ACTION, SubmitToolOutputs
answers them all at once (every bad submission refused with nothing changed), the run
resumes with the outputs in the prompt; cached functions are answered without stopping; an
unanswered action expires."""

from __future__ import annotations

import asyncio
import json

import grpc

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as api
from tests.assistants.helpers import (
    assert_numbered,
    collect,
    function_tool,
    kinds,
    new_assistant,
    statuses,
    stream_run,
    text_of,
    user_message,
    wait_for_status,
)
from tests.conftest import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def _submit(stub, md, run_id, outputs):
    return await collect(stub.SubmitToolOutputs(api.SubmitToolOutputsRequest(
        run_id=run_id, tool_outputs=[api.ToolOutput(tool_call_id=i, output=o) for i, o in outputs]), metadata=md))


async def test_two_parallel_calls_round_trip(stack, engine_channel, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    model = stack.model("openai")
    name = model.split("/")[1]
    stack.fakes["openai"].script(
        name,
        {"tool_calls": [("call_a", "get_weather", '{"city": "Paris"}'), ("call_b", "get_weather", '{"city": "Oslo"}')],
         "usage": (30, 12, 0)},
        {"text": "Paris is sunny, Oslo is snowy.", "usage": (60, 8, 0)},
    )
    assistant = await new_assistant(stub, md, model, tools=[function_tool("get_weather")])
    first = await stream_run(stub, md, assistant_id=assistant.id,
                             session=api.NewSession(messages=[user_message("Weather in Paris and Oslo?")]))
    assert_numbered(first)
    assert statuses(first) == [apb.RUN_STATUS_QUEUED, apb.RUN_STATUS_IN_PROGRESS, apb.RUN_STATUS_REQUIRES_ACTION]
    waiting = first[-1].run_status_changed
    calls = waiting.required_action.submit_tool_outputs.tool_calls
    assert [(c.id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("call_a", "get_weather", {"city": "Paris"}), ("call_b", "get_weather", {"city": "Oslo"})]
    deltas = [e.tool_call_delta for e in first if e.HasField("tool_call_delta")]
    assert {d.index for d in deltas} == {0, 1} and kinds(first).index("step_created") < kinds(first).index(
        "tool_call_delta")
    assert "".join(d.arguments for d in deltas if d.index == 1) == '{"city": "Oslo"}'
    stored = await stub.GetRun(api.GetRunRequest(run_id=waiting.id), metadata=md)
    assert stored.status == apb.RUN_STATUS_REQUIRES_ACTION and stored.HasField("expire_time")

    rest = await _submit(stub, md, waiting.id, [("call_b", "snow, -5C"), ("call_a", "sun, 21C")])
    assert_numbered(rest, first[-1].sequence + 1)
    assert statuses(rest) == [apb.RUN_STATUS_IN_PROGRESS, apb.RUN_STATUS_COMPLETED]
    assert text_of(rest) == "Paris is sunny, Oslo is snowy."
    done = rest[-2].run_status_changed
    assert done.usage.prompt_tokens == 90 and done.usage.completion_tokens == 20

    # The second model call saw both calls and both outputs, each answering its own id.
    sent = stack.fakes["openai"].requests_for(name)[-1]["messages"]
    assistant_turn = next(m for m in sent if m["role"] == "assistant" and m.get("tool_calls"))
    assert [c["id"] for c in assistant_turn["tool_calls"]] == ["call_a", "call_b"]
    outputs = {m["tool_call_id"]: m["content"] for m in sent if m["role"] == "tool"}
    assert outputs == {"call_a": "sun, 21C", "call_b": "snow, -5C"}

    steps = (await stub.ListRunSteps(api.ListRunStepsRequest(run_id=waiting.id), metadata=md)).run_steps
    assert [s.type for s in steps] == [apb.RUN_STEP_TYPE_TOOL_CALLS, apb.RUN_STEP_TYPE_MESSAGE_CREATION]
    assert [(c.id, c.function.output) for c in steps[0].tool_calls.tool_calls] == [
        ("call_a", "sun, 21C"), ("call_b", "snow, -5C")]
    assert steps[0].usage.total_tokens == 42 and steps[1].usage.total_tokens == 68
    # Once answered, the run takes no second submission.
    reason, _ = await expect_error(_submit(stub, md, waiting.id, [("call_a", "x"), ("call_b", "y")]), PRECONDITION)
    assert reason == "RUN_NOT_REQUIRES_ACTION"


async def test_bad_submissions_are_refused_and_change_nothing(stack, engine_channel, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    model = stack.model("openai")
    stack.fakes["openai"].script(model.split("/")[1], {"tool_calls": [
        ("c1", "lookup", '{"city": "A"}'), ("c2", "lookup", '{"city": "B"}')]}, {"text": "ok"})
    assistant = await new_assistant(stub, md, model, tools=[function_tool("lookup")])
    events = await stream_run(stub, md, assistant_id=assistant.id, session=api.NewSession(messages=[user_message("go")]))
    run_id = events[-1].run_status_changed.id
    before = await stub.GetRun(api.GetRunRequest(run_id=run_id), metadata=md)
    cases = [
        ([("c1", "x")], ["tool_outputs"]),                                     # c2 missing
        ([("c1", "x"), ("c2", "y"), ("c3", "z")], ["tool_outputs[2].tool_call_id"]),  # unknown id
        ([("c1", "x"), ("c1", "y"), ("c2", "z")], ["tool_outputs[1].tool_call_id"]),  # duplicate
        ([("c1", "x" * (512 * 1024 + 1)), ("c2", "y")], ["tool_outputs[0].output"]),   # oversize
    ]
    for outputs, fields in cases:
        _, got = await expect_error(_submit(stub, md, run_id, outputs), INVALID)
        assert got == fields, outputs
    after = await stub.GetRun(api.GetRunRequest(run_id=run_id), metadata=md)
    assert after == before
    done = await _submit(stub, md, run_id, [("c1", "x"), ("c2", "y")])
    assert done[-1].done.status == apb.RUN_STATUS_COMPLETED


async def test_a_cached_function_is_answered_without_stopping(stack, engine_channel, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    model = stack.model("openai")
    name = model.split("/")[1]
    call = ("k1", "rates", '{"city": "EUR"}')
    stack.fakes["openai"].script(name, {"tool_calls": [call]}, {"text": "first"},
                                 {"tool_calls": [("k2", "rates", call[2])]}, {"text": "second"})
    assistant = await new_assistant(stub, md, model, tools=[function_tool("rates", cache_seconds=600)])
    first = await stream_run(stub, md, assistant_id=assistant.id, session=api.NewSession(messages=[user_message("?")]))
    run_id = first[-1].run_status_changed.id
    await _submit(stub, md, run_id, [("k1", "1.08")])
    second = await stream_run(stub, md, assistant_id=assistant.id,
                              session=api.NewSession(messages=[user_message("again?")]))
    assert statuses(second)[-1] == apb.RUN_STATUS_COMPLETED  # never stopped
    assert apb.RUN_STATUS_REQUIRES_ACTION not in statuses(second)
    run = second[-2].run_status_changed
    steps = (await stub.ListRunSteps(api.ListRunStepsRequest(run_id=run.id), metadata=md)).run_steps
    cached = steps[0].tool_calls.tool_calls[0].function
    assert cached.cached and cached.output == "1.08"
    sent = stack.fakes["openai"].requests_for(name)[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "tool"] == ["1.08"]
    # Another user with the same call is not answered from this user's cache.
    other = stack.direct(user())
    stack.fakes["openai"].script(name, {"tool_calls": [("k3", "rates", call[2])]})
    theirs = await new_assistant(stub, other, model, tools=[function_tool("rates", cache_seconds=600)])
    events = await stream_run(stub, other, assistant_id=theirs.id, session=api.NewSession(messages=[user_message("?")]))
    assert statuses(events)[-1] == apb.RUN_STATUS_REQUIRES_ACTION


async def test_an_unanswered_action_expires(stack, start_engine, user):
    engine = await start_engine("expiry", PARLEY_ASSISTANTS_ACTION_TIMEOUT_SECONDS=1)
    md = stack.direct(user())
    async with grpc.aio.insecure_channel(engine.target) as channel:
        stub = engine.stub(channel)
        model = stack.model("openai")
        stack.fakes["openai"].script(model.split("/")[1], {"tool_calls": [("e1", "slow", '{"city": "X"}')]})
        assistant = await new_assistant(stub, md, model, tools=[function_tool("slow")])
        events = await stream_run(stub, md, assistant_id=assistant.id,
                                  session=api.NewSession(messages=[user_message("?")]))
        run_id = events[-1].run_status_changed.id
        watch = asyncio.ensure_future(collect(stub.WatchRun(api.WatchRunRequest(
            run_id=run_id, after_sequence=events[-1].sequence), metadata=md)))
        run = await wait_for_status(stub, md, run_id, apb.RUN_STATUS_EXPIRED, timeout=30)
        assert not run.HasField("required_action")
        tail = await watch
        assert statuses(tail) == [apb.RUN_STATUS_EXPIRED] and tail[-1].done.status == apb.RUN_STATUS_EXPIRED
        steps = (await stub.ListRunSteps(api.ListRunStepsRequest(run_id=run_id), metadata=md)).run_steps
        assert steps[0].status == apb.RUN_STEP_STATUS_EXPIRED
        reason, _ = await expect_error(_submit(stub, md, run_id, [("e1", "late")]), PRECONDITION)
        assert reason == "RUN_NOT_REQUIRES_ACTION"
