"""A run outlives its stream and its replica: watched live from another engine process,
resumed after a disconnect with every event once and in order, ended FAILED within the lease
when its engine is SIGKILLed (and the session goes on), and cancelled mid-stream with the
vendor request closed and the partial text kept."""

from __future__ import annotations

import asyncio

import grpc

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as api
from parley.sessions.v1 import sessions_service_pb2 as sapi
from tests.assistants.conftest import LEASE_SECONDS
from tests.assistants.helpers import (
    assert_numbered,
    collect,
    new_assistant,
    statuses,
    text_of,
    user_message,
    wait_for_status,
)

LONG_TEXT = " ".join(f"word{i}" for i in range(150))


async def test_watch_live_from_another_replica_and_resume_after_a_disconnect(stack, start_engine, user):
    a, b = await start_engine("a"), await start_engine("b")
    md = stack.direct(user())
    model = stack.model("openai")
    stack.fakes["openai"].script(model.split("/")[1], {"text": LONG_TEXT})
    async with grpc.aio.insecure_channel(a.target) as on_a, grpc.aio.insecure_channel(b.target) as on_b:
        stub_a, stub_b = a.stub(on_a), b.stub(on_b)
        assistant = await new_assistant(stub_a, md, model)
        stream = stub_a.StreamRun(api.StreamRunRequest(run=api.CreateRunRequest(
            assistant_id=assistant.id, session=api.NewSession(messages=[user_message("talk")]))), metadata=md)
        seen = []
        async for response in stream:
            seen.append(response.event)
            if sum(e.HasField("message_delta") for e in seen) >= 5:
                break
        stream.cancel()  # the client goes away mid-run; the run goes on
        run_id = seen[0].run_id
        live = asyncio.ensure_future(collect(stub_b.WatchRun(api.WatchRunRequest(run_id=run_id), metadata=md), 90))
        rest = await collect(stub_b.WatchRun(api.WatchRunRequest(run_id=run_id, after_sequence=seen[-1].sequence),
                                             metadata=md), 90)
        everything = seen + rest
        assert_numbered(everything)
        assert text_of(everything) == LONG_TEXT
        assert everything[-1].done.status == apb.RUN_STATUS_COMPLETED
        assert await live == everything  # the live tail from B, from the start: the same log


async def test_a_killed_replica_fails_its_run_within_the_lease_and_the_session_goes_on(stack, start_engine, user):
    a, b = await start_engine("doomed"), await start_engine("survivor")
    md = stack.direct(user())
    model = stack.model("openai")
    name = model.split("/")[1]
    stack.fakes["openai"].script(name, {"text": "forever ", "endless": True}, {"text": "the queued run answers"})
    async with grpc.aio.insecure_channel(a.target) as on_a, grpc.aio.insecure_channel(b.target) as on_b:
        stub_a, stub_b = a.stub(on_a), b.stub(on_b)
        assistant = await new_assistant(stub_a, md, model)
        stream = stub_a.StreamRun(api.StreamRunRequest(run=api.CreateRunRequest(
            assistant_id=assistant.id, session=api.NewSession(messages=[user_message("go")]))), metadata=md)
        first = []
        async for response in stream:
            first.append(response.event)
            if any(e.HasField("message_delta") for e in first):
                break
        run_id = first[0].run_id
        session_id = first[0].run_status_changed.session_id
        queued = await stub_a.CreateRun(api.CreateRunRequest(
            assistant_id=assistant.id, session_id=session_id,
            busy_session_strategy=apb.BUSY_SESSION_STRATEGY_QUEUE), metadata=md)
        assert queued.status == apb.RUN_STATUS_QUEUED
        killed_at = asyncio.get_running_loop().time()
        a.kill()
        failed = await wait_for_status(stub_b, md, run_id, apb.RUN_STATUS_FAILED, timeout=LEASE_SECONDS * 10)
        assert failed.last_error.code == apb.RUN_ERROR_CODE_SERVER_ERROR
        assert "lease" in failed.last_error.message
        waited = asyncio.get_running_loop().time() - killed_at
        assert waited < LEASE_SECONDS * 10  # bounded wait, not a timing claim: it did end
        tail = await collect(stub_b.WatchRun(api.WatchRunRequest(run_id=run_id), metadata=md))
        assert_numbered(tail)
        assert statuses(tail)[-1] == apb.RUN_STATUS_FAILED and tail[-1].done.status == apb.RUN_STATUS_FAILED
        assert tail[-2].HasField("error")
        done = await wait_for_status(stub_b, md, queued.id, apb.RUN_STATUS_COMPLETED, timeout=60)
        assert done.status == apb.RUN_STATUS_COMPLETED
        events = await collect(stub_b.WatchRun(api.WatchRunRequest(run_id=queued.id), metadata=md))
        assert text_of(events) == "the queued run answers"


async def test_cancel_mid_stream_closes_the_vendor_request_and_keeps_the_partial_text(
        stack, engine_channel, backends, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    model = stack.model("openai")
    name = model.split("/")[1]
    vendor = stack.fakes["openai"]
    vendor.script(name, {"endless": True})
    assistant = await new_assistant(stub, md, model)
    stream = stub.StreamRun(api.StreamRunRequest(run=api.CreateRunRequest(
        assistant_id=assistant.id, session=api.NewSession(messages=[user_message("go")]))), metadata=md)
    events = []
    cancelled = None
    async for response in stream:
        events.append(response.event)
        if cancelled is None and sum(e.HasField("message_delta") for e in events) >= 3:
            cancelled = await stub.CancelRun(api.CancelRunRequest(run_id=events[0].run_id), metadata=md)
            assert cancelled.status in (apb.RUN_STATUS_CANCELLING, apb.RUN_STATUS_CANCELLED)
    assert_numbered(events)
    assert statuses(events)[-2:] == [apb.RUN_STATUS_CANCELLING, apb.RUN_STATUS_CANCELLED]
    assert events[-1].done.status == apb.RUN_STATUS_CANCELLED
    for _ in range(100):
        if name in vendor.disconnects:
            break
        await asyncio.sleep(0.1)
    assert name in vendor.disconnects  # the vendor saw its request closed
    message = next(e.message_created for e in events if e.HasField("message_created"))
    assert message.metadata["status"] == "incomplete"
    assert message.content[0].text.startswith("more") and message.content[0].text == text_of(events)
    sessions, _ = backends
    stored = await sessions.GetMessage(sapi.GetMessageRequest(session_id=message.session_id, message_id=message.id), metadata=md)
    assert stored.content[0].text == message.content[0].text
    step = next(e.step_updated for e in events if e.HasField("step_updated"))
    assert step.status == apb.RUN_STEP_STATUS_CANCELLED
    again = await stub.CancelRun(api.CancelRunRequest(run_id=events[0].run_id), metadata=md)
    assert again.status == apb.RUN_STATUS_CANCELLED


async def test_cancel_from_another_replica_stops_the_run(stack, start_engine, user):
    a, b = await start_engine("runs-it"), await start_engine("cancels-it")
    md = stack.direct(user())
    model = stack.model("openai")
    vendor = stack.fakes["openai"]
    vendor.script(model.split("/")[1], {"endless": True})
    async with grpc.aio.insecure_channel(a.target) as on_a, grpc.aio.insecure_channel(b.target) as on_b:
        stub_a, stub_b = a.stub(on_a), b.stub(on_b)
        assistant = await new_assistant(stub_a, md, model)
        stream = stub_a.StreamRun(api.StreamRunRequest(run=api.CreateRunRequest(
            assistant_id=assistant.id, session=api.NewSession(messages=[user_message("go")]))), metadata=md)
        events, asked = [], None
        async for response in stream:
            events.append(response.event)
            if asked is None and sum(e.HasField("message_delta") for e in events) == 2:
                asked = await stub_b.CancelRun(api.CancelRunRequest(run_id=events[0].run_id), metadata=md)
                assert asked.status == apb.RUN_STATUS_CANCELLING
        assert_numbered(events)
        assert statuses(events)[-2:] == [apb.RUN_STATUS_CANCELLING, apb.RUN_STATUS_CANCELLED]
        assert (await stub_b.GetRun(api.GetRunRequest(run_id=events[0].run_id), metadata=md)).status == \
            apb.RUN_STATUS_CANCELLED
