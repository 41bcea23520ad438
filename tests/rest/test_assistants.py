"""Assistants, threads, messages, runs and steps through the edge with the official openai
SDK's own methods (its Assistants calls warn about deprecation; never run with -W error)."""

from __future__ import annotations

import json

import openai
import pytest
from openai import AsyncAssistantEventHandler

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather of a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}


def vendor(model: str) -> str:
    return model.split("/")[1]


async def test_assistants_crud_and_auto_paging(edge, client):
    model = edge.stack.model("openai")
    made = [await client.beta.assistants.create(model=model, name=f"helper {i}", instructions="Be brief.",
                                                tools=[WEATHER], metadata={"n": str(i)}) for i in range(5)]
    assert made[0].id.startswith("asst_") and made[0].tools[0].function.name == "get_weather"
    fetched = await client.beta.assistants.retrieve(made[2].id)
    assert fetched.name == "helper 2" and fetched.metadata == {"n": "2"} and fetched.model == model
    updated = await client.beta.assistants.update(made[2].id, name="renamed", temperature=0.5)
    assert updated.name == "renamed" and updated.temperature == 0.5 and updated.instructions == "Be brief."
    # Pages of two, newest first, followed by the SDK's auto-paging through `after`.
    first = await client.beta.assistants.list(limit=2)
    assert [a.id for a in first.data] == [made[4].id, made[3].id] and first.has_more
    every = [a.id async for a in client.beta.assistants.list(limit=2)]
    assert every == [a.id for a in reversed(made)]
    oldest_first = [a.id async for a in client.beta.assistants.list(limit=2, order="asc")]
    assert oldest_first == [a.id for a in made]
    before = await client.beta.assistants.list(limit=2, before=made[1].id)
    assert [a.id for a in before.data] == [made[3].id, made[2].id]
    deleted = await client.beta.assistants.delete(made[0].id)
    assert deleted.deleted and deleted.id == made[0].id
    with pytest.raises(openai.NotFoundError):
        await client.beta.assistants.retrieve(made[0].id)


async def test_threads_and_messages(edge, client):
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "first"},
                                                        {"role": "user", "content": [{"type": "text", "text": "second"}]}],
                                              metadata={"topic": "greetings"})
    assert thread.id.startswith("thread_") and thread.metadata == {"topic": "greetings"}
    added = await client.beta.threads.messages.create(thread.id, role="user", content="third")
    assert added.id.startswith("msg_") and added.content[0].text.value == "third" and added.thread_id == thread.id
    listed = [m.content[0].text.value async for m in client.beta.threads.messages.list(thread.id, order="asc",
                                                                                        limit=2)]
    assert listed == ["first", "second", "third"]
    newest = await client.beta.threads.messages.list(thread.id)
    assert newest.data[0].id == added.id
    assert (await client.beta.threads.messages.retrieve(added.id, thread_id=thread.id)).content[0].text.value == "third"
    assert (await client.beta.threads.messages.delete(added.id, thread_id=thread.id)).deleted
    modified = await client.beta.threads.update(thread.id, metadata={"topic": "changed"})
    assert modified.metadata == {"topic": "changed"}
    assert (await client.beta.threads.retrieve(thread.id)).metadata == {"topic": "changed"}
    # Listing threads is a Parley extension: the SDK has no method, its generic get does.
    page = await client.get("/threads", cast_to=object)
    assert thread.id in [t["id"] for t in page["data"]]
    assert (await client.beta.threads.delete(thread.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.retrieve(thread.id)
    # A bad message refuses the whole create: no thread is left behind.
    before = (await client.get("/threads", cast_to=object))["data"]
    with pytest.raises(openai.BadRequestError) as refused:
        await client.beta.threads.create(messages=[{"role": "user", "content": "ok"},
                                                   {"role": "system", "content": "not allowed"}])
    assert refused.value.body["param"].startswith("messages[1]")
    assert (await client.get("/threads", cast_to=object))["data"] == before


class Recorder(AsyncAssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.text_deltas: list[str] = []
        self.tool_deltas: list = []
        self.events: list[str] = []
        self.ended = False

    async def on_event(self, event) -> None:
        self.events.append(event.event)

    async def on_text_delta(self, delta, snapshot) -> None:
        self.text_deltas.append(delta.value)

    async def on_tool_call_delta(self, delta, snapshot) -> None:
        self.tool_deltas.append(delta)

    async def on_end(self) -> None:
        self.ended = True


async def test_a_streamed_run_with_an_event_handler(edge, client):
    model = edge.stack.model("openai")
    edge.stack.fakes["openai"].script(vendor(model), {"text": "Streaming through the edge works."})
    assistant = await client.beta.assistants.create(model=model, instructions="Be brief.")
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "Hello?"}])
    handler = Recorder()
    async with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id,
                                               event_handler=handler) as stream:
        await stream.until_done()
        run = await stream.get_final_run()
        messages = await stream.get_final_messages()
    assert handler.ended and run.status == "completed" and run.id.startswith("run_")
    assert "".join(handler.text_deltas) == "Streaming through the edge works."
    assert handler.events[:2] == ["thread.run.created", "thread.run.queued"]
    for name in ("thread.run.in_progress", "thread.run.step.created", "thread.message.created",
                 "thread.message.delta", "thread.message.completed", "thread.run.step.completed"):
        assert name in handler.events, name
    assert handler.events[-1] == "thread.run.completed"
    assert messages[-1].content[0].text.value == "Streaming through the edge works."
    stored = await client.beta.threads.messages.list(thread.id)
    assert stored.data[0].id == messages[-1].id and stored.data[0].run_id == run.id
    steps = await client.beta.threads.runs.steps.list(run.id, thread_id=thread.id)
    assert steps.data[-1].type == "message_creation"
    assert steps.data[-1].step_details.message_creation.message_id == messages[-1].id
    step = await client.beta.threads.runs.steps.retrieve(steps.data[0].id, thread_id=thread.id, run_id=run.id)
    assert step.id == steps.data[0].id
    # The streamed message's id is the one it is stored, listed, retrieved and deleted under.
    again = await client.beta.threads.messages.retrieve(messages[-1].id, thread_id=thread.id)
    assert again.content[0].text.value == "Streaming through the edge works."
    assert (await client.beta.threads.messages.delete(messages[-1].id, thread_id=thread.id)).deleted
    assert [m.id async for m in client.beta.threads.messages.list(thread.id)] == [
        m.id for m in stored.data if m.id != messages[-1].id]


async def test_create_and_poll_and_the_poll_header(edge, client):
    model = edge.stack.model("openai")
    edge.stack.fakes["openai"].script(vendor(model), {"text": "Polled."})
    assistant = await client.beta.assistants.create(model=model)
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "Hi"}])
    run = await client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed" and run.usage.total_tokens > 0
    raw = await client.beta.threads.runs.with_raw_response.retrieve(run.id, thread_id=thread.id)
    assert raw.headers["openai-poll-after-ms"] == "50"
    runs = await client.beta.threads.runs.list(thread.id)
    assert [r.id for r in runs.data] == [run.id]
    # create thread and run, polled
    again = await client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "Once more"}]})
    assert again.status == "completed" and again.thread_id != thread.id
    with pytest.raises(openai.BadRequestError):  # a run that ended cannot be cancelled
        await client.beta.threads.runs.cancel(run.id, thread_id=thread.id)


async def test_a_function_round_trip_with_submit_tool_outputs_stream(edge, client):
    model = edge.stack.model("openai")
    edge.stack.fakes["openai"].script(vendor(model),
                                      {"tool_calls": [("call_paris", "get_weather", '{"city": "Paris"}')]},
                                      {"text": "It is 21 degrees in Paris."})
    assistant = await client.beta.assistants.create(model=model, tools=[WEATHER])
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "Weather in Paris?"}])
    handler = Recorder()
    async with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id,
                                               event_handler=handler) as stream:
        await stream.until_done()
    run = stream.current_run
    assert run.status == "requires_action" and handler.ended
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("call_paris", "get_weather", {"city": "Paris"})]
    assert handler.tool_deltas and handler.tool_deltas[0].type == "function", handler.events
    assert "".join(d.function.arguments or "" for d in handler.tool_deltas) == '{"city": "Paris"}'
    after = Recorder()
    async with client.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=thread.id, run_id=run.id, event_handler=after,
            tool_outputs=[{"tool_call_id": "call_paris", "output": '{"temperature": 21}'}]) as resumed:
        await resumed.until_done()
    assert "".join(after.text_deltas) == "It is 21 degrees in Paris." and after.ended
    assert (await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)).status == "completed"
    sent = edge.stack.fakes["openai"].requests_for(vendor(model))[-1]
    assert any(m["role"] == "tool" and m["tool_call_id"] == "call_paris" for m in sent["messages"])
    steps = [s async for s in client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc")]
    assert steps[0].step_details.tool_calls[0].function.output == '{"temperature": 21}'


async def test_submit_tool_outputs_not_streamed_and_its_errors(edge, client):
    model = edge.stack.model("openai")
    edge.stack.fakes["openai"].script(vendor(model), {"tool_calls": [("call_1", "get_weather", '{"city": "Rome"}')]},
                                      {"text": "Sunny."})
    assistant = await client.beta.assistants.create(model=model, tools=[WEATHER])
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "Rome?"}])
    run = await client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "requires_action"
    with pytest.raises(openai.BadRequestError):
        await client.beta.threads.runs.submit_tool_outputs(run.id, thread_id=thread.id,
                                                           tool_outputs=[{"tool_call_id": "call_unknown", "output": "x"}])
    done = await client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_1", "output": "sunny"}])
    assert done.status == "completed"


async def test_another_user_sees_nothing(edge, client):
    model = edge.stack.model("openai")
    assistant = await client.beta.assistants.create(model=model)
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "mine"}])
    async with await edge.client() as other:
        with pytest.raises(openai.NotFoundError):
            await other.beta.assistants.retrieve(assistant.id)
        with pytest.raises(openai.NotFoundError):
            await other.beta.threads.retrieve(thread.id)
        with pytest.raises(openai.NotFoundError):
            await other.beta.threads.messages.list(thread.id)
        with pytest.raises(openai.NotFoundError):
            await other.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
        assert (await other.beta.assistants.list()).data == []
        assert (await other.get("/threads", cast_to=object))["data"] == []
