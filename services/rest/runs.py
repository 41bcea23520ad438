"""/v1/threads/{id}/runs (created in the background or streamed as Assistants v2 SSE events),
/v1/threads/runs (create thread and run), tool outputs, cancel, and run steps, over
AssistantService. A client that disconnects from a run's stream stops reading; the run goes on."""

from __future__ import annotations

import grpc
from fastapi import APIRouter
from openai.types.beta import thread_create_and_run_params
from openai.types.beta.threads import run_create_params, run_submit_tool_outputs_params
from starlette.requests import Request

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as aapi
from parley.sessions.v1 import sessions_service_pb2 as sapi
from services.rest import ids
from services.rest.assistants import new_thread_messages, thread_metadata
from services.rest.convert import (
    TOOL_RESOURCES_KEY,
    annotation_out,
    message_in,
    message_out,
    metadata,
    provisional_message_id,
    response_format_in,
    run_out,
    seconds,
    step_out,
    tool_choice_in,
    tool_resources_in,
    tools_in,
)
from services.rest.errors import ApiError, from_grpc
from services.rest.gateway import first_and_rest
from services.rest.http import event_stream, json_response, paginate, read_json, sse

router = APIRouter(tags=["runs"])


def _gateway(request: Request):
    return request.app.state.gateway


def _settings(request: Request):
    return request.app.state.settings


def _poll(request: Request) -> dict:
    return {"openai-poll-after-ms": str(_settings(request).poll_after_ms)}


def run_request(body: dict, session_id: str = "") -> aapi.CreateRunRequest:
    create = aapi.CreateRunRequest(
        session_id=session_id, assistant_id=ids.internal_or_400("assistant", body.get("assistant_id"), "assistant_id"),
        model=body.get("model") or "", instructions=body.get("instructions") or "",
        additional_instructions=body.get("additional_instructions") or "",
        tools=tools_in(body.get("tools")), metadata=metadata(body.get("metadata")),
        max_prompt_tokens=body.get("max_prompt_tokens") or 0,
        max_completion_tokens=body.get("max_completion_tokens") or 0)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            setattr(create, name, float(body[name]))
    if body.get("parallel_tool_calls") is not None:
        create.parallel_tool_calls = bool(body["parallel_tool_calls"])
    choice = tool_choice_in(body.get("tool_choice"))
    if choice is not None:
        create.tool_choice.CopyFrom(choice)
    response_format = response_format_in(body.get("response_format"))
    if response_format is not None:
        create.response_format.CopyFrom(response_format)
    truncation = body.get("truncation_strategy")
    if truncation:
        create.truncation_strategy.type = (apb.TRUNCATION_TYPE_LAST_MESSAGES if truncation.get("type") == "last_messages"
                                           else apb.TRUNCATION_TYPE_AUTO)
        create.truncation_strategy.last_messages = truncation.get("last_messages") or 0
    if body.get("tool_resources"):
        create.tool_resources.CopyFrom(tool_resources_in(body["tool_resources"]))
    for index, message in enumerate(body.get("additional_messages") or []):
        create.additional_messages.append(message_in(message, f"additional_messages[{index}]"))
    create.variables.update(_variables(body.get("variables")))
    return create


def _variables(value) -> dict[str, str]:
    """`variables` (a Parley extension): the values of the instructions' `{{name}}` templates."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ApiError(400, "Invalid 'variables': expected an object of string values.", param="variables",
                       code="invalid_value")
    return value


async def _thread_resources(request: Request, session_id: str) -> apb.ToolResources | None:
    """The thread's tool_resources (kept in its metadata), for its runs."""
    import json

    gateway = _gateway(request)
    session = await gateway.call(request, gateway.sessions.GetSession, sapi.GetSessionRequest(session_id=session_id))
    stored = session.metadata.get(TOOL_RESOURCES_KEY)
    return tool_resources_in(json.loads(stored)) if stored else None


async def _start(request: Request, create: aapi.CreateRunRequest, stream: bool):
    gateway = _gateway(request)
    if not stream:
        run = await gateway.call(request, gateway.assistants.CreateRun, create)
        return json_response(run_out(run))
    call = gateway.stream(request, gateway.assistants.StreamRun, aapi.StreamRunRequest(run=create))
    first, rest = await first_and_rest(call)
    return event_stream(RunEvents(created=True).stream(call, first, rest), _settings(request).heartbeat_seconds)


@router.post("/threads/{thread_id}/runs", summary="Create a run (stream: true for Assistants v2 SSE events)")
async def create_run(request: Request, thread_id: str):
    session_id = ids.internal("thread", thread_id)
    body = await read_json(request, _settings(request).max_body_bytes, run_create_params.RunCreateParamsBase)
    create = run_request(body, session_id)
    resources = await _thread_resources(request, session_id)
    if resources is not None:
        create.tool_resources.MergeFrom(resources)
    return await _start(request, create, bool(body.get("stream")))


@router.post("/threads/runs", summary="Create a thread and run it")
async def create_thread_and_run(request: Request):
    body = await read_json(request, _settings(request).max_body_bytes,
                           thread_create_and_run_params.ThreadCreateAndRunParamsBase)
    create = run_request(body)
    thread = body.get("thread") or {}
    create.session.metadata.update(thread_metadata(thread, "thread."))
    create.session.messages.extend(new_thread_messages(thread, "thread.messages"))
    if thread.get("tool_resources"):
        create.tool_resources.MergeFrom(tool_resources_in(thread["tool_resources"], "thread.tool_resources"))
    return await _start(request, create, bool(body.get("stream")))


@router.get("/threads/{thread_id}/runs", summary="List runs")
async def list_runs(request: Request, thread_id: str):
    session_id, gateway = ids.internal("thread", thread_id), _gateway(request)

    async def fetch(token, size):
        page = await gateway.call(request, gateway.assistants.ListRuns,
                                  aapi.ListRunsRequest(session_id=session_id, page_size=size, page_token=token))
        return [run_out(r) for r in page.runs], page.next_page_token

    return json_response(await paginate(request, f"runs:{session_id}", fetch))


async def get_run_of_thread(request: Request, thread_id: str, run_id: str) -> apb.Run:
    session_id = ids.internal("thread", thread_id)
    gateway = _gateway(request)
    run = await gateway.call(request, gateway.assistants.GetRun, aapi.GetRunRequest(run_id=ids.internal("run", run_id)))
    if run.session_id != session_id:
        raise ApiError(404, f"No run found with id '{run_id[:100]}'.", code="run_not_found")
    return run


@router.get("/threads/{thread_id}/runs/{run_id}", summary="Retrieve a run")
async def get_run(request: Request, thread_id: str, run_id: str):
    return json_response(run_out(await get_run_of_thread(request, thread_id, run_id)), headers=_poll(request))


@router.post("/threads/{thread_id}/runs/{run_id}", summary="Modify a run (not supported)")
async def update_run(request: Request, thread_id: str, run_id: str):
    await get_run_of_thread(request, thread_id, run_id)
    raise ApiError(422, "Modifying a run is not supported by Parley: a run's metadata is fixed when it is created.",
                   param="metadata", code="unsupported_parameter")


@router.post("/threads/{thread_id}/runs/{run_id}/cancel", summary="Cancel a run")
async def cancel_run(request: Request, thread_id: str, run_id: str):
    run = await get_run_of_thread(request, thread_id, run_id)
    gateway = _gateway(request)
    cancelled = await gateway.call(request, gateway.assistants.CancelRun, aapi.CancelRunRequest(run_id=run.id))
    return json_response(run_out(cancelled))


@router.post("/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", summary="Submit tool outputs")
async def submit_tool_outputs(request: Request, thread_id: str, run_id: str):
    body = await read_json(request, _settings(request).max_body_bytes,
                           run_submit_tool_outputs_params.RunSubmitToolOutputsParamsBase,
                           path={"thread_id": thread_id})
    run = await get_run_of_thread(request, thread_id, run_id)
    submit = aapi.SubmitToolOutputsRequest(run_id=run.id, tool_outputs=[
        aapi.ToolOutput(tool_call_id=o.get("tool_call_id") or "", output=o.get("output") or "")
        for o in body["tool_outputs"]])
    gateway = _gateway(request)
    call = gateway.stream(request, gateway.assistants.SubmitToolOutputs, submit)
    first, rest = await first_and_rest(call)
    if body.get("stream"):
        return event_stream(RunEvents(created=False).stream(call, first, rest), _settings(request).heartbeat_seconds)
    call.cancel()  # the outputs are accepted; the run goes on without this stream
    return json_response(run_out(await gateway.call(request, gateway.assistants.GetRun,
                                                    aapi.GetRunRequest(run_id=run.id))))


async def _steps(request: Request, run: apb.Run):
    gateway, token = _gateway(request), ""
    while True:
        page = await gateway.call(request, gateway.assistants.ListRunSteps,
                                  aapi.ListRunStepsRequest(run_id=run.id, page_size=100, page_token=token))
        for step in page.run_steps:
            yield step
        token = page.next_page_token
        if not token:
            return


@router.get("/threads/{thread_id}/runs/{run_id}/steps", summary="List a run's steps")
async def list_steps(request: Request, thread_id: str, run_id: str):
    run, gateway = await get_run_of_thread(request, thread_id, run_id), _gateway(request)

    async def fetch(token, size):
        page = await gateway.call(request, gateway.assistants.ListRunSteps,
                                  aapi.ListRunStepsRequest(run_id=run.id, page_size=size, page_token=token))
        return [step_out(s) for s in page.run_steps], page.next_page_token

    return json_response(await paginate(request, f"steps:{run.id}", fetch, native_order="asc"))


@router.get("/threads/{thread_id}/runs/{run_id}/steps/{step_id}", summary="Retrieve a run step")
async def get_step(request: Request, thread_id: str, run_id: str, step_id: str):
    wanted = ids.internal("step", step_id)
    run = await get_run_of_thread(request, thread_id, run_id)
    async for step in _steps(request, run):
        if step.id == wanted:
            return json_response(step_out(step))
    raise ApiError(404, f"No run step found with id '{step_id[:100]}'.", code="step_not_found")


# ---- events ----------------------------------------------------------------------------------

_RUN_EVENTS = {apb.RUN_STATUS_QUEUED: "thread.run.queued", apb.RUN_STATUS_IN_PROGRESS: "thread.run.in_progress",
               apb.RUN_STATUS_REQUIRES_ACTION: "thread.run.requires_action",
               apb.RUN_STATUS_CANCELLING: "thread.run.cancelling", apb.RUN_STATUS_CANCELLED: "thread.run.cancelled",
               apb.RUN_STATUS_FAILED: "thread.run.failed", apb.RUN_STATUS_COMPLETED: "thread.run.completed",
               apb.RUN_STATUS_INCOMPLETE: "thread.run.incomplete", apb.RUN_STATUS_EXPIRED: "thread.run.expired"}
_STEP_EVENTS = {apb.RUN_STEP_STATUS_COMPLETED: "thread.run.step.completed",
                apb.RUN_STEP_STATUS_FAILED: "thread.run.step.failed",
                apb.RUN_STEP_STATUS_CANCELLED: "thread.run.step.cancelled",
                apb.RUN_STEP_STATUS_EXPIRED: "thread.run.step.expired"}
_CALL_TYPES = {apb.TOOL_CALL_TYPE_FUNCTION: "function", apb.TOOL_CALL_TYPE_FILE_SEARCH: "file_search",
               apb.TOOL_CALL_TYPE_CODE_INTERPRETER: "code_interpreter"}


class RunEvents:
    """Parley's typed run events as the Assistants v2 stream: thread.run.*, thread.run.step.*
    and thread.message.* events, `error`, and `event: done` / `data: [DONE]` at the end.

    The SSE events of one run event are written together, the last of them carrying `id:` the
    run event's sequence number, so a client's Last-Event-ID names the last run event it has
    whole. `after`: the run events up to this sequence are translated (the stream's state —
    which message a step writes, a call's type — is rebuilt from them) but not sent."""

    def __init__(self, created: bool, after: int = 0) -> None:
        self.announce_created = created
        self.after = after
        self.message_steps: dict[str, dict] = {}  # step id → the message being streamed
        self.call_types: dict[tuple[str, int], str] = {}

    async def stream(self, call, first, rest):
        try:
            event = first
            while event is not None:
                chunks = list(self.translate(event.event))
                if chunks and event.event.sequence > self.after:
                    chunks[-1] = b"id: %d\n" % event.event.sequence + chunks[-1]
                    yield b"".join(chunks)
                try:
                    event = await rest.__anext__()
                except StopAsyncIteration:
                    event = None
            yield sse("done", "[DONE]")
        except grpc.aio.AioRpcError as error:
            yield sse("error", from_grpc(error).body()["error"])
            yield sse("done", "[DONE]")
        finally:
            call.cancel()  # stops reading; the run itself goes on

    @staticmethod
    def _step_delta(step_id: str, call: dict) -> bytes:
        return sse("thread.run.step.delta", {
            "id": ids.public("step", step_id), "object": "thread.run.step.delta",
            "delta": {"step_details": {"type": "tool_calls", "tool_calls": [call]}}})

    def translate(self, event: apb.RunEvent):
        kind = event.WhichOneof("event")
        if kind == "run_status_changed":
            run = event.run_status_changed
            body = run_out(run)
            if self.announce_created:
                self.announce_created = False
                yield sse("thread.run.created", body)
            name = _RUN_EVENTS.get(run.status)
            if name:
                yield sse(name, body)
        elif kind == "step_created":
            step = event.step_created
            body = step_out(step)
            if body["type"] == "tool_calls":
                body["step_details"]["tool_calls"] = []  # filled by thread.run.step.delta events
            yield sse("thread.run.step.created", body)
            yield sse("thread.run.step.in_progress", body)
            if step.WhichOneof("step_details") == "message_creation" or step.type == apb.RUN_STEP_TYPE_MESSAGE_CREATION:
                message = {"id": provisional_message_id(step.id), "object": "thread.message",
                           "created_at": seconds(step.create_time) or 0,
                           "thread_id": ids.public("thread", step.session_id), "status": "in_progress",
                           "role": "assistant", "content": [], "assistant_id": ids.public("assistant", step.assistant_id),
                           "run_id": ids.public("run", step.run_id), "attachments": [], "metadata": {},
                           "completed_at": None, "incomplete_at": None, "incomplete_details": None}
                self.message_steps[step.id] = {"message": message, "annotations": [], "marks": 0}
                yield sse("thread.message.created", message)
                yield sse("thread.message.in_progress", message)
        elif kind == "step_updated":
            step = event.step_updated
            name = _STEP_EVENTS.get(step.status)
            if name:
                yield sse(name, step_out(step))
        elif kind == "message_delta":
            delta = event.message_delta
            streaming = self.message_steps.get(delta.step_id)
            if streaming is None:
                return
            marks = []
            for annotation in delta.annotations:
                streaming["annotations"].append(annotation)
                marks.append(annotation_out(annotation, index=streaming["marks"]))
                streaming["marks"] += 1
            yield sse("thread.message.delta", {
                "id": streaming["message"]["id"], "object": "thread.message.delta",
                "delta": {"content": [{"index": delta.index, "type": "text",
                                       "text": {"value": delta.text, "annotations": marks}}]}})
        elif kind == "message_created":
            message = event.message_created
            step_id = next((s for s, m in self.message_steps.items() if not m.get("done")), None)
            annotations, public_id = (), None
            if step_id is not None:
                self.message_steps[step_id]["done"] = True
                annotations = self.message_steps[step_id]["annotations"]
                public_id = self.message_steps[step_id]["message"]["id"]
            yield sse("thread.message.completed", message_out(message, annotations, message_id=public_id))
        elif kind == "tool_call_delta":
            delta = event.tool_call_delta
            key = (delta.step_id, delta.index)
            if delta.type:
                self.call_types[key] = _CALL_TYPES.get(delta.type, "function")
            call_type = self.call_types.get(key, "function")
            call: dict = {"index": delta.index, "type": call_type}
            if delta.id:
                call["id"] = delta.id
            if call_type == "function":
                if delta.id and delta.arguments:
                    # As OpenAI streams it (and its SDKs expect): the call first, its arguments after.
                    opening = {**call, "function": {"name": delta.name, "arguments": "", "output": None}}
                    yield self._step_delta(delta.step_id, opening)
                    call = {"index": delta.index, "type": call_type}
                    call["function"] = {"arguments": delta.arguments}
                else:
                    call["function"] = {"arguments": delta.arguments, **({"name": delta.name} if delta.name else {}),
                                        **({"output": None} if delta.id else {})}
            elif call_type == "code_interpreter":
                outputs = []
                if delta.code_logs:
                    outputs.append({"index": 0, "type": "logs", "logs": delta.code_logs})
                if delta.HasField("code_image"):
                    outputs.append({"index": 0, "type": "image",
                                    "image": {"file_id": ids.public("file", delta.code_image.file_id)}})
                call["code_interpreter"] = {"input": delta.code_input, "outputs": outputs}
            else:
                call["file_search"] = {}
            yield self._step_delta(delta.step_id, call)
        elif kind == "error":
            error = event.error
            yield sse("error", {"message": error.message, "type": "server_error", "param": None,
                                "code": "server_error"})
