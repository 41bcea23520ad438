"""Busy sessions (reject, queue, cancel the active run), token limits ending INCOMPLETE,
truncation (LAST_MESSAGES and AUTO against the model's window), and the same function-call
run on the three vendor wire formats."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as api
from tests.assistants.helpers import (
    collect,
    function_tool,
    new_assistant,
    statuses,
    stream_run,
    text_of,
    user_message,
    wait_for_status,
)
from tests.conftest import expect_error


async def _busy_session(stack, stub, md):
    """A session whose run is streaming forever, and its assistant."""
    model = stack.model("openai")
    stack.fakes["openai"].script(model.split("/")[1], {"endless": True}, {"text": "second"}, {"text": "third"})
    assistant = await new_assistant(stub, md, model)
    first = await stub.CreateRun(api.CreateRunRequest(
        assistant_id=assistant.id, session=api.NewSession(messages=[user_message("go")])), metadata=md)
    await wait_for_status(stub, md, first.id, apb.RUN_STATUS_IN_PROGRESS)
    return assistant, first


async def test_reject_answers_session_busy_and_stores_nothing(stack, engine_channel, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    assistant, first = await _busy_session(stack, stub, md)
    reason, _ = await expect_error(stub.CreateRun(api.CreateRunRequest(
        assistant_id=assistant.id, session_id=first.session_id, additional_messages=[user_message("more")],
        busy_session_strategy=apb.BUSY_SESSION_STRATEGY_REJECT), metadata=md), grpc.StatusCode.FAILED_PRECONDITION)
    assert reason == "SESSION_BUSY"
    runs = await stub.ListRuns(api.ListRunsRequest(session_id=first.session_id), metadata=md)
    assert [r.id for r in runs.runs] == [first.id]
    await stub.CancelRun(api.CancelRunRequest(run_id=first.id), metadata=md)
    await wait_for_status(stub, md, first.id, apb.RUN_STATUS_CANCELLED)


async def test_queue_waits_behind_the_active_run_in_order(stack, engine_channel, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    assistant, first = await _busy_session(stack, stub, md)
    second = await stub.CreateRun(api.CreateRunRequest(assistant_id=assistant.id, session_id=first.session_id),
                                  metadata=md)  # unspecified: queue
    third = await stub.CreateRun(api.CreateRunRequest(
        assistant_id=assistant.id, session_id=first.session_id,
        busy_session_strategy=apb.BUSY_SESSION_STRATEGY_QUEUE), metadata=md)
    assert second.busy_session_strategy == apb.BUSY_SESSION_STRATEGY_QUEUE
    await asyncio.sleep(0.5)
    for run_id in (second.id, third.id):
        assert (await stub.GetRun(api.GetRunRequest(run_id=run_id), metadata=md)).status == apb.RUN_STATUS_QUEUED
    await stub.CancelRun(api.CancelRunRequest(run_id=first.id), metadata=md)
    done_second = await wait_for_status(stub, md, second.id, apb.RUN_STATUS_COMPLETED)
    done_third = await wait_for_status(stub, md, third.id, apb.RUN_STATUS_COMPLETED)
    assert done_second.start_time.ToNanoseconds() <= done_third.start_time.ToNanoseconds()
    assert done_second.complete_time.ToNanoseconds() <= done_third.start_time.ToNanoseconds()
    assert text_of(await collect(stub.WatchRun(api.WatchRunRequest(run_id=third.id), metadata=md))) == "third"


async def test_cancel_active_interrupts_then_starts(stack, engine_channel, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    assistant, first = await _busy_session(stack, stub, md)
    events = await stream_run(stub, md, assistant_id=assistant.id, session_id=first.session_id,
                              busy_session_strategy=apb.BUSY_SESSION_STRATEGY_CANCEL_ACTIVE)
    assert statuses(events)[-1] == apb.RUN_STATUS_COMPLETED and text_of(events) == "second"
    assert (await stub.GetRun(api.GetRunRequest(run_id=first.id), metadata=md)).status == apb.RUN_STATUS_CANCELLED


async def test_max_completion_tokens_ends_incomplete(stack, engine_channel, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    model = stack.model("openai")
    name = model.split("/")[1]
    stack.fakes["openai"].script(name, {"text": "a long answer cut short", "finish": "length", "usage": (20, 16, 0)})
    assistant = await new_assistant(stub, md, model)
    events = await stream_run(stub, md, assistant_id=assistant.id, max_completion_tokens=16,
                              session=api.NewSession(messages=[user_message("write a lot")]))
    run = events[-2].run_status_changed
    assert run.status == apb.RUN_STATUS_INCOMPLETE
    assert run.incomplete_details.reason == apb.INCOMPLETE_REASON_MAX_COMPLETION_TOKENS
    sent = stack.fakes["openai"].requests_for(name)[-1]
    assert 16 in (sent.get("max_tokens"), sent.get("max_completion_tokens"))
    message = next(e.message_created for e in events if e.HasField("message_created"))
    assert message.metadata["status"] == "incomplete"


async def test_max_prompt_tokens_counts_across_model_calls(stack, engine_channel, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    model = stack.model("openai")
    name = model.split("/")[1]
    stack.fakes["openai"].script(name, {"tool_calls": [("p1", "lookup", '{"city": "Rome"}')], "usage": (250, 5, 0)},
                                 {"text": "never asked"})
    assistant = await new_assistant(stub, md, model, tools=[function_tool("lookup")])
    first = await stream_run(stub, md, assistant_id=assistant.id, max_prompt_tokens=256,
                             session=api.NewSession(messages=[user_message("look it up")]))
    run_id = first[-1].run_id
    rest = await collect(stub.SubmitToolOutputs(api.SubmitToolOutputsRequest(
        run_id=run_id, tool_outputs=[api.ToolOutput(tool_call_id="p1", output="a long output " * 20)]), metadata=md))
    run = rest[-2].run_status_changed
    assert run.status == apb.RUN_STATUS_INCOMPLETE
    assert run.incomplete_details.reason == apb.INCOMPLETE_REASON_MAX_PROMPT_TOKENS
    assert len(stack.fakes["openai"].requests_for(name)) == 1  # no second model call past the limit


async def test_truncation_last_messages_and_auto(stack, engine_channel, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    history = [user_message(f"message number {i}: " + "lorem ipsum dolor sit amet " * 12) for i in range(12)]
    model = stack.model("openai")
    name = model.split("/")[1]
    assistant = await new_assistant(stub, md, model)
    await stream_run(stub, md, assistant_id=assistant.id, session=api.NewSession(messages=history),
                     truncation_strategy=apb.TruncationStrategy(type=apb.TRUNCATION_TYPE_LAST_MESSAGES,
                                                                last_messages=2))
    sent = stack.fakes["openai"].requests_for(name)[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "user"] and "number 11" in str(sent[-1])

    small = await new_assistant(stub, md, "openai/small")
    events = await stream_run(stub, md, assistant_id=small.id, session=api.NewSession(messages=history))
    assert statuses(events)[-1] == apb.RUN_STATUS_COMPLETED
    sent = stack.fakes["openai"].requests_for("small")[-1]["messages"]
    assert 1 <= len(sent) < len(history) and "number 11" in str(sent[-1])  # the oldest went first


@pytest.mark.parametrize("vendor", ["openai", "anthropic", "mistral"])
async def test_the_same_function_run_on_every_vendor_format(stack, engine_channel, user, vendor):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    model = stack.model(vendor)
    name = model.split("/")[1]
    stack.fakes[vendor].script(name, {"tool_calls": [("v1", "get_weather", '{"city": "Paris"}'),
                                                     ("v2", "get_weather", '{"city": "Rome"}')]},
                               {"text": "Sunny in both."})
    assistant = await new_assistant(stub, md, model, tools=[function_tool("get_weather")], instructions="Be brief.")
    first = await stream_run(stub, md, assistant_id=assistant.id,
                             session=api.NewSession(messages=[user_message("Paris and Rome?")]))
    calls = first[-1].run_status_changed.required_action.submit_tool_outputs.tool_calls
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Paris"}'),
                                                      ("get_weather", '{"city": "Rome"}')]
    rest = await collect(stub.SubmitToolOutputs(api.SubmitToolOutputsRequest(run_id=first[-1].run_id, tool_outputs=[
        api.ToolOutput(tool_call_id=c.id, output=f"sunny in {i}") for i, c in enumerate(calls)]), metadata=md))
    assert rest[-1].done.status == apb.RUN_STATUS_COMPLETED and text_of(rest) == "Sunny in both."
    assert "sunny in 1" in str(stack.fakes[vendor].requests_for(name)[-1])
