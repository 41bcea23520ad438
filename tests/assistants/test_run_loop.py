"""The run loop against the real engine process, sessions, llm (with fake vendors) and files:
events in Assistants v2 order with gap-free sequence numbers, the message written whole to
the session, steps with usage, the run's usage, and the options the model call carries."""

from __future__ import annotations

import uuid

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as api
from parley.sessions.v1 import sessions_pb2 as spb
from parley.sessions.v1 import sessions_service_pb2 as sapi
from tests.assistants.helpers import assert_numbered, kinds, new_assistant, statuses, stream_run, text_of, user_message


async def test_a_run_streams_its_answer_and_writes_it_to_the_session(stack, engine_channel, backends, user):
    me = user()
    md = stack.direct(me)
    stub = stack.engine.stub(engine_channel)
    model = stack.model("openai")
    stack.fakes["openai"].script(model.split("/")[1], {"text": "The weather in Paris is sunny.", "usage": (40, 9, 0)})
    assistant = await new_assistant(stub, md, model, name="Weather", instructions="You are terse.")
    events = await stream_run(stub, md, assistant_id=assistant.id,
                              session=api.NewSession(title="t", messages=[user_message("Weather in Paris?")]),
                              temperature=0.2, metadata={"k": "v"})
    assert_numbered(events)
    assert statuses(events) == [apb.RUN_STATUS_QUEUED, apb.RUN_STATUS_IN_PROGRESS, apb.RUN_STATUS_COMPLETED]
    order = kinds(events)
    assert order[:3] == ["run_status_changed", "run_status_changed", "step_created"]
    assert order[-3:] == ["step_updated", "run_status_changed", "done"]
    assert order.index("message_created") > max(i for i, k in enumerate(order) if k == "message_delta")
    assert text_of(events) == "The weather in Paris is sunny."
    run = events[-2].run_status_changed
    assert run.usage.prompt_tokens == 40 and run.usage.completion_tokens == 9 and run.usage.total_tokens == 49
    assert events[-1].done.status == apb.RUN_STATUS_COMPLETED and events[-1].done.usage.total_tokens == 49

    # What the vendor got: the instructions as the system prompt, the user's message, the options.
    sent = stack.fakes["openai"].requests_for(model.split("/")[1])[-1]
    assert sent["messages"][0] == {"role": "system", "content": "You are terse."}
    assert sent["messages"][-1]["content"] in ("Weather in Paris?", [{"type": "text", "text": "Weather in Paris?"}])
    assert sent["temperature"] == 0.2

    sessions, _ = backends
    messages = await sessions.ListMessages(sapi.ListMessagesRequest(session_id=run.session_id), metadata=md)
    assert [m.role for m in messages.messages] == [spb.ROLE_USER, spb.ROLE_ASSISTANT]
    answer = messages.messages[1]
    assert answer.content[0].text == "The weather in Paris is sunny." and answer.run_id == run.id
    steps = await stub.ListRunSteps(api.ListRunStepsRequest(run_id=run.id), metadata=md)
    assert len(steps.run_steps) == 1
    step = steps.run_steps[0]
    assert step.type == apb.RUN_STEP_TYPE_MESSAGE_CREATION and step.status == apb.RUN_STEP_STATUS_COMPLETED
    assert step.message_creation.message_id == answer.id and step.usage.total_tokens == 49
    stored = await stub.GetRun(api.GetRunRequest(run_id=run.id), metadata=md)
    assert stored.status == apb.RUN_STATUS_COMPLETED and stored.last_sequence == events[-1].sequence
    assert dict(stored.metadata) == {"k": "v"} and stored.instructions == "You are terse."

    # WatchRun replays the same log, event for event.
    replay = [r.event async for r in stub.WatchRun(api.WatchRunRequest(run_id=run.id), metadata=md)]
    assert replay == events


async def test_deltas_are_written_in_batches(stack, engine_channel, user):
    import asyncpg

    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    model = stack.model("openai")
    stack.fakes["openai"].script(model.split("/")[1], {"text": " ".join(f"token{i}" for i in range(120))})
    assistant = await new_assistant(stub, md, model)
    events = await stream_run(stub, md, assistant_id=assistant.id,
                              session=api.NewSession(messages=[user_message("count")]))
    deltas = sum(e.HasField("message_delta") for e in events)
    assert deltas >= 40
    conn = await asyncpg.connect(stack.database_url)
    try:
        # Events stored by one statement share a transaction id: count the transactions.
        writes = await conn.fetchval(
            "SELECT count(DISTINCT xmin::text) FROM sessions.run_events WHERE run_id = $1", uuid.UUID(events[0].run_id))
        stored = await conn.fetchval("SELECT count(*) FROM sessions.run_events WHERE run_id = $1",
                                     uuid.UUID(events[0].run_id))
    finally:
        await conn.close()
    assert stored == len(events)
    assert writes * 3 <= deltas, (writes, deltas)  # several deltas per write, never one each


def tiny_png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + \
        chunk(b"IEND", b"")


async def test_an_image_file_reaches_a_vision_model(stack, engine_channel, backends, user):
    from parley.files.v1 import files_pb2
    from tests.files.conftest import upload

    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    _, files = backends
    image = await upload(files, md, tiny_png(), "dot.png", purpose=files_pb2.FILE_PURPOSE_VISION)
    model = stack.model("openai")
    name = model.split("/")[1]
    assistant = await new_assistant(stub, md, model)
    message = spb.Message(role=spb.ROLE_USER, content=[spb.ContentPart(text="What is this?"), spb.ContentPart(
        image_file=spb.ImageFile(file_id=image.id))])
    events = await stream_run(stub, md, assistant_id=assistant.id, session=api.NewSession(messages=[message]))
    assert events[-1].done.status == apb.RUN_STATUS_COMPLETED
    sent = stack.fakes["openai"].requests_for(name)[-1]["messages"][-1]["content"]
    urls = [part["image_url"]["url"] for part in sent if part.get("type") == "image_url"]
    assert len(urls) == 1 and urls[0].startswith("data:image/png;base64,")
