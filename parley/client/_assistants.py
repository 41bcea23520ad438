"""The assistants surface of `ParleyClient`: assistants CRUD, runs (streamed, background,
watched, cancelled), their steps, tool outputs, and `run()`, which answers function calls
with Python callables until the run ends."""

from __future__ import annotations

import inspect
import typing
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.struct_pb2 import Struct

from parley.assistants.v1 import assistants_pb2
from parley.assistants.v1 import assistants_service_pb2 as assistants_api
from parley.assistants.v1 import assistants_service_pb2_grpc as assistants_grpc
from parley.client._runs import Function, FunctionRun, RunStream
from parley.sessions.v1 import sessions_pb2

BUSY_SESSION = {
    "reject": assistants_pb2.BUSY_SESSION_STRATEGY_REJECT,
    "queue": assistants_pb2.BUSY_SESSION_STRATEGY_QUEUE,
    "cancel_active": assistants_pb2.BUSY_SESSION_STRATEGY_CANCEL_ACTIVE,
    "interrupt": assistants_pb2.BUSY_SESSION_STRATEGY_CANCEL_ACTIVE,
}
TOOL_CHOICE = {
    "none": assistants_pb2.TOOL_CHOICE_TYPE_NONE,
    "auto": assistants_pb2.TOOL_CHOICE_TYPE_AUTO,
    "required": assistants_pb2.TOOL_CHOICE_TYPE_REQUIRED,
}
UPDATABLE = ("name", "description", "model", "instructions", "tools", "tool_resources", "temperature", "top_p",
             "response_format", "metadata")
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object",
              tuple: "array"}

ToolLike = assistants_pb2.Tool | Callable[..., Any]


# ---- building tools --------------------------------------------------------------------------


def _struct(value: Mapping[str, Any]) -> Struct:
    struct = Struct()
    struct.update(dict(value))
    return struct


def _json_type(annotation: Any) -> dict:
    origin = typing.get_origin(annotation) or annotation
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _json_type(options[0]) if len(options) == 1 else {}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(annotation))}
    kind = JSON_TYPES.get(origin)
    return {"type": kind} if kind else {}


def parameters_of(function: Callable[..., Any]) -> dict:
    """A JSON Schema object of a callable's parameters, from its signature and type hints."""
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - unresolvable hints only cost the types
        hints = {}
    properties, required = {}, []
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        properties[name] = _json_type(hints.get(name, Any))
        if parameter.default is parameter.empty:
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _set_cache_ttl(function: assistants_pb2.FunctionTool, ttl: float | timedelta) -> None:
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    descriptor = function.DESCRIPTOR.fields_by_name.get("cache_ttl")
    if descriptor is None:
        raise ValueError("this server contract has no function cache_ttl")
    if descriptor.message_type is not None:  # google.protobuf.Duration
        function.cache_ttl.FromTimedelta(timedelta(seconds=seconds))
    else:
        setattr(function, "cache_ttl", type(getattr(function, "cache_ttl"))(seconds))


def function_tool(function: Callable[..., Any] | str, *, description: str | None = None,
                  parameters: Mapping[str, Any] | None = None, strict: bool = False,
                  cache_ttl: float | timedelta | None = None, name: str | None = None) -> assistants_pb2.Tool:
    """A function tool, from a callable (its name, docstring and signature) or from a name and
    a JSON Schema. `cache_ttl` lets the engine answer a repeated call (same name and arguments,
    same user) from its cache for that long instead of asking again."""
    if callable(function):
        tool_name = name or function.__name__
        description = description if description is not None else inspect.getdoc(function) or ""
        parameters = parameters if parameters is not None else parameters_of(function)
    else:
        tool_name = name or function
    spec = assistants_pb2.FunctionTool(name=tool_name, description=(description or "")[:1024], strict=strict)
    if parameters is not None:
        spec.parameters.CopyFrom(_struct(parameters))
    if cache_ttl is not None:
        _set_cache_ttl(spec, cache_ttl)
    return assistants_pb2.Tool(function=spec)


def file_search_tool(vector_store_ids: Sequence[str] = (), *, max_num_results: int = 0,
                     score_threshold: float | None = None) -> assistants_pb2.Tool:
    tool = assistants_pb2.FileSearchTool(vector_store_ids=list(vector_store_ids), max_num_results=max_num_results)
    if score_threshold is not None:
        tool.ranking_options.score_threshold = score_threshold
    return assistants_pb2.Tool(file_search=tool)


def code_interpreter_tool() -> assistants_pb2.Tool:
    return assistants_pb2.Tool(code_interpreter=assistants_pb2.CodeInterpreterTool())


def _tools(tools: Iterable[ToolLike]) -> list[assistants_pb2.Tool]:
    return [t if isinstance(t, assistants_pb2.Tool) else function_tool(t) for t in tools]


def _resources(vector_store_ids: Sequence[str] = (), code_file_ids: Sequence[str] = ()) -> assistants_pb2.ToolResources:
    resources = assistants_pb2.ToolResources()
    if vector_store_ids:
        resources.file_search.vector_store_ids.extend(vector_store_ids)
    if code_file_ids:
        resources.code_interpreter.file_ids.extend(code_file_ids)
    return resources


def user_turn(text: str, *, file_ids: Sequence[str] = (), tools: Sequence[str] = ("file_search",),
              metadata: Mapping[str, str] | None = None) -> sessions_pb2.Message:
    """A user message for a run's `additional_messages` (files attached for `tools`)."""
    return sessions_pb2.Message(role=sessions_pb2.ROLE_USER, content=[sessions_pb2.ContentPart(text=text)],
                                attachments=[sessions_pb2.Attachment(file_id=f, tools=list(tools)) for f in file_ids],
                                metadata=dict(metadata or {}))


def run_request(assistant_id: str, prompt: str | sessions_pb2.Message | None = None, *, session_id: str = "",
                session_title: str = "", messages: Sequence[sessions_pb2.Message] = (), model: str = "",
                instructions: str = "", additional_instructions: str = "", tools: Iterable[ToolLike] = (),
                vector_store_ids: Sequence[str] = (), file_ids: Sequence[str] = (),
                temperature: float | None = None, top_p: float | None = None, max_prompt_tokens: int = 0,
                max_completion_tokens: int = 0, last_messages: int | None = None, tool_choice: str | None = None,
                parallel_tool_calls: bool | None = None, variables: Mapping[str, str] | None = None,
                metadata: Mapping[str, str] | None = None, busy_session: str | int | None = None,
                response_format: assistants_pb2.ResponseFormat | None = None) -> assistants_api.CreateRunRequest:
    """A CreateRunRequest from keyword options. `prompt` (with `file_ids` attached) is the next
    user message; without `session_id` a new session is created holding it. `tool_choice` is
    "none", "auto", "required" or a function's name; `busy_session` is "reject", "queue" or
    "cancel_active" (unset: the server's default, queue); `variables` fill the instructions'
    `{{name}}` placeholders."""
    turns = list(messages)
    if prompt is not None:
        turns.append(prompt if isinstance(prompt, sessions_pb2.Message) else user_turn(prompt, file_ids=file_ids))
    request = assistants_api.CreateRunRequest(
        assistant_id=assistant_id, session_id=session_id, model=model, instructions=instructions,
        additional_instructions=additional_instructions, tools=_tools(tools),
        max_prompt_tokens=max_prompt_tokens, max_completion_tokens=max_completion_tokens,
        metadata=dict(metadata or {}))
    if session_id:
        request.additional_messages.extend(turns)
    else:
        request.session.CopyFrom(assistants_api.NewSession(title=session_title, messages=turns))
    if vector_store_ids:
        request.tool_resources.CopyFrom(_resources(vector_store_ids))
    if temperature is not None:
        request.temperature = temperature
    if top_p is not None:
        request.top_p = top_p
    if last_messages is not None:
        request.truncation_strategy.CopyFrom(assistants_pb2.TruncationStrategy(
            type=assistants_pb2.TRUNCATION_TYPE_LAST_MESSAGES, last_messages=last_messages))
    if tool_choice is not None:
        if tool_choice in TOOL_CHOICE:
            request.tool_choice.type = TOOL_CHOICE[tool_choice]
        else:
            request.tool_choice.CopyFrom(assistants_pb2.ToolChoice(type=assistants_pb2.TOOL_CHOICE_TYPE_FUNCTION,
                                                                   function_name=tool_choice))
    if parallel_tool_calls is not None:
        request.parallel_tool_calls = parallel_tool_calls
    if variables:
        request.variables.update(dict(variables))
    if busy_session is not None:
        request.busy_session_strategy = BUSY_SESSION[busy_session] if isinstance(busy_session, str) else busy_session
    if response_format is not None:
        request.response_format.CopyFrom(response_format)
    return request


# ---- the client surface ----------------------------------------------------------------------


class Assistants:
    """`parley.assistants`: assistants and their runs. Every method acts as the caller; another
    user's assistant or run answers NOT_FOUND. The generated stub is `parley.assistants.stub`."""

    def __init__(self, channel, timeout: float | None) -> None:
        self.stub = assistants_grpc.AssistantServiceStub(channel)
        self._timeout = timeout

    # -- assistants --

    async def create(self, name: str = "", *, model: str, instructions: str = "", description: str = "",
                     tools: Iterable[ToolLike] = (), vector_store_ids: Sequence[str] = (),
                     code_file_ids: Sequence[str] = (), temperature: float | None = None, top_p: float | None = None,
                     response_format: assistants_pb2.ResponseFormat | None = None,
                     metadata: Mapping[str, str] | None = None) -> assistants_pb2.Assistant:
        """Tools are `assistants_pb2.Tool`s or plain callables (see `function_tool`)."""
        request = assistants_api.CreateAssistantRequest(
            name=name, description=description, model=model, instructions=instructions, tools=_tools(tools),
            tool_resources=_resources(vector_store_ids, code_file_ids), metadata=dict(metadata or {}),
            response_format=response_format)
        if temperature is not None:
            request.temperature = temperature
        if top_p is not None:
            request.top_p = top_p
        return await self.stub.CreateAssistant(request, timeout=self._timeout)

    async def get(self, assistant_id: str) -> assistants_pb2.Assistant:
        return await self.stub.GetAssistant(assistants_api.GetAssistantRequest(assistant_id=assistant_id),
                                            timeout=self._timeout)

    async def list(self, *, page_size: int = 20, page_token: str = "") -> assistants_api.ListAssistantsResponse:
        return await self.stub.ListAssistants(assistants_api.ListAssistantsRequest(
            page_size=page_size, page_token=page_token), timeout=self._timeout)

    async def all(self) -> AsyncIterator[assistants_pb2.Assistant]:
        token = ""
        while True:
            page = await self.list(page_size=100, page_token=token)
            for assistant in page.assistants:
                yield assistant
            token = page.next_page_token
            if not token:
                return

    async def update(self, assistant_id: str, *, tools: Iterable[ToolLike] | None = None,
                     vector_store_ids: Sequence[str] | None = None, **fields: Any) -> assistants_pb2.Assistant:
        """Writes only the fields given (lists and maps replaced whole), e.g.
        `update(id, instructions="…", temperature=0.2)`."""
        unknown = set(fields) - set(UPDATABLE)
        if unknown:
            raise TypeError(f"not updatable: {', '.join(sorted(unknown))}")
        assistant = assistants_pb2.Assistant(id=assistant_id)
        paths = []
        for name, value in fields.items():
            if name == "metadata":
                assistant.metadata.update(dict(value))
            elif name in ("response_format", "tool_resources"):
                getattr(assistant, name).CopyFrom(value)
            else:
                setattr(assistant, name, value)
            paths.append(name)
        if tools is not None:
            assistant.tools.extend(_tools(tools))
            paths.append("tools")
        if vector_store_ids is not None:
            assistant.tool_resources.CopyFrom(_resources(vector_store_ids))
            paths.append("tool_resources")
        return await self.stub.UpdateAssistant(assistants_api.UpdateAssistantRequest(
            assistant=assistant, update_mask=FieldMask(paths=paths)), timeout=self._timeout)

    async def delete(self, assistant_id: str) -> None:
        await self.stub.DeleteAssistant(assistants_api.DeleteAssistantRequest(assistant_id=assistant_id),
                                        timeout=self._timeout)

    # -- runs --

    def stream_run(self, assistant: str | assistants_api.CreateRunRequest, prompt: str | None = None, *,
                   timeout: float | None = None, **options: Any) -> RunStream:
        """Creates a run and streams its typed events (see RunStream and `run_request` for the
        options). The stream ends at `done` or when the run requires action."""
        request = assistant if isinstance(assistant, assistants_api.CreateRunRequest) \
            else run_request(assistant, prompt, **options)
        call = self.stub.StreamRun(assistants_api.StreamRunRequest(run=request), timeout=timeout)
        return RunStream(self.stub, call, timeout=timeout, until_action=True)

    async def create_run(self, assistant: str | assistants_api.CreateRunRequest, prompt: str | None = None,
                         **options: Any) -> assistants_pb2.Run:
        """Starts a run in the background (follow it with `watch_run` or `get_run`)."""
        request = assistant if isinstance(assistant, assistants_api.CreateRunRequest) \
            else run_request(assistant, prompt, **options)
        return await self.stub.CreateRun(request, timeout=self._timeout)

    def run(self, assistant: str | assistants_api.CreateRunRequest, prompt: str | None = None, *,
            functions: Mapping[str, Function] | Iterable[Callable[..., Any]] = (), timeout: float | None = None,
            **options: Any) -> FunctionRun:
        """Runs an assistant to the end, answering its function calls with `functions` (a dict
        of name → callable, or callables named by `__name__`; sync ones run in a thread, async
        ones are awaited, parallel calls concurrently). `await parley.assistants.run(...).result()`
        or iterate it for the events of every round."""
        table = dict(functions) if isinstance(functions, Mapping) else {f.__name__: f for f in functions}
        return FunctionRun(self, self.stream_run(assistant, prompt, timeout=timeout, **options), table)

    def watch_run(self, run_id: str, *, after_sequence: int = 0, timeout: float | None = None) -> RunStream:
        """Every event after `after_sequence`, then the live tail until the run ends."""
        call = self.stub.WatchRun(assistants_api.WatchRunRequest(run_id=run_id, after_sequence=after_sequence),
                                  timeout=timeout)
        return RunStream(self.stub, call, run_id=run_id, after_sequence=after_sequence, timeout=timeout)

    def submit_tool_outputs(self, run_id: str, outputs: Mapping[str, str], *, after_sequence: int = 0,
                            timeout: float | None = None) -> RunStream:
        """Answers every pending call (tool_call_id → output) and streams the resumed run."""
        call = self.stub.SubmitToolOutputs(assistants_api.SubmitToolOutputsRequest(
            run_id=run_id, tool_outputs=[assistants_api.ToolOutput(tool_call_id=k, output=v)
                                         for k, v in outputs.items()]), timeout=timeout)
        return RunStream(self.stub, call, run_id=run_id, after_sequence=after_sequence, timeout=timeout,
                         until_action=True)

    async def get_run(self, run_id: str) -> assistants_pb2.Run:
        return await self.stub.GetRun(assistants_api.GetRunRequest(run_id=run_id), timeout=self._timeout)

    async def list_runs(self, session_id: str, *, page_size: int = 20,
                        page_token: str = "") -> assistants_api.ListRunsResponse:
        return await self.stub.ListRuns(assistants_api.ListRunsRequest(
            session_id=session_id, page_size=page_size, page_token=page_token), timeout=self._timeout)

    async def list_steps(self, run_id: str) -> list[assistants_pb2.RunStep]:
        """Every step of the run, oldest first."""
        steps, token = [], ""
        while True:
            page = await self.stub.ListRunSteps(assistants_api.ListRunStepsRequest(
                run_id=run_id, page_size=100, page_token=token), timeout=self._timeout)
            steps.extend(page.run_steps)
            token = page.next_page_token
            if not token:
                return steps

    async def cancel_run(self, run_id: str) -> assistants_pb2.Run:
        return await self.stub.CancelRun(assistants_api.CancelRunRequest(run_id=run_id), timeout=self._timeout)
