"""Run events as typed Python objects, the stream that yields them, and the loop that answers
a run's function calls with Python callables.

A run's server stream carries `parley.assistants.v1.RunEvent` protobufs; `RunStream` turns
each into one of the frozen dataclasses below (every one keeps its protobuf as `.raw`) and
keeps what a caller usually wants at hand: the text so far, the citations, the tool calls
assembled from their fragments, the run's latest snapshot and, at the end, its status and
usage.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import grpc

from parley.assistants.v1 import assistants_pb2
from parley.assistants.v1 import assistants_service_pb2 as assistants_api
from parley.sessions.v1 import sessions_pb2


class RunStatus(enum.IntEnum):
    """A run's status; the values are those of `parley.assistants.v1.RunStatus`."""

    UNSPECIFIED = assistants_pb2.RUN_STATUS_UNSPECIFIED
    QUEUED = assistants_pb2.RUN_STATUS_QUEUED
    IN_PROGRESS = assistants_pb2.RUN_STATUS_IN_PROGRESS
    REQUIRES_ACTION = assistants_pb2.RUN_STATUS_REQUIRES_ACTION
    CANCELLING = assistants_pb2.RUN_STATUS_CANCELLING
    CANCELLED = assistants_pb2.RUN_STATUS_CANCELLED
    FAILED = assistants_pb2.RUN_STATUS_FAILED
    COMPLETED = assistants_pb2.RUN_STATUS_COMPLETED
    INCOMPLETE = assistants_pb2.RUN_STATUS_INCOMPLETE
    EXPIRED = assistants_pb2.RUN_STATUS_EXPIRED

    @classmethod
    def of(cls, value: int) -> RunStatus:
        try:
            return cls(value)
        except ValueError:  # a status added to the contract after this client was built
            return cls.UNSPECIFIED

    @property
    def ended(self) -> bool:
        return self in TERMINAL

    @property
    def label(self) -> str:
        return self.name.lower()


TERMINAL = frozenset({RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.COMPLETED, RunStatus.INCOMPLETE,
                      RunStatus.EXPIRED})


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0

    @classmethod
    def of(cls, usage: assistants_pb2.Usage) -> Usage:
        return cls(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cost_usd)


@dataclass(frozen=True)
class Citation:
    """A cited passage: the marker in the text, where it is, and the source it names."""

    file_id: str
    filename: str
    page: int
    quote: str
    score: float
    marker: str
    start_index: int
    end_index: int
    content_index: int = 0

    @classmethod
    def of(cls, annotation: assistants_pb2.Annotation) -> Citation | None:
        if annotation.WhichOneof("annotation") != "file_citation":
            return None
        source = annotation.file_citation
        return cls(source.file_id, source.filename, source.page, source.quote, source.score, annotation.text,
                   annotation.start_index, annotation.end_index, annotation.content_index)


@dataclass
class ToolCall:
    """One tool call of a run, assembled from its fragments (or read from a step)."""

    id: str = ""
    type: str = "function"  # "function", "file_search" or "code_interpreter"
    name: str = ""
    arguments: str = ""
    output: str = ""
    # The engine answered it from its function result cache (FunctionTool.cache_ttl).
    cached: bool = False
    # file_search: the query; code_interpreter: the code.
    query: str = ""
    code: str = ""
    logs: str = ""

    @property
    def args(self) -> Any:
        """The JSON arguments, parsed (an empty dict when there are none)."""
        return json.loads(self.arguments) if self.arguments.strip() else {}

    @classmethod
    def of_detail(cls, detail: assistants_pb2.ToolCallDetail) -> ToolCall:
        kind = detail.WhichOneof("call")
        if kind == "function":
            f = detail.function
            return cls(detail.id, "function", f.name, f.arguments, f.output, cached=f.cached)
        if kind == "file_search":
            return cls(detail.id, "file_search", "file_search", query=detail.file_search.query)
        if kind == "code_interpreter":
            logs = "".join(o.logs for o in detail.code_interpreter.outputs)
            return cls(detail.id, "code_interpreter", "code_interpreter", code=detail.code_interpreter.input, logs=logs)
        return cls(detail.id, "")


TOOL_TYPES = {assistants_pb2.TOOL_CALL_TYPE_FUNCTION: "function",
              assistants_pb2.TOOL_CALL_TYPE_FILE_SEARCH: "file_search",
              assistants_pb2.TOOL_CALL_TYPE_CODE_INTERPRETER: "code_interpreter"}


# ---- events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    sequence: int
    run_id: str
    raw: assistants_pb2.RunEvent = field(repr=False, compare=False)


@dataclass(frozen=True)
class RunStatusChanged(_Event):
    status: RunStatus
    run: assistants_pb2.Run = field(repr=False, compare=False)

    @property
    def required_tool_calls(self) -> list[ToolCall]:
        """The function calls to answer, when the run now requires action."""
        return required_tool_calls(self.run)


@dataclass(frozen=True)
class StepCreated(_Event):
    step: assistants_pb2.RunStep = field(repr=False, compare=False)

    @property
    def type(self) -> str:
        return self.step.WhichOneof("step_details") or ""


@dataclass(frozen=True)
class StepUpdated(_Event):
    step: assistants_pb2.RunStep = field(repr=False, compare=False)

    @property
    def tool_calls(self) -> list[ToolCall]:
        if self.step.WhichOneof("step_details") != "tool_calls":
            return []
        return [ToolCall.of_detail(d) for d in self.step.tool_calls.tool_calls]

    @property
    def citations(self) -> list[Citation]:
        if self.step.WhichOneof("step_details") != "message_creation":
            return []
        return [c for a in self.step.message_creation.annotations if (c := Citation.of(a))]


@dataclass(frozen=True)
class MessageCreated(_Event):
    message: sessions_pb2.Message = field(repr=False, compare=False)

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.message.content)


@dataclass(frozen=True)
class TextDelta(_Event):
    text: str
    step_id: str
    index: int
    citations: tuple[Citation, ...] = ()


@dataclass(frozen=True)
class ToolCallDelta(_Event):
    step_id: str
    index: int
    id: str
    type: str
    name: str
    arguments: str
    code_input: str = ""
    code_logs: str = ""


@dataclass(frozen=True)
class RunErrored(_Event):
    code: str
    message: str


@dataclass(frozen=True)
class RunDone(_Event):
    status: RunStatus
    usage: Usage


RunEvent = Union[RunStatusChanged, StepCreated, StepUpdated, MessageCreated, TextDelta, ToolCallDelta, RunErrored,
                 RunDone]


def typed_event(event: assistants_pb2.RunEvent) -> RunEvent | None:
    """The typed form of one protobuf event (None for a kind this client does not know)."""
    head = (event.sequence, event.run_id, event)
    kind = event.WhichOneof("event")
    if kind == "run_status_changed":
        return RunStatusChanged(*head, RunStatus.of(event.run_status_changed.status), event.run_status_changed)
    if kind == "step_created":
        return StepCreated(*head, event.step_created)
    if kind == "step_updated":
        return StepUpdated(*head, event.step_updated)
    if kind == "message_created":
        return MessageCreated(*head, event.message_created)
    if kind == "message_delta":
        delta = event.message_delta
        citations = tuple(c for a in delta.annotations if (c := Citation.of(a)))
        return TextDelta(*head, delta.text, delta.step_id, delta.index, citations)
    if kind == "tool_call_delta":
        d = event.tool_call_delta
        return ToolCallDelta(*head, d.step_id, d.index, d.id, TOOL_TYPES.get(d.type, ""), d.name, d.arguments,
                             d.code_input, d.code_logs)
    if kind == "error":
        return RunErrored(*head, assistants_pb2.RunErrorCode.Name(event.error.code).removeprefix("RUN_ERROR_CODE_")
                          .lower(), event.error.message)
    if kind == "done":
        return RunDone(*head, RunStatus.of(event.done.status), Usage.of(event.done.usage))
    return None


def required_tool_calls(run: assistants_pb2.Run) -> list[ToolCall]:
    if run.status != assistants_pb2.RUN_STATUS_REQUIRES_ACTION:
        return []
    calls = run.required_action.submit_tool_outputs.tool_calls
    return [ToolCall(c.id, "function", c.name, c.arguments) for c in calls]


# ---- the stream ----------------------------------------------------------------------------


@dataclass
class RunResult:
    """What a run produced, once its stream (or the whole tool loop) has ended."""

    run_id: str
    session_id: str
    status: RunStatus
    text: str
    citations: list[Citation]
    tool_calls: list[ToolCall]
    usage: Usage
    run: assistants_pb2.Run | None = field(default=None, repr=False)

    @property
    def error(self) -> str:
        """`last_error` of a failed run ("" otherwise)."""
        return self.run.last_error.message if self.run is not None and self.run.HasField("last_error") else ""

    @property
    def incomplete_reason(self) -> str:
        if self.run is None or not self.run.HasField("incomplete_details"):
            return ""
        return assistants_pb2.IncompleteReason.Name(self.run.incomplete_details.reason) \
            .removeprefix("INCOMPLETE_REASON_").lower()


class RunStream:
    """The events of a run (StreamRun, SubmitToolOutputs or WatchRun), typed, in order, each once.

        stream = parley.assistants.stream_run(assistant.id, "What is in the report?")
        async for event in stream:
            if isinstance(event, TextDelta):
                print(event.text, end="")
        print(stream.status, stream.citations)

    If the connection breaks before the run is done, it resumes with WatchRun after the last
    sequence received (on any replica), up to `resume_attempts` times. A stream of StreamRun
    or SubmitToolOutputs ends at `done` or when the run requires action (`required_tool_calls`
    then says what to answer); WatchRun goes on through requires_action until `done`.
    `raw()` yields the protobufs instead. `cancel()` closes the stream; the run goes on.
    """

    def __init__(self, stub, call, *, run_id: str = "", after_sequence: int = 0, resume_attempts: int = 5,
                 timeout: float | None = None, until_action: bool = False) -> None:
        self._stub = stub
        self._call = call
        # StreamRun and SubmitToolOutputs end when the run requires action; a resumed stream
        # (WatchRun, which goes on through it) must end there too.
        self._until_action = until_action
        self._timeout = timeout
        self.run_id = run_id
        self.last_sequence = after_sequence
        self._resume_attempts = resume_attempts
        self.resumes = 0  # how often the stream was resumed with WatchRun
        self._source: AsyncIterator[assistants_pb2.RunEvent] | None = None
        self.run: assistants_pb2.Run | None = None
        self.status = RunStatus.UNSPECIFIED
        self.usage = Usage()
        self.done = False
        self._text: list[str] = []
        self.citations: list[Citation] = []
        # Keyed by call id; in the order the calls appeared.
        self._calls: dict[str, ToolCall] = {}
        self._call_ids: dict[tuple[str, int], str] = {}
        self.errors: list[RunErrored] = []

    # -- what the stream has shown so far --

    @property
    def text(self) -> str:
        """The text the run's messages streamed so far."""
        return "".join(self._text)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return list(self._calls.values())

    @property
    def session_id(self) -> str:
        return self.run.session_id if self.run is not None else ""

    @property
    def required_tool_calls(self) -> list[ToolCall]:
        """The function calls to answer with SubmitToolOutputs (empty unless the run requires action)."""
        return required_tool_calls(self.run) if self.run is not None else []

    # -- iteration --

    def raw(self) -> AsyncIterator[assistants_pb2.RunEvent]:
        if self._source is None:
            self._source = self._protobufs()
        return self._source

    def __aiter__(self) -> AsyncIterator[RunEvent]:
        return self._typed()

    async def _typed(self) -> AsyncIterator[RunEvent]:
        async for event in self.raw():
            typed = typed_event(event)
            if typed is not None:
                self._observe(typed)
                yield typed

    async def result(self) -> RunResult:
        """Reads the rest of the stream and returns what the run produced."""
        async for _ in self:
            pass
        return self.snapshot()

    def snapshot(self) -> RunResult:
        return RunResult(self.run_id, self.session_id, self.status, self.text, list(self.citations),
                         self.tool_calls, self.usage, self.run)

    def cancel(self) -> None:
        """Closes the stream (not the run: CancelRun stops a run)."""
        self._call.cancel()

    def _observe(self, event: RunEvent) -> None:
        if isinstance(event, RunStatusChanged):
            self.run, self.status = event.run, event.status
            for call in event.required_tool_calls:
                known = self._calls.setdefault(call.id, call)
                known.name, known.arguments = known.name or call.name, call.arguments or known.arguments
        elif isinstance(event, TextDelta):
            self._text.append(event.text)
            self.citations.extend(event.citations)
        elif isinstance(event, ToolCallDelta):
            call_id = event.id or self._call_ids.get((event.step_id, event.index), "")
            if event.id:
                self._call_ids[(event.step_id, event.index)] = event.id
            call = self._calls.setdefault(call_id, ToolCall(call_id, event.type or "function"))
            call.name = call.name or event.name
            call.arguments += event.arguments
            call.code += event.code_input
            call.logs += event.code_logs
        elif isinstance(event, StepUpdated):
            for detail in event.tool_calls:
                known = self._calls.setdefault(detail.id, detail)
                if known is not detail:  # the step's snapshot is the whole truth about the call
                    known.name = detail.name or known.name
                    known.arguments = detail.arguments or known.arguments
                    known.output = detail.output or known.output
                    known.cached = detail.cached or known.cached
                    known.query = detail.query or known.query
                    known.code = detail.code or known.code
                    known.logs = detail.logs or known.logs
            for citation in event.citations:
                if citation not in self.citations:
                    self.citations.append(citation)
        elif isinstance(event, RunErrored):
            self.errors.append(event)
        elif isinstance(event, RunDone):
            self.status, self.usage, self.done = event.status, event.usage, True

    async def _protobufs(self) -> AsyncIterator[assistants_pb2.RunEvent]:
        attempts = 0
        while True:
            try:
                async for response in self._call:
                    event = response.event
                    if event.sequence and event.sequence <= self.last_sequence:
                        continue  # already seen before a resume
                    self.last_sequence = event.sequence or self.last_sequence
                    self.run_id = self.run_id or event.run_id
                    yield event
                    kind = event.WhichOneof("event")
                    if kind == "done" or (self._until_action and kind == "run_status_changed" and
                                          event.run_status_changed.status == assistants_pb2.RUN_STATUS_REQUIRES_ACTION):
                        return
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or not self.run_id or attempts >= self._resume_attempts:
                    raise
                attempts += 1
                await asyncio.sleep(min(0.2 * 2 ** attempts, 5.0))
                self.resumes += 1
                self._call = self._stub.WatchRun(assistants_api.WatchRunRequest(
                    run_id=self.run_id, after_sequence=self.last_sequence), timeout=self._timeout)


# ---- answering function calls with Python callables ------------------------------------------

Function = Callable[..., Any] | Callable[..., Awaitable[Any]]


async def call_function(functions: Mapping[str, Function], call: ToolCall) -> str:
    """Runs one function call: keyword arguments from its JSON object (a non-object is passed
    as the only argument), sync callables in a thread, async ones awaited. The result is sent
    as is when it is a string, as JSON otherwise; an exception or an unknown name becomes
    `{"error": "..."}`, so the model reads what went wrong and the run goes on."""
    function = functions.get(call.name)
    if function is None:
        return json.dumps({"error": f"function {call.name!r} is not available"})
    try:
        args = call.args
        if inspect.iscoroutinefunction(function):
            result = await (function(**args) if isinstance(args, dict) else function(args))
        else:
            result = await asyncio.to_thread(lambda: function(**args) if isinstance(args, dict) else function(args))
            if inspect.isawaitable(result):
                result = await result
    except Exception as exc:  # noqa: BLE001 - the model gets the failure as the call's output
        return json.dumps({"error": f"{type(exc).__name__}: {exc}"})
    return result if isinstance(result, str) else json.dumps(result, default=str)


class FunctionRun:
    """A run driven to its end by this client: whenever it requires action, every pending
    function call is answered by the matching Python callable (concurrently) and the outputs
    are submitted, until the run ends. Iterate it for the events of every round, or
    `await run.result()`.

        result = await parley.assistants.run(assistant.id, "Weather in Paris and Rome?",
                                             functions={"get_weather": get_weather})
        print(result.text)
    """

    def __init__(self, assistants, first: RunStream, functions: Mapping[str, Function]) -> None:
        self._assistants = assistants
        self._functions = dict(functions)
        self.stream = first
        self.rounds = 0
        self.answered: list[ToolCall] = []
        self._text: list[str] = []
        self._citations: list[Citation] = []
        self._calls: dict[str, ToolCall] = {}
        self._source: AsyncIterator[RunEvent] | None = None

    def __aiter__(self) -> AsyncIterator[RunEvent]:
        if self._source is None:
            self._source = self._events()
        return self._source

    async def result(self) -> RunResult:
        async for _ in self:
            pass
        return self._result()

    def _result(self) -> RunResult:
        last = self.stream.snapshot()
        return RunResult(last.run_id, last.session_id, last.status, "".join(self._text), list(self._citations),
                         list(self._calls.values()), last.usage, last.run)

    def _absorb(self, stream: RunStream) -> None:
        self._text.append(stream.text)
        self._citations.extend(stream.citations)
        for call in stream.tool_calls:
            self._calls[call.id] = call

    async def _events(self) -> AsyncIterator[RunEvent]:
        stream, stalled = self.stream, 0
        while True:
            before = stream.last_sequence
            async for event in stream:
                yield event
            self._absorb(stream)
            if stream.done or stream.status.ended:
                return
            pending = stream.required_tool_calls
            if stream.status != RunStatus.REQUIRES_ACTION or not pending:
                # The stream closed before the run ended (e.g. StreamRun's server went away
                # without UNAVAILABLE): follow the run to its end.
                stalled = stalled + 1 if stream.last_sequence == before else 0
                if stalled >= 3 or not stream.run_id:
                    raise RuntimeError(f"run {stream.run_id or '?'}: its event stream ended before the run did")
                previous = stream
                stream = self._assistants.watch_run(stream.run_id, after_sequence=stream.last_sequence)
                stream.run = previous.run
                self.stream = stream
                continue
            outputs = await asyncio.gather(*(call_function(self._functions, call) for call in pending))
            for call, output in zip(pending, outputs, strict=True):
                call.output = output
                self._calls[call.id] = call
                self.answered.append(call)
            self.rounds += 1
            previous = stream
            stream = self._assistants.submit_tool_outputs(
                stream.run_id, {call.id: output for call, output in zip(pending, outputs, strict=True)},
                after_sequence=stream.last_sequence)
            stream.run = previous.run
            self.stream = stream
