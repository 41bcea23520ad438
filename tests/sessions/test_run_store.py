"""RunStoreService, the run engine's storage, over real gRPC on a real PostgreSQL: CRUD and
pagination, the busy-session check and compare-and-set under concurrency, all-or-nothing
event appends, isolation between users, bad input, and row-level security on its tables."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import asyncpg
import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from parley.assistants.v1 import assistants_pb2 as apb
from parley.runstore.v1 import runstore_service_pb2 as rs
from parley.sessions.v1 import sessions_pb2 as spb
from parley.sessions.v1 import sessions_service_pb2 as sapi
from services.runtime.db import with_credentials
from services.runtime.pagination import encode_token
from services.sessions.app import ROLE
from services.sessions.models import SortOrder
from services.sessions.runstore.models import ASSISTANT_FIELDS, RUN_FIELDS, RUN_STEP_FIELDS
from tests.conftest import channel_to, expect_error, rich_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
ABORTED = grpc.StatusCode.ABORTED
BUSY = grpc.StatusCode.FAILED_PRECONDITION
NEW_TABLES = ("assistants", "runs", "run_steps", "run_events", "function_results")


def user() -> str:
    """A fresh user per test, so that tests sharing the server never see each other's rows."""
    return f"rs-{uuid.uuid4().hex[:12]}"


def stamp(value: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(value)
    return result


def full_assistant(**overrides) -> apb.Assistant:
    parameters = struct_pb2.Struct()
    parameters.update({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"answer": {"type": "string"}}})
    fields = dict(
        name="Weather bot",
        description="Answers about the weather",
        model="openai/gpt-4o-mini",
        instructions="Be brief.\nCite sources.",
        tools=[
            apb.Tool(code_interpreter=apb.CodeInterpreterTool()),
            apb.Tool(file_search=apb.FileSearchTool(
                max_num_results=5, ranking_options=apb.FileSearchRankingOptions(score_threshold=0.25))),
            apb.Tool(function=apb.FunctionTool(name="get_weather", description="Weather of a city",
                                               parameters=parameters, strict=True)),
        ],
        tool_resources=apb.ToolResources(
            code_interpreter=apb.CodeInterpreterResources(file_ids=["file-1", "file-2"]),
            file_search=apb.FileSearchResources(vector_store_ids=["vs-1"]),
        ),
        temperature=0.0,
        top_p=0.9,
        response_format=apb.ResponseFormat(
            type=apb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=apb.JsonSchemaFormat(name="answer", schema=schema)),
        metadata={"team": "weather", "tier": "gold"},
    )
    fields.update(overrides)
    return apb.Assistant(**fields)


def without_server_fields(message, *names):
    copy = type(message)()
    copy.CopyFrom(message)
    for name in ("id", "user_id", "create_time", "update_time", *names):
        copy.ClearField(name)
    return copy


def delta(sequence: int, text: str = "x", **fields) -> apb.RunEvent:
    return apb.RunEvent(sequence=sequence, message_delta=apb.MessageDelta(step_id="s", index=0, text=text), **fields)


class World:
    """One user's session and assistant, with helpers for runs on them."""

    def __init__(self, store, sessions, user_id: str, metadata, session: spb.Session, assistant: apb.Assistant) -> None:
        self.store, self.sessions, self.user_id, self.md = store, sessions, user_id, metadata
        self.session, self.assistant = session, assistant

    async def new_session(self) -> spb.Session:
        return await self.sessions.CreateSession(sapi.CreateSessionRequest(title="s"), metadata=self.md)

    def create_run(self, session_id: str | None = None, strategy=apb.BUSY_SESSION_STRATEGY_UNSPECIFIED, **fields):
        run = apb.Run(session_id=session_id or self.session.id, assistant_id=self.assistant.id, model="local/echo",
                      busy_session_strategy=strategy, **fields)
        return self.store.CreateRun(rs.CreateRunRequest(run=run), metadata=self.md)

    def update_run(self, run_id: str, paths, expected=(), events=(), **fields):
        return self.store.UpdateRun(
            rs.UpdateRunRequest(run=apb.Run(id=run_id, **fields), update_mask=FieldMask(paths=list(paths)),
                                expected_statuses=list(expected), events=list(events)),
            metadata=self.md,
        )

    def append(self, run_id: str, *events):
        request = rs.AppendRunEventsRequest(run_id=run_id, events=list(events))
        return self.store.AppendRunEvents(request, metadata=self.md)

    async def events(self, run_id: str, after: int = 0) -> list[apb.RunEvent]:
        found, token = [], ""
        while True:
            page = await self.store.ListRunEvents(
                rs.ListRunEventsRequest(run_id=run_id, after_sequence=after, page_size=1000, page_token=token),
                metadata=self.md)
            found += page.events
            token = page.next_page_token
            if not token:
                return found

    async def get_run(self, run_id: str) -> apb.Run:
        return await self.store.GetRun(rs.GetRunRequest(run_id=run_id), metadata=self.md)


@pytest.fixture
async def world(run_store_stub, sessions_stub, as_user) -> World:
    user_id = user()
    md = as_user(user_id)
    session = await sessions_stub.CreateSession(sapi.CreateSessionRequest(title="runs"), metadata=md)
    assistant = await run_store_stub.CreateAssistant(rs.CreateAssistantRequest(assistant=full_assistant()), metadata=md)
    return World(run_store_stub, sessions_stub, user_id, md, session, assistant)


# -- the service --------------------------------------------------------------------------


async def test_health_and_reflection_list_the_run_store(sessions_server):
    async with channel_to(sessions_server) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service="parley.runstore.v1.RunStoreService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = [s.name async for r in responses for s in r.list_services_response.service]
        assert {"parley.sessions.v1.SessionService", "parley.runstore.v1.RunStoreService"} <= set(services)


def test_writable_fields_are_the_contract_fields_minus_output_only():
    def names(message):
        return {f.name for f in message.DESCRIPTOR.fields}

    assert set(ASSISTANT_FIELDS) == names(apb.Assistant) - {"id", "user_id", "create_time", "update_time"}
    assert set(RUN_FIELDS) == names(apb.Run) - {"id", "user_id", "session_id", "assistant_id", "create_time",
                                               "last_sequence"}
    assert set(RUN_STEP_FIELDS) == names(apb.RunStep) - {"id", "run_id", "session_id", "assistant_id", "create_time"}


# -- assistants ---------------------------------------------------------------------------


async def test_assistant_round_trips_every_field(run_store_stub, as_user):
    user_id = user()
    md = as_user(user_id)
    sent = full_assistant(id="ignored", user_id="someone-else")
    created = await run_store_stub.CreateAssistant(rs.CreateAssistantRequest(assistant=sent), metadata=md)
    uuid.UUID(created.id)
    assert created.user_id == user_id
    assert created.create_time.ToDatetime() == created.update_time.ToDatetime()
    assert without_server_fields(created) == without_server_fields(sent)
    assert created.HasField("temperature") and created.temperature == 0.0  # set to zero is not unset
    fetched = await run_store_stub.GetAssistant(rs.GetAssistantRequest(assistant_id=created.id), metadata=md)
    assert fetched == created


async def test_assistant_update_with_mask_and_without(run_store_stub, as_user):
    md = as_user(user())
    created = await run_store_stub.CreateAssistant(rs.CreateAssistantRequest(assistant=full_assistant()), metadata=md)

    # Named by the mask: written, including the unset temperature (cleared) and the lists.
    patch = apb.Assistant(id=created.id, name="Renamed", tools=[], description="ignored: not in the mask")
    updated = await run_store_stub.UpdateAssistant(
        rs.UpdateAssistantRequest(assistant=patch, update_mask=FieldMask(paths=["name", "temperature", "tools"])),
        metadata=md)
    assert updated.name == "Renamed" and not updated.HasField("temperature") and list(updated.tools) == []
    assert updated.description == created.description and updated.model == created.model
    assert updated.metadata == created.metadata and updated.tool_resources == created.tool_resources
    assert updated.create_time == created.create_time
    assert updated.update_time.ToDatetime() > created.update_time.ToDatetime()

    # Without a mask, the populated fields are written and nothing else.
    again = await run_store_stub.UpdateAssistant(
        rs.UpdateAssistantRequest(assistant=apb.Assistant(id=created.id, metadata={"only": "this"}, top_p=0.5)),
        metadata=md)
    assert dict(again.metadata) == {"only": "this"} and again.top_p == 0.5 and again.name == "Renamed"
    assert await run_store_stub.GetAssistant(rs.GetAssistantRequest(assistant_id=created.id), metadata=md) == again


async def test_assistants_list_newest_first_in_pages_and_delete(run_store_stub, as_user):
    md = as_user(user())
    created = []
    for i in range(5):
        created.append(await run_store_stub.CreateAssistant(
            rs.CreateAssistantRequest(assistant=apb.Assistant(model="local/echo", name=f"a{i}")), metadata=md))
    pages, token = [], ""
    while True:
        page = await run_store_stub.ListAssistants(rs.ListAssistantsRequest(page_size=2, page_token=token), metadata=md)
        pages.append([a.name for a in page.assistants])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["a4", "a3"], ["a2", "a1"], ["a0"]]

    await run_store_stub.DeleteAssistant(rs.DeleteAssistantRequest(assistant_id=created[2].id), metadata=md)
    reason, _ = await expect_error(
        run_store_stub.GetAssistant(rs.GetAssistantRequest(assistant_id=created[2].id), metadata=md), NOT_FOUND)
    assert reason == "ASSISTANT_NOT_FOUND"
    await expect_error(
        run_store_stub.DeleteAssistant(rs.DeleteAssistantRequest(assistant_id=created[2].id), metadata=md), NOT_FOUND)
    listed = await run_store_stub.ListAssistants(rs.ListAssistantsRequest(page_size=100), metadata=md)
    assert [a.name for a in listed.assistants] == ["a4", "a3", "a1", "a0"] and not listed.next_page_token


# -- runs ---------------------------------------------------------------------------------


async def test_run_create_get_and_list(world):
    expire = datetime.now(timezone.utc).replace(microsecond=123456) + timedelta(minutes=10)
    first = await world.create_run(
        instructions="Be brief.", tools=[apb.Tool(code_interpreter=apb.CodeInterpreterTool())],
        tool_choice=apb.ToolChoice(type=apb.TOOL_CHOICE_TYPE_FUNCTION, function_name="f"),
        truncation_strategy=apb.TruncationStrategy(type=apb.TRUNCATION_TYPE_LAST_MESSAGES, last_messages=3),
        max_prompt_tokens=1000, parallel_tool_calls=True, metadata={"k": "v"}, expire_time=stamp(expire),
        id="ignored", last_sequence=99, status=apb.RUN_STATUS_QUEUED,
    )
    uuid.UUID(first.id)
    assert (first.session_id, first.assistant_id) == (world.session.id, world.assistant.id)
    assert first.user_id == world.user_id
    assert first.status == apb.RUN_STATUS_QUEUED and first.last_sequence == 0
    assert first.busy_session_strategy == apb.BUSY_SESSION_STRATEGY_QUEUE  # unspecified means queue
    assert first.expire_time.ToDatetime(tzinfo=timezone.utc) == expire
    assert first.tool_choice.function_name == "f" and first.truncation_strategy.last_messages == 3
    assert first.max_prompt_tokens == 1000 and first.parallel_tool_calls and dict(first.metadata) == {"k": "v"}
    assert await world.get_run(first.id) == first

    await world.update_run(first.id, ["status"], status=apb.RUN_STATUS_COMPLETED)
    second = await world.create_run()
    third = await world.create_run(strategy=apb.BUSY_SESSION_STRATEGY_QUEUE)

    async def listing(**request) -> list[list[str]]:
        pages, token = [], ""
        while True:
            page = await world.store.ListRuns(
                rs.ListRunsRequest(session_id=world.session.id, page_size=2, page_token=token, **request),
                metadata=world.md)
            pages.append([r.id for r in page.runs])
            token = page.next_page_token
            if not token:
                return pages

    assert await listing() == [[third.id, second.id], [first.id]]
    assert await listing(order=sapi.SORT_ORDER_ASCENDING) == [[first.id, second.id], [third.id]]
    assert await listing(statuses=[apb.RUN_STATUS_QUEUED]) == [[third.id, second.id]]
    assert await listing(statuses=[apb.RUN_STATUS_COMPLETED, apb.RUN_STATUS_FAILED]) == [[first.id]]
    other = await world.new_session()
    empty = await world.store.ListRuns(rs.ListRunsRequest(session_id=other.id), metadata=world.md)
    assert list(empty.runs) == [] and not empty.next_page_token


async def test_reject_on_a_busy_session_and_the_active_run(world):
    active = await world.store.GetActiveRun(rs.GetActiveRunRequest(session_id=world.session.id), metadata=world.md)
    assert not active.HasField("run")
    first = await world.create_run(strategy=apb.BUSY_SESSION_STRATEGY_REJECT)
    reason, _ = await expect_error(world.create_run(strategy=apb.BUSY_SESSION_STRATEGY_REJECT), BUSY)
    assert reason == "SESSION_BUSY"
    queued = await world.create_run()  # unspecified means queue
    assert queued.busy_session_strategy == apb.BUSY_SESSION_STRATEGY_QUEUE
    cancelling = await world.create_run(strategy=apb.BUSY_SESSION_STRATEGY_CANCEL_ACTIVE)
    runs = await world.store.ListRuns(rs.ListRunsRequest(session_id=world.session.id), metadata=world.md)
    assert [r.id for r in runs.runs] == [cancelling.id, queued.id, first.id]  # the rejected ones stored nothing

    async def active_id() -> str:
        request = rs.GetActiveRunRequest(session_id=world.session.id)
        response = await world.store.GetActiveRun(request, metadata=world.md)
        return response.run.id

    assert await active_id() == first.id  # the oldest run that has not ended
    await world.update_run(first.id, ["status"], status=apb.RUN_STATUS_CANCELLED)
    assert await active_id() == queued.id
    await expect_error(world.create_run(strategy=apb.BUSY_SESSION_STRATEGY_REJECT), BUSY)
    await world.update_run(queued.id, ["status"], status=apb.RUN_STATUS_COMPLETED)
    await world.update_run(cancelling.id, ["status"], status=apb.RUN_STATUS_EXPIRED)
    assert await active_id() == ""
    assert (await world.create_run()).status == apb.RUN_STATUS_QUEUED


async def test_concurrent_reject_creates_exactly_one_wins(world):
    for _ in range(3):  # a few rounds, each on a fresh session
        session = await world.new_session()
        results = await asyncio.gather(
            *[world.create_run(session.id, strategy=apb.BUSY_SESSION_STRATEGY_REJECT) for _ in range(8)],
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, apb.Run)]
        lost = [r for r in results if not isinstance(r, apb.Run)]
        assert len(won) == 1, results
        assert all(rich_error(e)[:2] == (BUSY, "SESSION_BUSY") for e in lost), lost
        runs = await world.store.ListRuns(rs.ListRunsRequest(session_id=session.id), metadata=world.md)
        assert [r.id for r in runs.runs] == [won[0].id]


async def test_runs_need_an_open_visible_session_and_an_existing_assistant(world):
    reason, _ = await expect_error(world.create_run(str(uuid.uuid4())), NOT_FOUND)
    assert reason == "SESSION_NOT_FOUND"
    missing = apb.Run(session_id=world.session.id, assistant_id=str(uuid.uuid4()))
    reason, _ = await expect_error(
        world.store.CreateRun(rs.CreateRunRequest(run=missing), metadata=world.md), NOT_FOUND)
    assert reason == "ASSISTANT_NOT_FOUND"
    closed = await world.new_session()
    await world.sessions.UpdateSession(
        sapi.UpdateSessionRequest(session=spb.Session(id=closed.id, status=spb.SESSION_STATUS_CLOSED),
                                  update_mask=FieldMask(paths=["status"])), metadata=world.md)
    reason, _ = await expect_error(world.create_run(closed.id), BUSY)
    assert reason == "SESSION_CLOSED"


async def test_deleting_the_assistant_keeps_runs_and_deleting_the_session_removes_them(world):
    session = await world.new_session()
    run = await world.create_run(session.id)
    step = await world.store.CreateRunStep(rs.CreateRunStepRequest(run_step=apb.RunStep(
        run_id=run.id, type=apb.RUN_STEP_TYPE_MESSAGE_CREATION)), metadata=world.md)
    await world.append(run.id, delta(1))
    await world.store.DeleteAssistant(rs.DeleteAssistantRequest(assistant_id=world.assistant.id), metadata=world.md)
    assert (await world.get_run(run.id)).assistant_id == world.assistant.id
    await world.sessions.DeleteSession(sapi.DeleteSessionRequest(session_id=session.id), metadata=world.md)
    await expect_error(world.get_run(run.id), NOT_FOUND)
    await expect_error(
        world.store.ListRunSteps(rs.ListRunStepsRequest(run_id=step.run_id), metadata=world.md), NOT_FOUND)
    await expect_error(world.store.ListRunEvents(rs.ListRunEventsRequest(run_id=run.id), metadata=world.md), NOT_FOUND)


# -- compare-and-set updates --------------------------------------------------------------


async def test_update_run_compare_and_set(world):
    run = await world.create_run()
    started = datetime.now(timezone.utc).replace(microsecond=0)
    claimed = await world.update_run(
        run.id, ["status", "start_time"], expected=[apb.RUN_STATUS_QUEUED],
        status=apb.RUN_STATUS_IN_PROGRESS, start_time=stamp(started), model="ignored: not in the mask",
    )
    assert claimed.status == apb.RUN_STATUS_IN_PROGRESS
    assert claimed.start_time.ToDatetime(tzinfo=timezone.utc) == started
    assert claimed.model == "local/echo"

    # A second claim loses, and writes nothing: neither fields nor events.
    reason, _ = await expect_error(
        world.update_run(run.id, ["status", "metadata"], expected=[apb.RUN_STATUS_QUEUED], events=[delta(1)],
                         status=apb.RUN_STATUS_FAILED, metadata={"lost": "yes"}),
        ABORTED)
    assert reason == "RUN_STATUS_CONFLICT"
    assert await world.get_run(run.id) == claimed
    assert await world.events(run.id) == []

    # Several allowed statuses; a status change stored with its event, together.
    snapshot = apb.Run()
    snapshot.CopyFrom(claimed)
    snapshot.status = apb.RUN_STATUS_REQUIRES_ACTION
    action = apb.RequiredAction(submit_tool_outputs=apb.SubmitToolOutputsAction(
        tool_calls=[spb.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')]))
    waiting = await world.update_run(
        run.id, ["status", "required_action"], expected=[apb.RUN_STATUS_QUEUED, apb.RUN_STATUS_IN_PROGRESS],
        events=[apb.RunEvent(sequence=1, run_status_changed=snapshot)],
        status=apb.RUN_STATUS_REQUIRES_ACTION, required_action=action,
    )
    assert waiting.status == apb.RUN_STATUS_REQUIRES_ACTION and waiting.required_action == action
    assert waiting.last_sequence == 1
    [event] = await world.events(run.id)
    assert event.run_status_changed == snapshot and event.run_id == run.id

    # An event that does not follow the log fails the whole update.
    reason, _ = await expect_error(
        world.update_run(run.id, ["status"], events=[delta(3)], status=apb.RUN_STATUS_IN_PROGRESS), ABORTED)
    assert reason == "RUN_EVENT_SEQUENCE_CONFLICT"
    assert await world.get_run(run.id) == waiting

    # Unset in the request but named by the mask: cleared.
    cleared = await world.update_run(run.id, ["required_action", "status"], status=apb.RUN_STATUS_IN_PROGRESS)
    assert not cleared.HasField("required_action") and cleared.status == apb.RUN_STATUS_IN_PROGRESS


async def test_concurrent_claims_exactly_one_wins(world):
    session = await world.new_session()
    run = await world.create_run(session.id)
    results = await asyncio.gather(
        *[world.update_run(run.id, ["status", "metadata"], expected=[apb.RUN_STATUS_QUEUED], events=[delta(1, f"r{i}")],
                           status=apb.RUN_STATUS_IN_PROGRESS, metadata={"replica": str(i)})
          for i in range(8)],
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, apb.Run)]
    assert len(won) == 1, results
    assert all(rich_error(e)[:2] == (ABORTED, "RUN_STATUS_CONFLICT") for e in results if not isinstance(e, apb.Run))
    stored = await world.get_run(run.id)
    assert stored == won[0]
    [event] = await world.events(run.id)
    assert event.message_delta.text == "r" + stored.metadata["replica"]


# -- event logs ---------------------------------------------------------------------------


async def test_append_consecutive_events_and_refuse_gaps_and_duplicates(world):
    run = await world.create_run((await world.new_session()).id)
    given = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    assert (await world.append(run.id, delta(1, "a", create_time=stamp(given)), delta(2, "b"), delta(3, "c",
                               run_id=run.id))).last_sequence == 3
    assert (await world.append(run.id, delta(4, "d"))).last_sequence == 4

    for bad in ([delta(6)], [delta(4)], [delta(1)], [delta(5), delta(7)], [delta(5), delta(5)], [delta(6), delta(5)]):
        reason, _ = await expect_error(world.append(run.id, *bad), ABORTED)
        assert reason == "RUN_EVENT_SEQUENCE_CONFLICT", bad

    events = await world.events(run.id)
    assert [(e.sequence, e.message_delta.text) for e in events] == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
    assert all(e.run_id == run.id for e in events)
    assert events[0].create_time.ToDatetime(tzinfo=timezone.utc) == given
    assert events[1].create_time.ToDatetime(tzinfo=timezone.utc) > given  # unset: the time of storing
    assert (await world.get_run(run.id)).last_sequence == 4


async def test_concurrent_appenders_exactly_one_wins(world):
    run = await world.create_run((await world.new_session()).id)
    await world.append(run.id, delta(1, "start"))
    results = await asyncio.gather(
        *[world.append(run.id, delta(2, f"w{i}"), delta(3, f"w{i}")) for i in range(8)], return_exceptions=True
    )
    won = [i for i, r in enumerate(results) if isinstance(r, rs.AppendRunEventsResponse)]
    assert len(won) == 1, results
    assert all(rich_error(r)[:2] == (ABORTED, "RUN_EVENT_SEQUENCE_CONFLICT")
               for r in results if not isinstance(r, rs.AppendRunEventsResponse))
    events = await world.events(run.id)
    assert [(e.sequence, e.message_delta.text) for e in events] == [(1, "start"), (2, f"w{won[0]}"), (3, f"w{won[0]}")]
    assert (await world.get_run(run.id)).last_sequence == 3


async def test_list_events_after_a_sequence_in_pages(world):
    run = await world.create_run((await world.new_session()).id)
    kinds = [
        apb.RunEvent(step_created=apb.RunStep(id="st", type=apb.RUN_STEP_TYPE_TOOL_CALLS)),
        apb.RunEvent(tool_call_delta=apb.ToolCallDelta(step_id="st", index=0, id="c1",
                                                       type=apb.TOOL_CALL_TYPE_FUNCTION, name="f", arguments='{"a"')),
        apb.RunEvent(error=apb.RunError(code=apb.RUN_ERROR_CODE_MODEL_ERROR, message="vendor down")),
        apb.RunEvent(done=apb.RunDone(status=apb.RUN_STATUS_FAILED, usage=apb.Usage(
            prompt_tokens=2**40, completion_tokens=3, total_tokens=2**40 + 3, cost_usd=0.5))),
    ]
    batch = []
    for sequence in range(1, 26):
        event = kinds[sequence % len(kinds)] if sequence % 5 == 0 else delta(sequence, f"t{sequence}")
        copy = apb.RunEvent()
        copy.CopyFrom(event)
        copy.sequence = sequence
        batch.append(copy)
    await world.append(run.id, *batch[:20])
    await world.append(run.id, *batch[20:])

    pages, token = [], ""
    while True:
        page = await world.store.ListRunEvents(
            rs.ListRunEventsRequest(run_id=run.id, after_sequence=10, page_size=6, page_token=token), metadata=world.md)
        pages.append([e.sequence for e in page.events])
        token = page.next_page_token
        if not token:
            break
        if len(pages) == 1:  # a token belongs to its listing: same run, same after_sequence
            other = rs.ListRunEventsRequest(run_id=run.id, after_sequence=11, page_token=token)
            _, fields = await expect_error(world.store.ListRunEvents(other, metadata=world.md), INVALID)
            assert fields == ["page_token"]
    assert pages == [[11, 12, 13, 14, 15, 16], [17, 18, 19, 20, 21, 22], [23, 24, 25]]

    stored = await world.events(run.id)
    for sent, got in zip(batch, stored):
        assert without_event_envelope(got) == without_event_envelope(sent)
    assert await world.events(run.id, after=25) == []
    default = await world.store.ListRunEvents(rs.ListRunEventsRequest(run_id=run.id), metadata=world.md)
    assert [e.sequence for e in default.events] == list(range(1, 26)) and not default.next_page_token


def without_event_envelope(event: apb.RunEvent) -> apb.RunEvent:
    copy = apb.RunEvent()
    copy.CopyFrom(event)
    for name in ("run_id", "create_time"):
        copy.ClearField(name)
    return copy


# -- run steps ----------------------------------------------------------------------------


async def test_steps_create_update_and_list(world):
    run = await world.create_run((await world.new_session()).id)
    message_step = await world.store.CreateRunStep(rs.CreateRunStepRequest(run_step=apb.RunStep(
        run_id=run.id, type=apb.RUN_STEP_TYPE_MESSAGE_CREATION, session_id="ignored", id="ignored",
        message_creation=apb.MessageCreationDetails())), metadata=world.md)
    assert (message_step.session_id, message_step.assistant_id) == (run.session_id, run.assistant_id)
    assert message_step.status == apb.RUN_STEP_STATUS_IN_PROGRESS and message_step.HasField("message_creation")
    uuid.UUID(message_step.id)

    tool_step = await world.store.CreateRunStep(rs.CreateRunStepRequest(run_step=apb.RunStep(
        run_id=run.id, type=apb.RUN_STEP_TYPE_TOOL_CALLS, tool_calls=apb.ToolCallsDetails(tool_calls=[
            apb.ToolCallDetail(id="c1", function=apb.FunctionCall(name="get_weather", arguments="{}"))]))),
        metadata=world.md)
    third = await world.store.CreateRunStep(rs.CreateRunStepRequest(run_step=apb.RunStep(
        run_id=run.id, type=apb.RUN_STEP_TYPE_MESSAGE_CREATION)), metadata=world.md)

    done = datetime(2026, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    details = apb.ToolCallsDetails(tool_calls=[
        apb.ToolCallDetail(id="c1", function=apb.FunctionCall(name="get_weather", arguments="{}", output="sunny")),
        apb.ToolCallDetail(id="c2", file_search=apb.FileSearchCall(query="q", results=[apb.FileSearchResult(
            file_id="f", filename="a.pdf", score=0.75, text="chunk", page=3)])),
    ])
    updated = await world.store.UpdateRunStep(rs.UpdateRunStepRequest(
        run_step=apb.RunStep(id=tool_step.id, status=apb.RUN_STEP_STATUS_COMPLETED, tool_calls=details,
                             complete_time=stamp(done), usage=apb.Usage(prompt_tokens=5)),
        update_mask=FieldMask(paths=["status", "tool_calls", "complete_time", "usage"])), metadata=world.md)
    assert updated.status == apb.RUN_STEP_STATUS_COMPLETED and updated.tool_calls == details
    assert updated.complete_time.ToDatetime(tzinfo=timezone.utc) == done and updated.usage.prompt_tokens == 5
    assert updated.type == apb.RUN_STEP_TYPE_TOOL_CALLS and updated.create_time == tool_step.create_time

    # Details of the other kind than the step's type: refused, and nothing changes.
    _, fields = await expect_error(world.store.UpdateRunStep(rs.UpdateRunStepRequest(
        run_step=apb.RunStep(id=tool_step.id, message_creation=apb.MessageCreationDetails(message_id="m")),
        update_mask=FieldMask(paths=["message_creation"])), metadata=world.md), INVALID)
    assert fields == ["run_step.message_creation"]

    pages, token = [], ""
    while True:
        page = await world.store.ListRunSteps(
            rs.ListRunStepsRequest(run_id=run.id, page_size=2, page_token=token), metadata=world.md)
        pages.append(list(page.run_steps))
        token = page.next_page_token
        if not token:
            break
    assert [[s.id for s in p] for p in pages] == [[message_step.id, tool_step.id], [third.id]]
    assert pages[0][1] == updated

    reason, _ = await expect_error(world.store.UpdateRunStep(rs.UpdateRunStepRequest(
        run_step=apb.RunStep(id=str(uuid.uuid4()), status=apb.RUN_STEP_STATUS_FAILED),
        update_mask=FieldMask(paths=["status"])), metadata=world.md), NOT_FOUND)
    assert reason == "RUN_STEP_NOT_FOUND"
    reason, _ = await expect_error(world.store.CreateRunStep(rs.CreateRunStepRequest(run_step=apb.RunStep(
        run_id=str(uuid.uuid4()), type=apb.RUN_STEP_TYPE_TOOL_CALLS)), metadata=world.md), NOT_FOUND)
    assert reason == "RUN_NOT_FOUND"


# -- isolation ----------------------------------------------------------------------------


def calls_on(store, *, assistant_id, session_id, run_id, step_id, own_assistant_id, own_session_id):
    """Every RPC that names an assistant, session, run or step, as name → awaitable factory."""
    return {
        "GetAssistant": lambda md: store.GetAssistant(rs.GetAssistantRequest(assistant_id=assistant_id), metadata=md),
        "UpdateAssistant": lambda md: store.UpdateAssistant(rs.UpdateAssistantRequest(
            assistant=apb.Assistant(id=assistant_id, name="x"), update_mask=FieldMask(paths=["name"])), metadata=md),
        "DeleteAssistant": lambda md: store.DeleteAssistant(rs.DeleteAssistantRequest(assistant_id=assistant_id),
                                                            metadata=md),
        "CreateRun(session)": lambda md: store.CreateRun(rs.CreateRunRequest(run=apb.Run(
            session_id=session_id, assistant_id=own_assistant_id)), metadata=md),
        "CreateRun(assistant)": lambda md: store.CreateRun(rs.CreateRunRequest(run=apb.Run(
            session_id=own_session_id, assistant_id=assistant_id,
            busy_session_strategy=apb.BUSY_SESSION_STRATEGY_QUEUE)), metadata=md),
        "ListRuns": lambda md: store.ListRuns(rs.ListRunsRequest(session_id=session_id), metadata=md),
        "GetActiveRun": lambda md: store.GetActiveRun(rs.GetActiveRunRequest(session_id=session_id), metadata=md),
        "GetRun": lambda md: store.GetRun(rs.GetRunRequest(run_id=run_id), metadata=md),
        "UpdateRun": lambda md: store.UpdateRun(rs.UpdateRunRequest(
            run=apb.Run(id=run_id, status=apb.RUN_STATUS_CANCELLING), update_mask=FieldMask(paths=["status"])),
            metadata=md),
        "CreateRunStep": lambda md: store.CreateRunStep(rs.CreateRunStepRequest(run_step=apb.RunStep(
            run_id=run_id, type=apb.RUN_STEP_TYPE_MESSAGE_CREATION)), metadata=md),
        "UpdateRunStep": lambda md: store.UpdateRunStep(rs.UpdateRunStepRequest(
            run_step=apb.RunStep(id=step_id, status=apb.RUN_STEP_STATUS_FAILED),
            update_mask=FieldMask(paths=["status"])),
            metadata=md),
        "ListRunSteps": lambda md: store.ListRunSteps(rs.ListRunStepsRequest(run_id=run_id), metadata=md),
        "AppendRunEvents": lambda md: store.AppendRunEvents(
            rs.AppendRunEventsRequest(run_id=run_id, events=[delta(2)]), metadata=md),
        "ListRunEvents": lambda md: store.ListRunEvents(rs.ListRunEventsRequest(run_id=run_id), metadata=md),
    }


async def test_other_users_resources_look_exactly_like_missing_ones(world, run_store_stub, sessions_stub, as_user):
    owner = world
    run = await owner.create_run((await owner.new_session()).id)
    step = await owner.store.CreateRunStep(rs.CreateRunStepRequest(run_step=apb.RunStep(
        run_id=run.id, type=apb.RUN_STEP_TYPE_MESSAGE_CREATION)), metadata=owner.md)
    await owner.append(run.id, delta(1, "secret"))
    run = await owner.get_run(run.id)

    intruder = as_user(user())
    own_session = await sessions_stub.CreateSession(sapi.CreateSessionRequest(), metadata=intruder)
    own_assistant = await run_store_stub.CreateAssistant(
        rs.CreateAssistantRequest(assistant=apb.Assistant(model="local/echo")), metadata=intruder)
    own = dict(own_assistant_id=own_assistant.id, own_session_id=own_session.id)
    theirs = calls_on(run_store_stub, assistant_id=owner.assistant.id, session_id=run.session_id, run_id=run.id,
                      step_id=step.id, **own)
    missing = calls_on(run_store_stub, assistant_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()),
                       run_id=str(uuid.uuid4()), step_id=str(uuid.uuid4()), **own)
    for name in theirs:
        with pytest.raises(grpc.aio.AioRpcError) as on_theirs:
            await theirs[name](intruder)
        with pytest.raises(grpc.aio.AioRpcError) as on_missing:
            await missing[name](intruder)
        code_theirs, reason_theirs, _ = rich_error(on_theirs.value)
        assert code_theirs == NOT_FOUND, name
        assert (code_theirs, reason_theirs) == rich_error(on_missing.value)[:2], name

    listed = await run_store_stub.ListAssistants(rs.ListAssistantsRequest(), metadata=intruder)
    assert [a.id for a in listed.assistants] == [own_assistant.id]
    # And the owner's data is untouched by all of that.
    assert await owner.get_run(run.id) == run
    assert (await run_store_stub.GetAssistant(
        rs.GetAssistantRequest(assistant_id=owner.assistant.id), metadata=owner.md)) == owner.assistant
    steps = await run_store_stub.ListRunSteps(rs.ListRunStepsRequest(run_id=run.id), metadata=owner.md)
    assert list(steps.run_steps) == [step]
    assert [e.message_delta.text for e in await owner.events(run.id)] == ["secret"]


# -- bad input ----------------------------------------------------------------------------


async def test_malformed_ids_name_their_field(world):
    s, md = world.store, world.md
    for bad in ["", "nope", "' OR 1=1 --", "0" * 36]:
        cases = [
            (s.GetAssistant(rs.GetAssistantRequest(assistant_id=bad), metadata=md), ["assistant_id"]),
            (s.DeleteAssistant(rs.DeleteAssistantRequest(assistant_id=bad), metadata=md), ["assistant_id"]),
            (s.UpdateAssistant(rs.UpdateAssistantRequest(assistant=apb.Assistant(id=bad, name="n")), metadata=md),
             ["assistant.id"]),
            (s.GetRun(rs.GetRunRequest(run_id=bad), metadata=md), ["run_id"]),
            (s.ListRuns(rs.ListRunsRequest(session_id=bad), metadata=md), ["session_id"]),
            (s.GetActiveRun(rs.GetActiveRunRequest(session_id=bad), metadata=md), ["session_id"]),
            (s.CreateRun(rs.CreateRunRequest(run=apb.Run(session_id=bad, assistant_id=bad)), metadata=md),
             ["run.session_id", "run.assistant_id"]),
            (world.update_run(bad, ["status"], status=apb.RUN_STATUS_FAILED), ["run.id"]),
            (s.CreateRunStep(rs.CreateRunStepRequest(run_step=apb.RunStep(
                run_id=bad, type=apb.RUN_STEP_TYPE_TOOL_CALLS)), metadata=md), ["run_step.run_id"]),
            (s.UpdateRunStep(rs.UpdateRunStepRequest(run_step=apb.RunStep(id=bad, status=1)), metadata=md),
             ["run_step.id"]),
            (s.ListRunSteps(rs.ListRunStepsRequest(run_id=bad), metadata=md), ["run_id"]),
            (s.AppendRunEvents(rs.AppendRunEventsRequest(run_id=bad, events=[delta(1)]), metadata=md), ["run_id"]),
            (s.ListRunEvents(rs.ListRunEventsRequest(run_id=bad), metadata=md), ["run_id"]),
        ]
        for call, expected in cases:
            _, fields = await expect_error(call, INVALID)
            assert fields == expected, (bad, expected)


async def test_bad_resources_name_their_fields_and_store_nothing(world):
    s, md = world.store, world.md
    before = await s.ListAssistants(rs.ListAssistantsRequest(page_size=100), metadata=md)
    too_much = {f"k{i}": "v" for i in range(17)}
    _, fields = await expect_error(s.CreateAssistant(rs.CreateAssistantRequest(assistant=apb.Assistant(
        name="x" * 257, instructions="ok", temperature=2.5, top_p=-0.1, metadata=too_much)), metadata=md), INVALID)
    assert set(fields) == {"assistant.name", "assistant.model", "assistant.temperature", "assistant.top_p",
                           "assistant.metadata"}
    _, fields = await expect_error(s.CreateAssistant(rs.CreateAssistantRequest(assistant=apb.Assistant(
        model="m", tools=[apb.Tool(code_interpreter=apb.CodeInterpreterTool())] * 129)), metadata=md), INVALID)
    assert fields == ["assistant.tools"]
    after = await s.ListAssistants(rs.ListAssistantsRequest(page_size=100), metadata=md)
    assert after == before

    aid = world.assistant.id
    for mask, patch, expected in [
        (["name", "nonsense"], apb.Assistant(name="n"), ["update_mask"]),
        (["tools.function"], apb.Assistant(), ["update_mask"]),
        (["id"], apb.Assistant(), ["update_mask"]),
        (["model"], apb.Assistant(), ["assistant.model"]),  # named but unset: would clear a required field
        ([], apb.Assistant(), ["update_mask"]),  # nothing to write
    ]:
        patch.id = aid
        _, fields = await expect_error(s.UpdateAssistant(
            rs.UpdateAssistantRequest(assistant=patch, update_mask=FieldMask(paths=mask)), metadata=md), INVALID)
        assert fields == expected, mask
    assert await s.GetAssistant(rs.GetAssistantRequest(assistant_id=aid), metadata=md) == world.assistant

    session = (await world.new_session()).id
    for run, expected in [
        (apb.Run(session_id=session, assistant_id=aid, status=apb.RUN_STATUS_IN_PROGRESS), ["run.status"]),
        (apb.Run(session_id=session, assistant_id=aid, busy_session_strategy=7), ["run.busy_session_strategy"]),
        (apb.Run(session_id=session, assistant_id=aid, metadata=too_much), ["run.metadata"]),
    ]:
        _, fields = await expect_error(s.CreateRun(rs.CreateRunRequest(run=run), metadata=md), INVALID)
        assert fields == expected
    assert list((await s.ListRuns(rs.ListRunsRequest(session_id=session), metadata=md)).runs) == []

    run = await world.create_run(session)
    for call, expected in [
        (world.update_run(run.id, ["session_id"], session_id=str(uuid.uuid4())), ["update_mask"]),
        (world.update_run(run.id, ["last_sequence"], last_sequence=5), ["update_mask"]),
        (world.update_run(run.id, ["status"]), ["run.status"]),
        (world.update_run(run.id, ["status"], status=42), ["run.status"]),
        (world.update_run(run.id, ["metadata"], metadata=too_much), ["run.metadata"]),
        # 99 is no RunStatus: the shared request check refuses it, by element, before the run store looks.
        (world.update_run(run.id, ["model"], expected=[0, 99], model="m"), ["expected_statuses[1]"]),
        (world.update_run(run.id, ["model"], events=[delta(0)], model="m"), ["events[0].sequence"]),
        (world.update_run(run.id, []), ["update_mask"]),
        (s.ListRuns(rs.ListRunsRequest(session_id=session, statuses=[0]), metadata=md), ["statuses"]),
        (s.ListRuns(rs.ListRunsRequest(session_id=session, order=9), metadata=md), ["order"]),
        (world.append(run.id), ["events"]),
        (world.append(run.id, apb.RunEvent(sequence=1)), ["events[0]"]),
        (world.append(run.id, delta(1, run_id=str(uuid.uuid4()))), ["events[0].run_id"]),
        (world.append(run.id, delta(1), delta(-2)), ["events[1].sequence"]),
        (world.append(run.id, *[delta(i) for i in range(1, 1002)]), ["events"]),
        (s.ListRunEvents(rs.ListRunEventsRequest(run_id=run.id, after_sequence=-1), metadata=md), ["after_sequence"]),
        (s.CreateRunStep(rs.CreateRunStepRequest(run_step=apb.RunStep(run_id=run.id)), metadata=md), ["run_step.type"]),
        (s.CreateRunStep(rs.CreateRunStepRequest(run_step=apb.RunStep(
            run_id=run.id, type=apb.RUN_STEP_TYPE_MESSAGE_CREATION, status=17)), metadata=md), ["run_step.status"]),
        (s.CreateRunStep(rs.CreateRunStepRequest(run_step=apb.RunStep(
            run_id=run.id, type=apb.RUN_STEP_TYPE_MESSAGE_CREATION, tool_calls=apb.ToolCallsDetails())), metadata=md),
         ["run_step.tool_calls"]),
    ]:
        _, fields = await expect_error(call, INVALID)
        assert fields == expected, expected
    assert await world.get_run(run.id) == run
    assert await world.events(run.id) == []
    assert list((await s.ListRunSteps(rs.ListRunStepsRequest(run_id=run.id), metadata=md)).run_steps) == []


async def test_values_postgres_or_protobuf_json_cannot_hold_are_refused_by_field(world):
    s, md = world.store, world.md
    nul_tool = apb.Tool(function=apb.FunctionTool(name="f", description="a\x00b"))
    _, fields = await expect_error(s.CreateAssistant(rs.CreateAssistantRequest(
        assistant=apb.Assistant(model="m", tools=[nul_tool])), metadata=md), INVALID)
    assert fields == ["assistant.tools[0].function.description"]
    bad_time = Timestamp(seconds=2**40)
    _, fields = await expect_error(world.create_run(expire_time=bad_time), INVALID)
    assert fields == ["run.expire_time"]
    run = await world.create_run((await world.new_session()).id)
    for events, expected in [
        ([delta(1, "a\x00b")], ["events[0].message_delta.text"]),
        ([delta(1), delta(2, create_time=Timestamp(seconds=1, nanos=-1))], ["events[1].create_time"]),
        ([apb.RunEvent(sequence=1, done=apb.RunDone(usage=apb.Usage(cost_usd=float("nan"))))], []),
    ]:
        if not expected:  # NaN is valid protobuf JSON ("NaN") and jsonb stores it as a string
            await world.append(run.id, *events)
            [stored] = await world.events(run.id)
            assert stored.done.usage.cost_usd != stored.done.usage.cost_usd
            continue
        _, fields = await expect_error(world.append(run.id, *events), INVALID)
        assert fields == expected
    nul_error = apb.RunError(message="x\x00")
    _, fields = await expect_error(
        world.update_run(run.id, ["status", "last_error"], status=apb.RUN_STATUS_FAILED, last_error=nul_error), INVALID)
    assert fields == ["run.last_error.message"]
    # Not named by the mask: neither stored nor checked.
    failed = await world.update_run(run.id, ["status"], status=apb.RUN_STATUS_FAILED, last_error=nul_error)
    assert failed.status == apb.RUN_STATUS_FAILED and not failed.HasField("last_error")


async def test_reading_past_the_end_or_with_forged_positions(world):
    run = await world.create_run((await world.new_session()).id)
    await world.append(run.id, delta(1), delta(2))
    assert await world.events(run.id, after=2**63 - 1) == []
    assert [e.sequence for e in await world.events(run.id, after=1)] == [2]
    # Page tokens are opaque but not signed: a well-formed one with an absurd position is
    # refused, never handed to SQL.
    runs_key = f"runs|{world.user_id}|{run.session_id}|[]|{SortOrder.DESCENDING}"
    for method, request, key in [
        (world.store.ListRunEvents, rs.ListRunEventsRequest(run_id=run.id), f"run_events|{world.user_id}|{run.id}|0"),
        (world.store.ListRunSteps, rs.ListRunStepsRequest(run_id=run.id), f"run_steps|{world.user_id}|{run.id}"),
        (world.store.ListRuns, rs.ListRunsRequest(session_id=run.session_id), runs_key),
    ]:
        for position in ([2**70], [-1], ["1"], [True]):
            request.page_token = encode_token(key, position)
            _, fields = await expect_error(method(request, metadata=world.md), INVALID)
            assert fields == ["page_token"], (type(request).__name__, position)


@pytest.mark.parametrize("size", [-1, 101, 2**31 - 1])
async def test_page_sizes_out_of_range(world, size):
    run = await world.create_run((await world.new_session()).id)
    s, md = world.store, world.md
    for call in [
        s.ListAssistants(rs.ListAssistantsRequest(page_size=size), metadata=md),
        s.ListRuns(rs.ListRunsRequest(session_id=run.session_id, page_size=size), metadata=md),
        s.ListRunSteps(rs.ListRunStepsRequest(run_id=run.id, page_size=size), metadata=md),
    ]:
        _, fields = await expect_error(call, INVALID)
        assert fields == ["page_size"]
    if size > 1000 or size < 0:
        _, fields = await expect_error(s.ListRunEvents(rs.ListRunEventsRequest(run_id=run.id, page_size=size),
                                                       metadata=md), INVALID)
        assert fields == ["page_size"]


async def test_forged_and_foreign_page_tokens(world):
    s, md = world.store, world.md
    for _ in range(3):
        await s.CreateAssistant(rs.CreateAssistantRequest(assistant=apb.Assistant(model="m")), metadata=md)
    page = await s.ListAssistants(rs.ListAssistantsRequest(page_size=1), metadata=md)
    run = await world.create_run((await world.new_session()).id)
    await world.create_run(world.session.id)
    await world.create_run(world.session.id, strategy=apb.BUSY_SESSION_STRATEGY_QUEUE)
    runs_token = await s.ListRuns(rs.ListRunsRequest(session_id=world.session.id, page_size=1), metadata=md)
    assert page.next_page_token and runs_token.next_page_token
    for forged in ["garbage!!", "eyJub3QiOiJ0aGlzIn0", page.next_page_token[:-3] + "abc", runs_token.next_page_token]:
        _, fields = await expect_error(
            s.ListAssistants(rs.ListAssistantsRequest(page_token=forged), metadata=md), INVALID)
        assert fields == ["page_token"]
    for foreign in [page.next_page_token, runs_token.next_page_token]:
        for call in [
            s.ListRuns(rs.ListRunsRequest(session_id=run.session_id, page_token=foreign), metadata=md),
            s.ListRunSteps(rs.ListRunStepsRequest(run_id=run.id, page_token=foreign), metadata=md),
            s.ListRunEvents(rs.ListRunEventsRequest(run_id=run.id, page_token=foreign), metadata=md),
        ]:
            _, fields = await expect_error(call, INVALID)
            assert fields == ["page_token"]
    # A token of one status filter or order is not valid for another.
    _, fields = await expect_error(s.ListRuns(rs.ListRunsRequest(
        session_id=world.session.id, page_token=runs_token.next_page_token, order=sapi.SORT_ORDER_ASCENDING),
        metadata=md), INVALID)
    assert fields == ["page_token"]


# -- row-level security in the database ---------------------------------------------------


@pytest.fixture
async def service_url(sessions_server, admin_url):  # the server's start-up ran the migrations
    return with_credentials(admin_url, ROLE, None)


async def connect_as(service_url: str, user_id: str | None):
    conn = await asyncpg.connect(service_url, server_settings={"search_path": "sessions"})
    tx = conn.transaction()
    await tx.start()
    if user_id is not None:
        await conn.execute("SELECT set_config('app.user_id', $1, true)", user_id)
    return conn, tx


async def test_new_tables_have_rls_enabled_and_forced_with_four_policies(admin_url, sessions_server):
    conn = await asyncpg.connect(admin_url)
    try:
        for table in NEW_TABLES:
            row = await conn.fetchrow(
                "SELECT c.relrowsecurity, c.relforcerowsecurity FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = 'sessions' AND c.relname = $1", table)
            assert row is not None and row["relrowsecurity"] and row["relforcerowsecurity"], table
            commands = {r["cmd"] for r in await conn.fetch(
                "SELECT cmd FROM pg_policies WHERE schemaname = 'sessions' AND tablename = $1", table)}
            assert commands == {"SELECT", "INSERT", "UPDATE", "DELETE"}, table
    finally:
        await conn.close()


async def test_rls_hides_and_protects_other_users_run_data(world, service_url, admin_url):
    run = await world.create_run((await world.new_session()).id)
    step = await world.store.CreateRunStep(rs.CreateRunStepRequest(run_step=apb.RunStep(
        run_id=run.id, type=apb.RUN_STEP_TYPE_MESSAGE_CREATION)), metadata=world.md)
    await world.append(run.id, delta(1, "secret"))
    owned = {"assistants": world.assistant.id, "runs": run.id, "run_steps": step.id}

    intruder = user()
    conn, tx = await connect_as(service_url, intruder)
    try:
        for table in NEW_TABLES:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        assert await conn.execute("""UPDATE run_events SET body = '{"hijacked": true}'""") == "UPDATE 0"
        assert await conn.execute("DELETE FROM run_events") == "DELETE 0"
        for table, row_id in owned.items():
            hijack = f"UPDATE {table} SET body = '{{\"hijacked\": true}}' WHERE id = $1"
            assert await conn.execute(hijack, uuid.UUID(row_id)) == "UPDATE 0"
            assert await conn.execute(f"DELETE FROM {table} WHERE id = $1", uuid.UUID(row_id)) == "DELETE 0"
    finally:
        await tx.commit()
        await conn.close()

    session_id, run_id = uuid.UUID(run.session_id), uuid.UUID(run.id)
    # Rows carrying the owner's id: refused by the insert policies.
    as_owner = [
        ("INSERT INTO assistants (id, user_id) VALUES ($1, $2)", uuid.uuid4(), world.user_id),
        ("INSERT INTO runs (id, user_id, session_id, assistant_id, status, busy_session_strategy) "
         "VALUES ($1, $2, $3, $1, 1, 1)", uuid.uuid4(), world.user_id, session_id),
        ("INSERT INTO run_steps (id, user_id, run_id, session_id, assistant_id, type, status) "
         "VALUES ($1, $2, $3, $1, $1, 1, 1)", uuid.uuid4(), world.user_id, run_id),
        ("INSERT INTO run_events (run_id, sequence, user_id, body) VALUES ($1, 2, $2, '{}')", run_id, world.user_id),
    ]
    # Rows as the intruder, hung on the owner's session or run: refused by the composite keys.
    as_intruder = [
        ("INSERT INTO runs (id, session_id, assistant_id, status, busy_session_strategy) VALUES ($1, $2, $1, 1, 1)",
         uuid.uuid4(), session_id),
        ("INSERT INTO run_steps (id, run_id, session_id, assistant_id, type, status) VALUES ($1, $2, $1, $1, 1, 1)",
         uuid.uuid4(), run_id),
        ("INSERT INTO run_events (run_id, sequence, body) VALUES ($1, 2, '{}')", run_id),
    ]
    for error, cases in ((asyncpg.exceptions.InsufficientPrivilegeError, as_owner),
                         (asyncpg.exceptions.ForeignKeyViolationError, as_intruder)):
        for statement, *args in cases:
            conn, tx = await connect_as(service_url, intruder)
            try:
                with pytest.raises(error):
                    await conn.execute(statement, *args)
            finally:
                await tx.rollback()
                await conn.close()

    conn, tx = await connect_as(service_url, None)
    try:
        for table in NEW_TABLES:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    finally:
        await tx.rollback()
        await conn.close()

    admin = await asyncpg.connect(admin_url)
    try:
        count = "SELECT count(*) FROM sessions.run_events WHERE run_id = $1"
        assert await admin.fetchval(count, uuid.UUID(run.id)) == 1
        for table, row_id in owned.items():
            body = await admin.fetchval(f"SELECT body::text FROM sessions.{table} WHERE id = $1", uuid.UUID(row_id))
            assert body is not None and "hijacked" not in body, table
    finally:
        await admin.close()


# -- the queue, leases, the live tail, the function result cache ----------------------------

from google.protobuf.duration_pb2 import Duration  # noqa: E402

from services.sessions.runstore.models import ENGINE_SCOPE  # noqa: E402

PERMISSION = grpc.StatusCode.PERMISSION_DENIED


def lease(owner: str, seconds: int = 30) -> rs.RunLease:
    return rs.RunLease(owner=owner, duration=Duration(seconds=seconds))


@pytest.fixture
def engine_md(as_user):
    return as_user("parley-assistants-engine", (ENGINE_SCOPE,))


async def claim_until(store, engine_md, owner: str, run_id: str, seconds: int = 30, rounds: int = 50):
    """Claims until `run_id` is among the claims (other tests' queued runs share the table)."""
    for _ in range(rounds):
        reply = await store.ClaimRuns(rs.ClaimRunsRequest(lease=lease(owner, seconds), max_runs=100),
                                      metadata=engine_md)
        for claim in reply.claims:
            if claim.run.id == run_id:
                return claim
    return None


async def queued_with_event(world, session_id=None, **fields) -> apb.Run:
    run = apb.Run(session_id=session_id or world.session.id, assistant_id=world.assistant.id, model="local/echo",
                  **fields)
    return await world.store.CreateRun(rs.CreateRunRequest(run=run, append_created_event=True), metadata=world.md)


async def test_create_can_store_the_first_event(world):
    run = await queued_with_event(world)
    assert run.last_sequence == 1
    [first] = await world.events(run.id)
    assert first.sequence == 1 and first.run_status_changed.id == run.id
    assert first.run_status_changed.status == apb.RUN_STATUS_QUEUED


async def test_claims_need_the_engine_scope(world, run_store_stub):
    for call in (run_store_stub.ClaimRuns(rs.ClaimRunsRequest(lease=lease("x")), metadata=world.md),
                 run_store_stub.RenewRunLeases(rs.RenewRunLeasesRequest(lease=lease("x")), metadata=world.md)):
        reason, _ = await expect_error(call, PERMISSION)
        assert reason == "ENGINE_SCOPE_REQUIRED"
    for bad in (rs.RunLease(owner="", duration=Duration(seconds=5)), rs.RunLease(owner="e", duration=Duration())):
        await expect_error(run_store_stub.ClaimRuns(rs.ClaimRunsRequest(lease=bad), metadata=world.md), PERMISSION)


async def test_the_queue_hands_out_session_heads_once(world, run_store_stub, engine_md):
    session = await world.new_session()
    first = await queued_with_event(world, session.id)
    second = await queued_with_event(world, session.id)
    silent = await world.create_run((await world.new_session()).id)  # no first event: never claimed
    claim = await claim_until(run_store_stub, engine_md, "engine-a", first.id)
    assert claim is not None and claim.reason == rs.RUN_CLAIM_REASON_QUEUED and claim.run.user_id == world.user_id
    # Claimed: no other replica gets it while the lease lasts; the run behind it waits its turn.
    assert await claim_until(run_store_stub, engine_md, "engine-b", first.id, rounds=2) is None
    assert await claim_until(run_store_stub, engine_md, "engine-b", second.id, rounds=2) is None
    assert await claim_until(run_store_stub, engine_md, "engine-b", silent.id, rounds=2) is None
    await world.update_run(first.id, ["status"], status=apb.RUN_STATUS_COMPLETED)
    claim = await claim_until(run_store_stub, engine_md, "engine-b", second.id)
    assert claim is not None and claim.reason == rs.RUN_CLAIM_REASON_QUEUED


async def test_concurrent_claimers_never_share_a_run(world, run_store_stub, engine_md):
    runs = [await queued_with_event(world, (await world.new_session()).id) for _ in range(6)]
    mine = {r.id for r in runs}

    async def claimer(owner):
        got = set()
        for _ in range(20):
            reply = await run_store_stub.ClaimRuns(rs.ClaimRunsRequest(lease=lease(owner), max_runs=2),
                                                   metadata=engine_md)
            got |= {c.run.id for c in reply.claims} & mine
        return got

    results = await asyncio.gather(*(claimer(f"engine-{i}") for i in range(3)))
    assert set.union(*results) == mine
    assert sum(len(r) for r in results) == len(mine)  # each run to exactly one claimer


async def test_leases_renew_lapse_and_hand_over(world, run_store_stub, engine_md):
    run = await queued_with_event(world, (await world.new_session()).id)
    assert await claim_until(run_store_stub, engine_md, "engine-a", run.id, seconds=1) is not None
    started = await world.store.UpdateRun(rs.UpdateRunRequest(
        run=apb.Run(id=run.id, status=apb.RUN_STATUS_IN_PROGRESS), update_mask=FieldMask(paths=["status"]),
        expected_statuses=[apb.RUN_STATUS_QUEUED], lease=lease("engine-a", 1)), metadata=world.md)
    assert started.status == apb.RUN_STATUS_IN_PROGRESS
    held = await run_store_stub.RenewRunLeases(rs.RenewRunLeasesRequest(lease=lease("engine-a", 1), run_ids=[run.id]),
                                               metadata=engine_md)
    assert list(held.run_ids) == [run.id]
    other = await run_store_stub.RenewRunLeases(rs.RenewRunLeasesRequest(lease=lease("engine-b"), run_ids=[run.id]),
                                                metadata=engine_md)
    assert list(other.run_ids) == []  # only the holder renews
    await asyncio.sleep(1.5)
    claim = await claim_until(run_store_stub, engine_md, "engine-b", run.id)
    assert claim is not None and claim.reason == rs.RUN_CLAIM_REASON_LEASE_LAPSED
    lost = await run_store_stub.RenewRunLeases(rs.RenewRunLeasesRequest(lease=lease("engine-a"), run_ids=[run.id]),
                                               metadata=engine_md)
    assert list(lost.run_ids) == []  # engine-a learns it lost the run


async def test_an_expired_action_is_claimed_for_expiry(world, run_store_stub, engine_md):
    run = await queued_with_event(world, (await world.new_session()).id)
    past = stamp(datetime.now(timezone.utc) - timedelta(seconds=5))
    await world.store.UpdateRun(rs.UpdateRunRequest(
        run=apb.Run(id=run.id, status=apb.RUN_STATUS_REQUIRES_ACTION, expire_time=past),
        update_mask=FieldMask(paths=["status", "expire_time"]), lease=rs.RunLease()), metadata=world.md)
    claim = await claim_until(run_store_stub, engine_md, "engine-a", run.id)
    assert claim is not None and claim.reason == rs.RUN_CLAIM_REASON_ACTION_EXPIRED


async def test_watch_replays_then_follows_live_until_the_run_ends(world, run_store_stub):
    run = await queued_with_event(world)
    await world.append(run.id, delta(2, "a"), delta(3, "b"))
    received: list[apb.RunEvent] = []
    statuses_seen = []

    async def watch():
        async for change in run_store_stub.WatchRunEvents(rs.WatchRunEventsRequest(run_id=run.id, after_sequence=1),
                                                          metadata=world.md):
            received.extend(change.events)
            statuses_seen.append(change.status)

    watching = asyncio.ensure_future(watch())
    for _ in range(100):
        if len(received) >= 2:
            break
        await asyncio.sleep(0.05)
    assert [e.sequence for e in received] == [2, 3]
    await world.append(run.id, delta(4, "c"))
    await world.update_run(run.id, ["status"], events=[delta(5, "d")], status=apb.RUN_STATUS_COMPLETED)
    await asyncio.wait_for(watching, 10)  # ends by itself once the run has ended
    assert [e.sequence for e in received] == [2, 3, 4, 5]
    assert statuses_seen[-1] == apb.RUN_STATUS_COMPLETED

    status_only = [c async for c in run_store_stub.WatchRunEvents(
        rs.WatchRunEventsRequest(run_id=run.id, status_only=True), metadata=world.md)]
    assert [list(c.events) for c in status_only] == [[]] and status_only[-1].last_sequence == 5


async def test_watch_is_isolated_and_checks_its_input(world, run_store_stub, as_user):
    run = await queued_with_event(world)
    stranger = as_user(user())
    call = run_store_stub.WatchRunEvents(rs.WatchRunEventsRequest(run_id=run.id), metadata=stranger)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert rich_error(caught.value)[:2] == (NOT_FOUND, "RUN_NOT_FOUND")
    call = run_store_stub.WatchRunEvents(rs.WatchRunEventsRequest(run_id=run.id, after_sequence=-1), metadata=world.md)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == INVALID


async def test_function_results_are_cached_per_user(world, run_store_stub, as_user):
    later = stamp(datetime.now(timezone.utc) + timedelta(minutes=5))
    await run_store_stub.StoreFunctionResults(rs.StoreFunctionResultsRequest(results=[
        rs.FunctionResult(name="rates", arguments='{"c": "EUR"}', output="1.08", expire_time=later)]),
        metadata=world.md)
    keys = [rs.FunctionResult(name="rates", arguments='{"c": "EUR"}'),
            rs.FunctionResult(name="rates", arguments='{"c":"EUR"}')]  # not byte-for-byte the same
    found = await run_store_stub.LookupFunctionResults(rs.LookupFunctionResultsRequest(keys=keys), metadata=world.md)
    assert [(r.name, r.arguments, r.output) for r in found.results] == [("rates", '{"c": "EUR"}', "1.08")]
    theirs = await run_store_stub.LookupFunctionResults(rs.LookupFunctionResultsRequest(keys=keys),
                                                        metadata=as_user(user()))
    assert list(theirs.results) == []
    for bad, field in (
        (rs.FunctionResult(name="rates", arguments="{}", output="x"), "results[0].expire_time"),
        (rs.FunctionResult(name="rates", arguments="{}", output="x",
                           expire_time=stamp(datetime.now(timezone.utc) + timedelta(days=3))), "results[0].expire_time"),
        (rs.FunctionResult(name="", arguments="{}", output="x", expire_time=later), "results[0].name"),
        (rs.FunctionResult(name="f", arguments="{}", output="x\x00", expire_time=later), "results[0].output"),
    ):
        _, fields = await expect_error(run_store_stub.StoreFunctionResults(
            rs.StoreFunctionResultsRequest(results=[bad]), metadata=world.md), INVALID)
        assert fields[0] == field


async def test_a_start_can_require_the_session_head(world):
    session = await world.new_session()
    first = await queued_with_event(world, session.id)
    second = await queued_with_event(world, session.id)

    def start(run):
        return world.store.UpdateRun(rs.UpdateRunRequest(
            run=apb.Run(id=run.id, status=apb.RUN_STATUS_IN_PROGRESS), update_mask=FieldMask(paths=["status"]),
            expected_statuses=[apb.RUN_STATUS_QUEUED], require_session_head=True, lease=lease("engine-a"),
            events=[delta(2)]), metadata=world.md)

    reason, _ = await expect_error(start(second), ABORTED)
    assert reason == "RUN_NOT_SESSION_HEAD"
    assert (await world.get_run(second.id)).last_sequence == 1  # nothing written
    assert (await start(first)).status == apb.RUN_STATUS_IN_PROGRESS
    await world.update_run(first.id, ["status"], status=apb.RUN_STATUS_COMPLETED)
    assert (await start(second)).status == apb.RUN_STATUS_IN_PROGRESS
