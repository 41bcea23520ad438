"""Assistants CRUD and its validation, prompt templates, every bad input answered with its
documented status (never INTERNAL), and isolation: another user's assistants, runs, steps,
watch, submit and cancel answer NOT_FOUND."""

from __future__ import annotations

import grpc
from google.protobuf import struct_pb2
from google.protobuf.field_mask_pb2 import FieldMask

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as api
from parley.files.v1 import files_service_pb2 as fapi
from parley.sessions.v1 import sessions_pb2 as spb
from tests.assistants.helpers import collect, function_tool, new_assistant, stream_run, user_message
from tests.conftest import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


async def test_assistant_crud(stack, engine_channel, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    model = stack.model("openai")
    created = await new_assistant(stub, md, model, name="A", instructions="hi", temperature=0.5,
                                  tools=[function_tool("f")], metadata={"team": "x"})
    assert created.id and created.model == model and created.temperature == 0.5
    assert await stub.GetAssistant(api.GetAssistantRequest(assistant_id=created.id), metadata=md) == created
    updated = await stub.UpdateAssistant(api.UpdateAssistantRequest(
        assistant=apb.Assistant(id=created.id, name="B", instructions="ignored"), update_mask=FieldMask(paths=["name"])),
        metadata=md)
    assert updated.name == "B" and updated.instructions == "hi"
    second = await new_assistant(stub, md, model)
    listed = await stub.ListAssistants(api.ListAssistantsRequest(page_size=1), metadata=md)
    assert [a.id for a in listed.assistants] == [second.id] and listed.next_page_token
    rest = await stub.ListAssistants(api.ListAssistantsRequest(page_size=1, page_token=listed.next_page_token),
                                     metadata=md)
    assert [a.id for a in rest.assistants] == [created.id]
    await stub.DeleteAssistant(api.DeleteAssistantRequest(assistant_id=created.id), metadata=md)
    await expect_error(stub.GetAssistant(api.GetAssistantRequest(assistant_id=created.id), metadata=md), NOT_FOUND)


async def test_bad_assistants_name_their_fields(stack, engine_channel, backends, user):
    me = user()
    md, stub = stack.direct(me), stack.engine.stub(engine_channel)
    model = stack.model("openai")
    not_object = struct_pb2.Struct()
    not_object.update({"type": "string"})
    cases = [
        (dict(model=""), ["model"]),
        (dict(model="nobody/knows-this-model"), ["model"]),
        (dict(model=model, tools=[function_tool("f"), function_tool("f")]), ["tools[1].function.name"]),
        (dict(model=model, tools=[function_tool("bad name!")]), ["tools[0].function.name"]),
        (dict(model=model, tools=[apb.Tool(function=apb.FunctionTool(name="g", parameters=not_object))]),
         ["tools[0].function.parameters"]),
        (dict(model=model, tools=[function_tool(f"f{i}") for i in range(129)]), ["tools"]),
        (dict(model=model, tools=[apb.Tool()]), ["tools[0]"]),
        (dict(model=model, temperature=2.5), ["temperature"]),
        (dict(model=model, top_p=-0.1), ["top_p"]),
        (dict(model=model, name="x" * 257), ["name"]),
        (dict(model=model, response_format=apb.ResponseFormat(type=apb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA)),
         ["response_format.json_schema.name", "response_format.json_schema.schema"]),
    ]
    for fields, expected in cases:
        _, got = await expect_error(stub.CreateAssistant(api.CreateAssistantRequest(**fields), metadata=md), INVALID)
        assert got == expected, fields
    # A vector store that is not the caller's is NOT_FOUND, like one that does not exist.
    _, files = backends
    theirs = await files.CreateVectorStore(fapi.CreateVectorStoreRequest(name="theirs"), metadata=stack.direct(user()))
    reason, _ = await expect_error(stub.CreateAssistant(api.CreateAssistantRequest(
        model=model, tool_resources=apb.ToolResources(file_search=apb.FileSearchResources(
            vector_store_ids=[theirs.id]))), metadata=md), NOT_FOUND)
    assert reason == "VECTOR_STORE_NOT_FOUND"
    listed = await stub.ListAssistants(api.ListAssistantsRequest(), metadata=md)
    assert list(listed.assistants) == []  # nothing was stored


async def test_template_variables(stack, engine_channel, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    model = stack.model("openai")
    name = model.split("/")[1]
    assistant = await new_assistant(stub, md, model, instructions="Greet {{customer_name}} on the {{ plan }} plan.")
    events = await stream_run(stub, md, assistant_id=assistant.id, additional_instructions="Sign as {{agent}}.",
                              variables={"customer_name": "Ada", "plan": "gold", "agent": "Bo"},
                              session=api.NewSession(messages=[user_message("hello")]))
    run = events[-2].run_status_changed
    assert run.instructions == "Greet Ada on the gold plan.\n\nSign as Bo."
    assert stack.fakes["openai"].requests_for(name)[-1]["messages"][0]["content"] == run.instructions
    session_id = run.session_id
    reason, fields = await expect_error(stub.CreateRun(api.CreateRunRequest(
        assistant_id=assistant.id, session_id=session_id, variables={"customer_name": "Ada"}), metadata=md), INVALID)
    assert reason == "TEMPLATE_VARIABLE_MISSING" and fields == ["variables['plan']"]
    reason, fields = await expect_error(stub.CreateRun(api.CreateRunRequest(
        assistant_id=assistant.id, session_id=session_id,
        variables={"customer_name": "Ada", "plan": "x", "colour": "red"}), metadata=md), INVALID)
    assert reason == "TEMPLATE_VARIABLE_UNKNOWN" and fields == ["variables['colour']"]
    runs = await stub.ListRuns(api.ListRunsRequest(session_id=session_id), metadata=md)
    assert len(runs.runs) == 1  # the refused runs stored nothing


async def test_bad_runs_name_their_fields(stack, engine_channel, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    model = stack.model("openai")
    assistant = await new_assistant(stub, md, model, tools=[function_tool("f")])
    new = api.NewSession(messages=[user_message("x")])
    cases = [
        (dict(), ["assistant_id"]),
        (dict(assistant_id=assistant.id, session=new, max_prompt_tokens=10), ["max_prompt_tokens"]),
        (dict(assistant_id=assistant.id, session=new, max_completion_tokens=3), ["max_completion_tokens"]),
        (dict(assistant_id=assistant.id, session=new, temperature=3.0), ["temperature"]),
        (dict(assistant_id=assistant.id, session=new, model="nobody/knows"), ["model"]),
        (dict(assistant_id=assistant.id, session=new, truncation_strategy=apb.TruncationStrategy(
            type=apb.TRUNCATION_TYPE_LAST_MESSAGES)), ["truncation_strategy.last_messages"]),
        (dict(assistant_id=assistant.id, session=new, tool_choice=apb.ToolChoice(
            type=apb.TOOL_CHOICE_TYPE_FUNCTION, function_name="nope")), ["tool_choice.function_name"]),
        (dict(assistant_id=assistant.id, session=api.NewSession(messages=[spb.Message(role=spb.ROLE_USER)])),
         ["session.messages[0].content"]),
        (dict(assistant_id=assistant.id, session=new, additional_messages=[
            spb.Message(role=spb.ROLE_SYSTEM, content=[spb.ContentPart(text="x")])]),
         ["additional_messages[0].role"]),
    ]
    for fields, expected in cases:
        _, got = await expect_error(stub.CreateRun(api.CreateRunRequest(**fields), metadata=md), INVALID)
        assert got == expected, fields
    await expect_error(stub.CreateRun(api.CreateRunRequest(assistant_id="not-an-id", session=new), metadata=md),
                       INVALID)
    await expect_error(stub.GetRun(api.GetRunRequest(run_id=""), metadata=md), INVALID)
    await expect_error(stub.WatchRun(api.WatchRunRequest(run_id="0190d0d0-0000-7000-8000-000000000000",
                                                         after_sequence=-1), metadata=md).read(), INVALID)


async def test_another_user_gets_not_found_everywhere(stack, engine_channel, user):
    owner, stranger = stack.direct(user()), stack.direct(user())
    stub = stack.engine.stub(engine_channel)
    model = stack.model("openai")
    stack.fakes["openai"].script(model.split("/")[1], {"tool_calls": [("i1", "f", "{}")]})
    assistant = await new_assistant(stub, owner, model, tools=[function_tool("f")])
    events = await stream_run(stub, owner, assistant_id=assistant.id,
                              session=api.NewSession(messages=[user_message("x")]))
    run = events[-1].run_status_changed
    assert run.status == apb.RUN_STATUS_REQUIRES_ACTION
    calls = [
        stub.GetAssistant(api.GetAssistantRequest(assistant_id=assistant.id), metadata=stranger),
        stub.UpdateAssistant(api.UpdateAssistantRequest(assistant=apb.Assistant(id=assistant.id, name="x"),
                                                        update_mask=FieldMask(paths=["name"])), metadata=stranger),
        stub.DeleteAssistant(api.DeleteAssistantRequest(assistant_id=assistant.id), metadata=stranger),
        stub.GetRun(api.GetRunRequest(run_id=run.id), metadata=stranger),
        stub.ListRuns(api.ListRunsRequest(session_id=run.session_id), metadata=stranger),
        stub.ListRunSteps(api.ListRunStepsRequest(run_id=run.id), metadata=stranger),
        stub.CancelRun(api.CancelRunRequest(run_id=run.id), metadata=stranger),
        stub.CreateRun(api.CreateRunRequest(assistant_id=assistant.id, session=api.NewSession()), metadata=stranger),
        collect(stub.WatchRun(api.WatchRunRequest(run_id=run.id), metadata=stranger)),
        collect(stub.SubmitToolOutputs(api.SubmitToolOutputsRequest(
            run_id=run.id, tool_outputs=[api.ToolOutput(tool_call_id="i1", output="x")]), metadata=stranger)),
    ]
    for call in calls:
        await expect_error(call, NOT_FOUND)
    theirs = await new_assistant(stub, stranger, model)
    await expect_error(stub.CreateRun(api.CreateRunRequest(assistant_id=theirs.id, session_id=run.session_id),
                                      metadata=stranger), NOT_FOUND)
    # Nothing the stranger did changed the owner's run.
    assert (await stub.GetRun(api.GetRunRequest(run_id=run.id), metadata=owner)).status == \
        apb.RUN_STATUS_REQUIRES_ACTION
    await stub.CancelRun(api.CancelRunRequest(run_id=run.id), metadata=owner)


async def test_a_refused_run_leaves_no_session_or_message_behind(stack, engine_channel, backends, user):
    from parley.sessions.v1 import sessions_service_pb2 as sapi

    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    sessions, _ = backends
    assistant = await new_assistant(stub, md, stack.model("openai"))
    bad = spb.Message(role=spb.ROLE_USER, content=[spb.ContentPart(text="x")], tool_call_id="not-a-tool-message")
    await expect_error(stub.CreateRun(api.CreateRunRequest(
        assistant_id=assistant.id, session=api.NewSession(messages=[user_message("fine"), bad])), metadata=md), INVALID)
    listed = await sessions.ListSessions(sapi.ListSessionsRequest(), metadata=md)
    assert list(listed.sessions) == []
    session = await sessions.CreateSession(sapi.CreateSessionRequest(title="kept"), metadata=md)
    await expect_error(stub.CreateRun(api.CreateRunRequest(
        assistant_id=assistant.id, session_id=session.id, additional_messages=[user_message("one"), bad]),
        metadata=md), INVALID)
    messages = await sessions.ListMessages(sapi.ListMessagesRequest(session_id=session.id), metadata=md)
    assert list(messages.messages) == []


async def test_no_input_gets_internal_or_unknown(stack, engine_channel, user):
    """Empty, malformed and hostile requests to every method: each answers a documented
    status, never INTERNAL or UNKNOWN."""
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    huge = "x" * 300_000
    random_id = "0190d0d0-0000-7000-8000-000000000000"
    weird_tool = apb.Tool(function=apb.FunctionTool(name="f", cache_ttl={"seconds": 10**12}))
    unary = [
        stub.CreateAssistant(api.CreateAssistantRequest(), metadata=md),
        stub.CreateAssistant(api.CreateAssistantRequest(model=huge, name=huge, instructions=huge), metadata=md),
        stub.CreateAssistant(api.CreateAssistantRequest(model="openai/m0", tools=[weird_tool]), metadata=md),
        stub.CreateAssistant(api.CreateAssistantRequest(model="openai/m0", response_format=apb.ResponseFormat(
            type=99)), metadata=md),
        stub.GetAssistant(api.GetAssistantRequest(assistant_id=huge), metadata=md),
        stub.ListAssistants(api.ListAssistantsRequest(page_size=-1, page_token="garbage"), metadata=md),
        stub.UpdateAssistant(api.UpdateAssistantRequest(), metadata=md),
        stub.UpdateAssistant(api.UpdateAssistantRequest(assistant=apb.Assistant(id=random_id),
                                                        update_mask=FieldMask(paths=["nope"])), metadata=md),
        stub.DeleteAssistant(api.DeleteAssistantRequest(assistant_id="\x00"), metadata=md),
        stub.CreateRun(api.CreateRunRequest(), metadata=md),
        stub.CreateRun(api.CreateRunRequest(assistant_id=random_id, session_id=random_id,
                                            busy_session_strategy=42, variables={"": "x"}), metadata=md),
        stub.GetRun(api.GetRunRequest(run_id="nope"), metadata=md),
        stub.ListRuns(api.ListRunsRequest(session_id=random_id, page_token="x" * 5000), metadata=md),
        stub.ListRunSteps(api.ListRunStepsRequest(run_id=random_id, page_size=10**6), metadata=md),
        stub.CancelRun(api.CancelRunRequest(run_id=random_id), metadata=md),
    ]
    streams = [
        stub.StreamRun(api.StreamRunRequest(), metadata=md),
        stub.SubmitToolOutputs(api.SubmitToolOutputsRequest(run_id=random_id, tool_outputs=[
            api.ToolOutput(tool_call_id=huge, output=huge)]), metadata=md),
        stub.WatchRun(api.WatchRunRequest(run_id=random_id, after_sequence=2**62), metadata=md),
    ]
    for call in unary:
        try:
            await call
        except grpc.aio.AioRpcError as error:
            assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.details()
    for call in streams:
        try:
            await collect(call)
        except grpc.aio.AioRpcError as error:
            assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.details()
