"""End to end through the real gateway: the real engine processes (replica A behind the
stack's gateway; B, when a test needs another replica, behind a gateway of its own), the real
llm, sessions and files services, and the fake vendor servers speaking OpenAI's, Anthropic's
and Mistral's wire formats, driven by the public client (`parley.client`). The stack is the
assistants tests' shared one (tests/assistants/conftest.py), started once per session.

Each test scripts its own vendor model name (`openai/e2e-<test>`), so the fakes' per-model
scripts never meet.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import pytest

from parley.assistants.v1 import assistants_pb2
from parley.client import (
    MessageCreated,
    RunDone,
    RunStatus,
    RunStatusChanged,
    StepCreated,
    TextDelta,
    ToolCallDelta,
    error_details,
    file_search_tool,
    function_tool,
)
from parley.client import ParleyClient
from tests.files.documents import pdf
from tests.gateway.conftest import free_port

WAIT = 60.0  # bounded waits: generous for a loaded two-core machine, never a timing assertion


def vendor_of(model: str) -> tuple[str, str]:
    provider, _, name = model.partition("/")
    return provider, name


async def wait_for(predicate, what: str, timeout: float = WAIT):
    async def poll():
        while True:
            value = await predicate() if asyncio.iscoroutinefunction(predicate) else predicate()
            if value:
                return value
            await asyncio.sleep(0.05)

    try:
        return await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what}") from None


def text_of(content) -> str:
    """A vendor message's content as text (a string, or OpenAI/Anthropic content parts)."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def sequences(events) -> list[int]:
    return [e.sequence for e in events]


# ---- function calling ------------------------------------------------------------------------


def get_weather(city: str, unit: str = "celsius") -> dict:
    """The current weather of a city."""
    return {"city": city, "temperature": {"Paris": 21, "Rome": 27}[city], "unit": unit}


async def local_time(city: str) -> str:
    """The local time of a city."""
    await asyncio.sleep(0)
    return f"12:00 in {city}"


async def test_function_round_trip_with_two_parallel_calls(e2e):
    model = "openai/e2e-parallel"
    fake = e2e.fakes["openai"]
    fake.script("e2e-parallel",
                {"tool_calls": [("call_paris", "get_weather", '{"city": "Paris"}'),
                                ("call_rome", "local_time", '{"city": "Rome"}')]},
                {"text": "Paris is 21 degrees; it is noon in Rome."})
    parley = await e2e.client("alice")
    assistant = await parley.assistants.create("weather", model=model, instructions="Answer briefly.",
                                               tools=[get_weather, local_time])
    run = parley.assistants.run(assistant.id, "Weather in Paris, time in Rome?",
                                functions={"get_weather": get_weather, "local_time": local_time})
    events = [event async for event in run]
    result = await run.result()

    assert result.status == RunStatus.COMPLETED, result.error
    assert result.text == "Paris is 21 degrees; it is noon in Rome."
    assert run.rounds == 1
    outputs = {call.id: call.output for call in run.answered}
    assert json.loads(outputs["call_paris"]) == {"city": "Paris", "temperature": 21, "unit": "celsius"}
    assert outputs["call_rome"] == "12:00 in Rome"
    # The run stopped once, with both calls pending at the same time.
    required = [e for e in events if isinstance(e, RunStatusChanged) and e.status == RunStatus.REQUIRES_ACTION]
    assert len(required) == 1
    assert {c.name for c in required[0].required_tool_calls} == {"get_weather", "local_time"}
    # The tool calls streamed as typed fragments, before the run stopped.
    fragments = [e for e in events if isinstance(e, ToolCallDelta)]
    assert {f.id for f in fragments if f.id} == {"call_paris", "call_rome"}
    # Sequences increase by one across the StreamRun and SubmitToolOutputs streams.
    assert sequences(events) == list(range(events[0].sequence, events[0].sequence + len(events)))
    assert isinstance(events[-1], RunDone) and events[-1].status == RunStatus.COMPLETED

    # The second model call carried both outputs as tool messages, answering the right ids.
    second = fake.requests_for("e2e-parallel")[-1]
    tool_messages = {m["tool_call_id"]: text_of(m["content"]) for m in second["messages"] if m["role"] == "tool"}
    assert tool_messages == outputs
    # The steps: one tool_calls step with both outputs, then the message.
    steps = await parley.assistants.list_steps(result.run_id)
    kinds = [s.WhichOneof("step_details") for s in steps]
    assert kinds == ["tool_calls", "message_creation"]
    recorded = {d.id: d.function.output for d in steps[0].tool_calls.tool_calls}
    assert recorded == outputs
    assert steps[1].message_creation.message_id
    messages = [m async for m in parley.sessions.messages(result.session_id)]
    assert messages[-1].content[0].text == result.text and messages[-1].run_id == result.run_id


async def test_a_failing_callable_becomes_an_error_output_and_the_run_goes_on(e2e):
    fake = e2e.fakes["openai"]
    fake.script("e2e-failing", {"tool_calls": [("call_x", "explode", "{}")]}, {"text": "It failed, sorry."})
    parley = await e2e.client("alice")

    def explode() -> str:
        """Always fails."""
        raise RuntimeError("the function broke")

    assistant = await parley.assistants.create("fails", model="openai/e2e-failing", tools=[explode])
    result = await parley.assistants.run(assistant.id, "Try it", functions=[explode]).result()
    assert result.status == RunStatus.COMPLETED
    sent = [m for m in fake.requests_for("e2e-failing")[-1]["messages"] if m["role"] == "tool"]
    assert json.loads(text_of(sent[0]["content"])) == {"error": "RuntimeError: the function broke"}


async def test_a_cached_function_is_answered_without_stopping(e2e):
    fake = e2e.fakes["openai"]
    fake.script("e2e-cached",
                {"tool_calls": [("call_1", "get_weather", '{"city": "Rome"}')]}, {"text": "27 in Rome."},
                {"tool_calls": [("call_2", "get_weather", '{"city": "Rome"}')]}, {"text": "Still 27 in Rome."})
    parley = await e2e.client("alice")
    calls = []

    def weather(city: str) -> dict:
        calls.append(city)
        return get_weather(city)

    tool = function_tool(get_weather, cache_ttl=600)
    assistant = await parley.assistants.create("cached", model="openai/e2e-cached", tools=[tool])
    first = await parley.assistants.run(assistant.id, "Rome?", functions={"get_weather": weather}).result()
    again = parley.assistants.run(assistant.id, "Rome again?", session_id=first.session_id,
                                  functions={"get_weather": weather})
    second = await again.result()
    assert first.status == second.status == RunStatus.COMPLETED
    assert calls == ["Rome"] and again.rounds == 0  # the second call came from the cache
    steps = await parley.assistants.list_steps(second.run_id)
    cached = [d for s in steps if s.WhichOneof("step_details") == "tool_calls" for d in s.tool_calls.tool_calls]
    assert cached and cached[0].function.cached and json.loads(cached[0].function.output)["temperature"] == 27


# ---- every vendor ----------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", ["openai", "anthropic", "mistral"])
async def test_the_same_run_on_every_vendor_format(e2e, vendor):
    name = f"e2e-same-{vendor}"
    fake = e2e.fakes[vendor]
    fake.script(name, {"tool_calls": [(f"call_{vendor}_1", "get_weather", '{"city": "Paris"}'),
                                      (f"call_{vendor}_2", "get_weather", '{"city": "Rome"}')]},
                {"text": "Paris 21, Rome 27."})
    parley = await e2e.client("alice")
    assistant = await parley.assistants.create(vendor, model=f"{vendor}/{name}", tools=[get_weather])
    run = parley.assistants.run(assistant.id, "Paris and Rome?", functions=[get_weather])
    result = await run.result()
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.text == "Paris 21, Rome 27."
    assert sorted(json.loads(c.output)["city"] for c in run.answered) == ["Paris", "Rome"]
    assert len(fake.requests_for(name)) == 2  # the call, then the answer with both outputs


# ---- file search -----------------------------------------------------------------------------


REPORT_PAGES = [
    "Parley quarterly report. Revenue grew in every region this quarter.",
    "Refund policy. Customers may return any purchase within 45 days for a full refund, no questions asked.",
]


STORES: dict[str, tuple[str, str]] = {}  # user → (file id, vector store id): one upload per user


async def report_store(e2e, parley, user: str, tmp_path) -> tuple[str, str]:
    if user not in STORES:
        path = tmp_path / "report.pdf"
        path.write_bytes(pdf(REPORT_PAGES))
        uploaded = await parley.files.upload(path)
        STORES[user] = uploaded.id, await e2e.vector_store(parley, "reports", [uploaded.id])
    return STORES[user]


def prompt_text(body: dict) -> str:
    """Everything a vendor request showed the model, as text (OpenAI, Anthropic or Mistral)."""
    return json.dumps(body, ensure_ascii=False)


@pytest.mark.parametrize("vendor", ["openai", "anthropic", "mistral"])
async def test_file_search_answers_with_a_citation_of_file_page_and_quote(e2e, tmp_path, vendor):
    parley = await e2e.client("alice")
    file_id, store = await report_store(e2e, parley, "alice", tmp_path)
    name = f"e2e-search-{vendor}"
    fake = e2e.fakes[vendor]
    fake.script(name, {"tool_calls": [(f"call_search_{vendor}", "file_search", '{"query": "refund policy days"}')]},
                {"text": e2e.cite("Refunds are accepted within 45 days", 0) + "."})
    assistant = await parley.assistants.create("reader", model=f"{vendor}/{name}", tools=[file_search_tool()],
                                               vector_store_ids=[store])
    stream = parley.assistants.stream_run(assistant.id, "How long do I have to return a purchase?")
    result = await stream.result()
    assert result.status == RunStatus.COMPLETED, result.error
    assert "45 days" in result.text
    citation = result.citations[0]
    assert citation.filename == "report.pdf" and citation.file_id == file_id
    assert citation.page == 2
    assert "within 45 days for a full refund" in citation.quote
    marked = result.text[citation.start_index:citation.end_index]
    assert marked == citation.marker
    # The search step records the query and the results the model saw.
    steps = await parley.assistants.list_steps(result.run_id)
    search = next(d for s in steps if s.WhichOneof("step_details") == "tool_calls" for d in s.tool_calls.tool_calls)
    assert search.file_search.query == "refund policy days"
    assert search.file_search.results[0].filename == "report.pdf" and search.file_search.results[0].page == 2
    # The results reached the model's prompt, in this vendor's wire format.
    assert "within 45 days for a full refund" in prompt_text(fake.requests_for(name)[-1])
    # The message step keeps the citation too, for whoever reads the run later.
    message_step = next(s for s in steps if s.WhichOneof("step_details") == "message_creation")
    assert message_step.message_creation.annotations[0].file_citation.page == 2


# ---- streams that outlive their client and their replica ------------------------------------


async def test_a_client_that_disconnects_resumes_on_another_replica_exactly_once(e2e):
    text = "".join(f"word{i} " for i in range(80))
    e2e.fakes["openai"].script("e2e-resume", {"text": text})
    parley = await e2e.client("alice")
    on_b = await e2e.client_b("alice")
    assistant = await parley.assistants.create("resume", model="openai/e2e-resume")
    stream = parley.assistants.stream_run(assistant.id, "Say many words")
    seen = []
    async for event in stream:
        seen.append(event)
        if isinstance(event, TextDelta) and len([e for e in seen if isinstance(e, TextDelta)]) >= 3:
            break
    stream.cancel()  # the client goes away mid-run; the run goes on
    resumed = on_b.assistants.watch_run(stream.run_id, after_sequence=seen[-1].sequence)
    rest = [event async for event in resumed]
    every = seen + rest
    assert sequences(every) == list(range(1, len(every) + 1))  # each event once, in order, none lost
    assert isinstance(every[-1], RunDone) and every[-1].status == RunStatus.COMPLETED
    assert "".join(e.text for e in every if isinstance(e, TextDelta)) == text
    # A replay from the start on B is the same log.
    replay = [event async for event in on_b.assistants.watch_run(stream.run_id)]
    assert [(e.sequence, type(e)) for e in replay] == [(e.sequence, type(e)) for e in every]


async def test_the_client_resumes_by_itself_when_its_gateway_goes_away(e2e):
    """A StreamRun whose gateway stops mid-run: the client's RunStream resumes with WatchRun
    (after the last sequence it saw) once a gateway answers on that address again, and the
    caller sees every event once, in order, ending at the same place StreamRun would."""
    text = "".join(f"resumed{i} " for i in range(60))
    e2e.fakes["openai"].script("e2e-auto-resume", {"text": text})
    port = free_port()
    gateway = await e2e.gateway_on(port)
    parley = await e2e.client("alice", port=port)
    assistant = await parley.assistants.create("auto-resume", model="openai/e2e-auto-resume")
    stream = parley.assistants.stream_run(assistant.id, "Say it")
    events = []
    async for event in stream:
        events.append(event)
        if sum(isinstance(e, TextDelta) for e in events) == 3:
            await gateway.stop(0)  # the connection breaks mid-run (UNAVAILABLE to the client)
            asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(e2e.gateway_on(port)))
    assert stream.resumes >= 1  # the break was real, and WatchRun picked up after it
    assert sequences(events) == list(range(1, len(events) + 1))
    assert isinstance(events[-1], RunDone) and events[-1].status == RunStatus.COMPLETED
    assert stream.text == text


async def test_a_run_started_on_a_is_watched_live_from_b(e2e):
    e2e.fakes["openai"].script("e2e-live", {"text": "".join(f"live{i} " for i in range(100))})
    parley = await e2e.client("alice")
    on_b = await e2e.client_b("alice")
    assistant = await parley.assistants.create("live", model="openai/e2e-live")
    stream = parley.assistants.stream_run(assistant.id, "Stream")
    first = await anext(aiter(stream))
    watch = on_b.assistants.watch_run(first.run_id)
    watched = []
    live_while_running = False
    async for event in watch:
        watched.append(event)
        if isinstance(event, TextDelta) and not live_while_running:
            live_while_running = (await parley.assistants.get_run(first.run_id)).status == RunStatus.IN_PROGRESS
    streamed = [first] + [event async for event in stream]
    assert live_while_running  # B's tail delivered text while the run was still going on A
    assert [(e.sequence, type(e)) for e in watched] == [(e.sequence, type(e)) for e in streamed]
    assert watch.text == stream.text


# ---- cancel and busy sessions ----------------------------------------------------------------


async def test_cancel_mid_stream_closes_the_vendor_request_and_keeps_the_partial_text(e2e):
    fake = e2e.fakes["openai"]
    fake.script("e2e-cancel", {"endless": True})
    parley = await e2e.client("alice")
    assistant = await parley.assistants.create("cancel", model="openai/e2e-cancel")
    stream = parley.assistants.stream_run(assistant.id, "Go on forever")
    events = []
    async for event in stream:
        events.append(event)
        if isinstance(event, TextDelta) and sum(isinstance(e, TextDelta) for e in events) == 2:
            cancelling = await parley.assistants.cancel_run(event.run_id)
            assert cancelling.status in (RunStatus.CANCELLING, RunStatus.CANCELLED)
    assert isinstance(events[-1], RunDone) and events[-1].status == RunStatus.CANCELLED
    await wait_for(lambda: "e2e-cancel" in fake.disconnects, "the vendor to see its request closed")
    run = await parley.assistants.get_run(stream.run_id)
    assert run.status == RunStatus.CANCELLED and run.cancel_time.seconds
    messages = [m async for m in parley.sessions.messages(run.session_id)]
    assert messages[-1].role == 2 and messages[-1].content[0].text.startswith("more more ")  # kept, incomplete
    # Cancelling a run that has ended otherwise is refused, and changes nothing.
    ended = await _ended_run(parley, e2e)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await parley.assistants.cancel_run(ended.id)
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION and details.reason == "RUN_ENDED"
    assert (await parley.assistants.get_run(ended.id)).status == RunStatus.COMPLETED


async def _ended_run(parley, e2e):
    e2e.fakes["openai"].script("e2e-ended", {"text": "done"})
    assistant = await parley.assistants.create("ended", model="openai/e2e-ended")
    result = await parley.assistants.stream_run(assistant.id, "hi").result()
    assert result.status == RunStatus.COMPLETED
    return await parley.assistants.get_run(result.run_id)


async def _busy_session(parley, e2e, name: str):
    """A session whose run is streaming endlessly: (assistant, the active run's stream, its first event)."""
    e2e.fakes["openai"].script(name, {"endless": True}, {"text": f"after {name}"})
    assistant = await parley.assistants.create(name, model=f"openai/{name}")
    active = parley.assistants.stream_run(assistant.id, "keep going")
    async for event in active:
        if isinstance(event, TextDelta):
            return assistant, active, event
    raise AssertionError("the active run never streamed")


async def test_busy_session_reject(e2e):
    parley = await e2e.client("alice")
    assistant, active, first = await _busy_session(parley, e2e, "e2e-busy-reject")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await parley.assistants.create_run(assistant.id, "me too", session_id=active.session_id,
                                           busy_session="reject")
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION and details.reason == "SESSION_BUSY"
    runs = await parley.assistants.list_runs(active.session_id)
    assert [r.id for r in runs.runs] == [first.run_id]  # nothing stored for the refused run
    await parley.assistants.cancel_run(first.run_id)
    assert (await active.result()).status == RunStatus.CANCELLED


async def test_busy_session_queue_waits_behind_the_active_run_in_order(e2e):
    parley = await e2e.client("alice")
    assistant, active, first = await _busy_session(parley, e2e, "e2e-busy-queue")
    queued = await parley.assistants.create_run(assistant.id, "after you", session_id=active.session_id)
    assert queued.status == RunStatus.QUEUED and queued.busy_session_strategy == \
        assistants_pb2.BUSY_SESSION_STRATEGY_QUEUE  # the default
    await asyncio.sleep(0.5)
    assert (await parley.assistants.get_run(queued.id)).status == RunStatus.QUEUED  # still behind the active one
    await parley.assistants.cancel_run(first.run_id)
    assert (await active.result()).status == RunStatus.CANCELLED
    result = await parley.assistants.watch_run(queued.id).result()
    assert result.status == RunStatus.COMPLETED and result.text == "after e2e-busy-queue"
    first_run = await parley.assistants.get_run(first.run_id)
    second_run = await parley.assistants.get_run(queued.id)
    assert second_run.start_time.ToNanoseconds() >= first_run.cancel_time.ToNanoseconds()


async def test_busy_session_cancel_active_interrupts_then_starts(e2e):
    parley = await e2e.client("alice")
    assistant, active, first = await _busy_session(parley, e2e, "e2e-busy-interrupt")
    second = parley.assistants.stream_run(assistant.id, "stop that", session_id=active.session_id,
                                          busy_session="cancel_active")
    result = await second.result()
    assert result.status == RunStatus.COMPLETED and result.text == "after e2e-busy-interrupt"
    assert (await active.result()).status == RunStatus.CANCELLED
    assert (await parley.assistants.get_run(first.run_id)).status == RunStatus.CANCELLED


# ---- expiry, limits, templates ---------------------------------------------------------------


async def test_an_unanswered_action_expires(e2e):
    e2e.fakes["openai"].script("e2e-expire", {"tool_calls": [("call_late", "get_weather", '{"city": "Rome"}')]})
    _, port = await e2e.replica("expiry", PARLEY_ASSISTANTS_ACTION_TIMEOUT_SECONDS=2)
    parley = await e2e.client("alice", port=port)  # a replica that waits 2 s for tool outputs
    assistant = await parley.assistants.create("expire", model="openai/e2e-expire", tools=[get_weather])
    stream = parley.assistants.stream_run(assistant.id, "Rome?")
    await stream.result()
    assert stream.status == RunStatus.REQUIRES_ACTION
    assert [c.id for c in stream.required_tool_calls] == ["call_late"]
    watched = await parley.assistants.watch_run(stream.run_id, after_sequence=stream.last_sequence).result()
    assert watched.status == RunStatus.EXPIRED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await parley.assistants.submit_tool_outputs(stream.run_id, {"call_late": "too late"}).result()
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION and details.reason == "RUN_NOT_REQUIRES_ACTION"
    assert (await parley.assistants.get_run(stream.run_id)).status == RunStatus.EXPIRED


async def test_completion_token_limit_ends_incomplete(e2e):
    e2e.fakes["openai"].script("e2e-limit", {"text": "A long answer that goes on.", "usage": (20, 40, 0),
                                             "finish": "length"})
    parley = await e2e.client("alice")
    assistant = await parley.assistants.create("limited", model="openai/e2e-limit")
    result = await parley.assistants.stream_run(assistant.id, "Tell me everything",
                                                max_completion_tokens=16).result()
    assert result.status == RunStatus.INCOMPLETE
    assert result.incomplete_reason == "max_completion_tokens"
    assert 0 < fake_max_tokens(e2e.fakes["openai"].requests_for("e2e-limit")[-1]) <= 16  # the vendor was told


def fake_max_tokens(body: dict) -> int:
    return body.get("max_completion_tokens") or body.get("max_tokens") or 0


async def test_prompt_token_limit_across_model_calls_ends_incomplete(e2e):
    e2e.fakes["openai"].script("e2e-prompt-limit",
                               {"tool_calls": [("call_p", "get_weather", '{"city": "Paris"}')], "usage": (300, 5, 0)},
                               {"text": "never reached"})
    parley = await e2e.client("alice")
    assistant = await parley.assistants.create("prompt-limited", model="openai/e2e-prompt-limit",
                                               tools=[get_weather])
    result = await parley.assistants.run(assistant.id, "Paris?", functions=[get_weather],
                                         max_prompt_tokens=256).result()
    assert result.status == RunStatus.INCOMPLETE and result.incomplete_reason == "max_prompt_tokens"
    assert len(e2e.fakes["openai"].requests_for("e2e-prompt-limit")) == 1  # the second call was never made


async def test_template_variables_fill_the_instructions(e2e):
    fake = e2e.fakes["openai"]
    fake.script("e2e-template", {"text": "Hello Ada."})
    parley = await e2e.client("alice")
    assistant = await parley.assistants.create(
        "templated", model="openai/e2e-template",
        instructions="You help {{customer_name}} with their {{plan}} plan.")
    result = await parley.assistants.stream_run(assistant.id, "Hi", variables={"customer_name": "Ada",
                                                                               "plan": "gold"}).result()
    assert result.status == RunStatus.COMPLETED
    system = fake.requests_for("e2e-template")[-1]["messages"][0]
    assert system["role"] in ("system", "developer")
    assert "You help Ada with their gold plan." in text_of(system["content"])
    assert result.run.instructions == "You help Ada with their gold plan."
    for variables, named in (({"customer_name": "Ada"}, "plan"),
                             ({"customer_name": "Ada", "plan": "gold", "shoe_size": "42"}, "shoe_size")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await parley.assistants.create_run(assistant.id, "Hi", variables=variables)
        details = error_details(caught.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert named in details.message or any(named in f or named in d for f, d in details.field_violations.items())


# ---- tool outputs that are wrong -------------------------------------------------------------


async def test_bad_tool_outputs_are_refused_and_change_nothing(e2e):
    e2e.fakes["openai"].script("e2e-bad-outputs",
                               {"tool_calls": [("call_a", "get_weather", '{"city": "Paris"}'),
                                               ("call_b", "get_weather", '{"city": "Rome"}')]},
                               {"text": "Both answered."})
    parley = await e2e.client("alice")
    assistant = await parley.assistants.create("bad-outputs", model="openai/e2e-bad-outputs", tools=[get_weather])
    stream = parley.assistants.stream_run(assistant.id, "Paris and Rome?")
    await stream.result()
    assert stream.status == RunStatus.REQUIRES_ACTION
    stub = parley.assistants.stub
    from parley.assistants.v1 import assistants_service_pb2 as api

    def outputs(*pairs):
        return api.SubmitToolOutputsRequest(run_id=stream.run_id, tool_outputs=[
            api.ToolOutput(tool_call_id=i, output=o) for i, o in pairs])

    cases = {
        "missing": outputs(("call_a", "x")),
        "unknown": outputs(("call_a", "x"), ("call_b", "y"), ("call_zzz", "z")),
        "duplicate": outputs(("call_a", "x"), ("call_a", "x2"), ("call_b", "y")),
        "oversize": outputs(("call_a", "x" * (512 * 1024 + 1)), ("call_b", "y")),
    }
    for case, request in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.SubmitToolOutputs(request):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        run = await parley.assistants.get_run(stream.run_id)
        assert run.status == RunStatus.REQUIRES_ACTION, case  # nothing changed
    result = await parley.assistants.submit_tool_outputs(stream.run_id, {"call_a": "21", "call_b": "27"}).result()
    assert result.status == RunStatus.COMPLETED
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # a second submit
        await parley.assistants.submit_tool_outputs(stream.run_id, {"call_a": "21", "call_b": "27"}).result()
    assert error_details(caught.value).reason == "RUN_NOT_REQUIRES_ACTION"


# ---- bad run requests ------------------------------------------------------------------------


BAD_RUNS = {
    "max_prompt_tokens below 256": (dict(max_prompt_tokens=100), grpc.StatusCode.INVALID_ARGUMENT, "max_prompt_tokens"),
    "max_completion_tokens below 16": (dict(max_completion_tokens=8), grpc.StatusCode.INVALID_ARGUMENT,
                                       "max_completion_tokens"),
    "no messages kept": (dict(last_messages=0), grpc.StatusCode.INVALID_ARGUMENT, "truncation_strategy"),
    "tool_choice names no tool": (dict(tool_choice="not_a_tool"), grpc.StatusCode.INVALID_ARGUMENT, "tool_choice"),
    "an unknown model": (dict(model="openai/" + "x" * 300), grpc.StatusCode.INVALID_ARGUMENT, "model"),
    "another user's vector store": (dict(vector_store_ids=["01a2b3c4-0000-7000-8000-000000000000"]),
                                    None, "vector_store"),
    "a session that does not exist": (dict(session_id="01a2b3c4-0000-7000-8000-000000000000"),
                                      grpc.StatusCode.NOT_FOUND, ""),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
async def test_bad_run_requests_get_their_documented_status(e2e, case):
    options, code, field = BAD_RUNS[case]
    parley = await e2e.client("alice")
    assistant = await parley.assistants.create("bad-runs", model="openai/e2e-bad-runs", tools=[get_weather])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await parley.assistants.create_run(assistant.id, "hi", **options)
    details = error_details(caught.value)
    assert details.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), details
    if code is not None:
        assert details.code == code, details
    else:
        assert details.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), details
    if field and details.code == grpc.StatusCode.INVALID_ARGUMENT:
        assert any(field in name for name in details.field_violations), details


async def test_watch_and_submit_of_unknown_runs_and_bad_sequences(e2e):
    parley = await e2e.client("alice")
    unknown = "01a2b3c4-0000-7000-8000-000000000000"
    for call in (parley.assistants.watch_run(unknown).result(), parley.assistants.get_run(unknown),
                 parley.assistants.cancel_run(unknown), parley.assistants.list_steps(unknown),
                 parley.assistants.submit_tool_outputs(unknown, {"call": "x"}).result()):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
    run = await _ended_run(parley, e2e)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await parley.assistants.watch_run(run.id, after_sequence=-1).result()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    tail = await parley.assistants.watch_run(run.id, after_sequence=run.last_sequence).result()
    assert tail.status == RunStatus.UNSPECIFIED and tail.text == ""  # nothing after the last event


# ---- isolation -------------------------------------------------------------------------------


async def test_another_user_sees_nothing_of_assistants_runs_and_steps(e2e):
    e2e.fakes["openai"].script("e2e-isolated", {"tool_calls": [("call_iso", "get_weather", '{"city": "Rome"}')]})
    alice = await e2e.client("alice")
    bob = await e2e.client("bob")
    assistant = await alice.assistants.create("private", model="openai/e2e-isolated", tools=[get_weather])
    stream = alice.assistants.stream_run(assistant.id, "Rome?")
    await stream.result()
    assert stream.status == RunStatus.REQUIRES_ACTION
    run_id, session_id = stream.run_id, stream.session_id

    async def not_found(call):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()

    await not_found(bob.assistants.get(assistant.id))
    await not_found(bob.assistants.update(assistant.id, name="mine now"))
    await not_found(bob.assistants.delete(assistant.id))
    await not_found(bob.assistants.create_run(assistant.id, "use it"))
    await not_found(bob.assistants.get_run(run_id))
    await not_found(bob.assistants.list_steps(run_id))
    await not_found(bob.assistants.list_runs(session_id))
    await not_found(bob.assistants.cancel_run(run_id))
    await not_found(bob.assistants.watch_run(run_id).result())
    await not_found(bob.assistants.submit_tool_outputs(run_id, {"call_iso": "stolen"}).result())
    assert assistant.id not in [a.id async for a in bob.assistants.all()]
    # Alice's run is untouched by all of that.
    assert (await alice.assistants.get_run(run_id)).status == RunStatus.REQUIRES_ACTION
    await alice.assistants.cancel_run(run_id)


# ---- assistants CRUD -------------------------------------------------------------------------


async def test_assistants_crud_and_validation(e2e):
    parley = await e2e.client("carol")
    created = await parley.assistants.create("crud", model="openai/e2e-crud", instructions="Be kind.",
                                             tools=[get_weather], metadata={"team": "support"}, temperature=0.3)
    assert created.tools[0].function.name == "get_weather"
    assert created.tools[0].function.parameters["required"] == ["city"]
    updated = await parley.assistants.update(created.id, instructions="Be brief.", metadata={"team": "sales"})
    assert updated.instructions == "Be brief." and updated.metadata["team"] == "sales"
    assert updated.name == "crud" and updated.temperature == pytest.approx(0.3)  # untouched fields kept
    assert (await parley.assistants.get(created.id)).instructions == "Be brief."
    assert created.id in [a.id async for a in parley.assistants.all()]
    for bad, code in (
        (dict(model="nope/never"), (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)),
        (dict(model="openai/e2e-crud", tools=[function_tool("twice"), function_tool("twice")]),
         (grpc.StatusCode.INVALID_ARGUMENT,)),
        (dict(model="openai/e2e-crud", tools=[function_tool(f"f{i}") for i in range(129)]),
         (grpc.StatusCode.INVALID_ARGUMENT,)),
        (dict(model="openai/e2e-crud", tools=[function_tool("arr", parameters={"type": "array"})]),
         (grpc.StatusCode.INVALID_ARGUMENT,)),
        (dict(model="openai/e2e-crud", tools=[file_search_tool()], vector_store_ids=["vs_not_mine"]),
         (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await parley.assistants.create("bad", **bad)
        assert caught.value.code() in code, (bad, caught.value.details())
    await parley.assistants.delete(created.id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await parley.assistants.get(created.id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# ---- typed events ----------------------------------------------------------------------------


async def test_typed_events_come_in_the_order_assistants_clients_expect(e2e):
    e2e.fakes["openai"].script("e2e-order", {"text": "In order, please."})
    parley = await e2e.client("alice")
    assistant = await parley.assistants.create("order", model="openai/e2e-order")
    events = [event async for event in parley.assistants.stream_run(assistant.id, "Order?")]
    statuses = [e.status for e in events if isinstance(e, RunStatusChanged)]
    assert statuses[0] == RunStatus.QUEUED and RunStatus.IN_PROGRESS in statuses and statuses[-1] == \
        RunStatus.COMPLETED
    step_at = next(i for i, e in enumerate(events) if isinstance(e, StepCreated))
    first_delta = next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    message_at = next(i for i, e in enumerate(events) if isinstance(e, MessageCreated))
    assert step_at < first_delta < message_at  # the step before its deltas, the message once whole
    assert events[message_at].text == "In order, please."
    assert isinstance(events[-1], RunDone) and events[-1].usage.total_tokens > 0
    assert sequences(events) == list(range(1, len(events) + 1))


# ---- the stack -------------------------------------------------------------------------------


class E2E:
    """The end-to-end view of the shared assistants stack (tests/assistants/conftest.py): its
    fakes, a public client per user through its gateway (engine A), and more engine replicas,
    each behind a gateway of its own, for the tests that need another replica."""

    def __init__(self, stack, start_engine, identity_private_key: bytes) -> None:
        self.stack = stack
        self.fakes = stack.fakes
        self.gateway_port = stack.gateway_port
        self._start_engine = start_engine
        self._private_key = identity_private_key
        self._gateways: list = []
        self._clients: list[ParleyClient] = []
        self._replica_b: int | None = None

    async def secret(self, user: str) -> str:
        """An API key of `user` (suffixed per test run, so nothing stored by another run meets it)."""
        name = f"{user}-{RUN}"
        if name not in SECRETS:
            SECRETS[name] = await self.stack.api_key(name)
        return SECRETS[name]

    async def client(self, user: str, *, port: int | None = None) -> ParleyClient:
        client = ParleyClient(f"127.0.0.1:{port or self.gateway_port}", await self.secret(user), timeout=WAIT)
        self._clients.append(client)
        return client

    async def replica(self, name: str, **env):
        """Another engine process on the same backends, and the port of a gateway in front of it."""
        from services.gateway.jwt_auth import JwtSettings
        from tests.gateway.conftest import gateway_settings, start_gateway

        engine = await self._start_engine(name, **env)
        stack = self.stack
        gateway = await start_gateway(gateway_settings(stack.database_url, self._private_key, targets={
            "llm": f"127.0.0.1:{stack.llm_port}", "sessions": f"127.0.0.1:{stack.sessions_port}",
            "files": f"127.0.0.1:{stack.files_port}", "assistants": engine.target}, jwt=JwtSettings()))
        self._gateways.append(gateway)
        return engine, gateway.port

    async def gateway_on(self, port: int):
        """A gateway in front of the stack's engine on a given port (to stop and start again)."""
        from services.gateway.app import build_app
        from services.gateway.jwt_auth import JwtSettings
        from services.runtime.config import ServerSettings
        from services.runtime.server import start_server
        from tests.gateway.conftest import gateway_settings

        stack = self.stack
        app = await build_app(gateway_settings(stack.database_url, self._private_key, targets={
            "llm": f"127.0.0.1:{stack.llm_port}", "sessions": f"127.0.0.1:{stack.sessions_port}",
            "files": f"127.0.0.1:{stack.files_port}", "assistants": stack.engine.target}, jwt=JwtSettings()))
        gateway = await start_server(app, ServerSettings(service="gateway", host="127.0.0.1", port=port,
                                                         shutdown_grace=0.0, max_message_bytes=64 * 1024 * 1024,
                                                         identity_public_key=None), verifier=None)
        self._gateways.append(gateway)
        return gateway

    async def client_b(self, user: str) -> ParleyClient:
        """A client whose assistants calls reach replica B (started on first use)."""
        if self._replica_b is None:
            _, self._replica_b = await self.replica("b")
        return await self.client(user, port=self._replica_b)

    async def vector_store(self, parley: ParleyClient, name: str, file_ids: list[str]) -> str:
        """A vector store holding `file_ids`, once every one of them is searchable."""
        from parley.files.v1 import files_pb2
        from parley.files.v1 import files_service_pb2 as fapi

        stub = parley.files.stub
        store = await stub.CreateVectorStore(fapi.CreateVectorStoreRequest(name=name, file_ids=file_ids))

        async def ready():
            page = await stub.ListVectorStoreFiles(fapi.ListVectorStoreFilesRequest(vector_store_id=store.id))
            statuses = {f.id: f.status for f in page.files}
            assert files_pb2.VECTOR_STORE_FILE_STATUS_FAILED not in statuses.values(), page
            return len(statuses) == len(file_ids) and \
                set(statuses.values()) == {files_pb2.VECTOR_STORE_FILE_STATUS_COMPLETED}

        await wait_for(ready, "the uploaded files to be indexed", timeout=180)
        return store.id

    @staticmethod
    def cite(text: str, result_index: int) -> str:
        """Model text citing the `result_index`-th file_search result, in the engine's marker format."""
        return f"{text} 【{result_index}†source】"

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
        for gateway in self._gateways:
            await gateway.stop(0.5)


RUN = uuid.uuid4().hex[:8]
SECRETS: dict[str, str] = {}


@pytest.fixture
async def e2e(stack, start_engine, identity_private_key):
    view = E2E(stack, start_engine, identity_private_key)
    yield view
    await view.close()
