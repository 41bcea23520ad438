"""Executing a run on this replica: the loop of model calls and tool rounds, from IN_PROGRESS
to an end (completed, incomplete, failed, cancelled) or to REQUIRES_ACTION.

Order of events, as Assistants v2 clients expect: the run's status change, then per model
call a step_created before any of its deltas (message_delta for text, tool_call_delta for
calls), the complete message (message_created) once it is stored in the session, the step's
step_updated when it ends, and at the end the run's last status change, an error if it
failed, and done. A status change is stored before any watcher sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import json_format
from opentelemetry import context as otel_context
from opentelemetry import trace
from google.protobuf.field_mask_pb2 import FieldMask

from parley.assistants.v1 import assistants_pb2 as apb
from parley.llm.v1 import llm_pb2 as lpb
from parley.llm.v1 import llm_service_pb2 as lapi
from parley.runstore.v1 import runstore_service_pb2 as rs
from parley.sessions.v1 import sessions_pb2 as spb
from services.assistants import prompt as prompts
from services.assistants.citations import CitationStream
from services.assistants.events import LeaseLost, RunEventLog, StatusChange, now_stamp, stamp_in
from services.assistants.identity import UserIdentity
from services.assistants.tools.base import (
    FunctionSpec,
    RunScope,
    SearchHit,
    StoredFile,
    ToolCall,
    ToolContext,
    ToolError,
    ToolOutputDelta,
)
from services.runtime import errors, metrics

if TYPE_CHECKING:
    from services.assistants.runs import Runs

log = logging.getLogger("parley.assistants.execution")
tracer = trace.get_tracer("parley.assistants")

SESSION_STORE_KEY = "parley_file_search_store"
STATUS_WATCH_DELAY_SECONDS = 0.5
_TOOL_TYPES = {"function": apb.TOOL_CALL_TYPE_FUNCTION, "file_search": apb.TOOL_CALL_TYPE_FILE_SEARCH,
               "code_interpreter": apb.TOOL_CALL_TYPE_CODE_INTERPRETER}
_RESPONSE_TYPES = {apb.RESPONSE_FORMAT_TYPE_TEXT: lpb.RESPONSE_FORMAT_TYPE_TEXT,
                   apb.RESPONSE_FORMAT_TYPE_JSON_OBJECT: lpb.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
                   apb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: lpb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA}


def _tool_dict(tool: apb.Tool) -> dict:
    return json_format.MessageToDict(tool, preserving_proto_field_name=True)


def _add_usage(total: apb.Usage, prompt_tokens: int, completion_tokens: int, cost: float) -> None:
    total.prompt_tokens += prompt_tokens
    total.completion_tokens += completion_tokens
    total.total_tokens = total.prompt_tokens + total.completion_tokens
    total.cost_usd += cost


class RunFilesOf:
    """`RunFiles` for tools: the files service as the run's user."""

    def __init__(self, files, who) -> None:
        self._files, self._who = files, who

    async def read(self, file_id: str) -> StoredFile:
        filename, data = await self._files.download(self._who, file_id)
        return StoredFile(file_id=file_id, filename=filename, data=data)

    async def write(self, filename: str, data: bytes, *, media_type: str = "") -> str:
        return await self._files.upload(self._who, filename, data, media_type)


@dataclass
class Turn:
    text: str = ""
    message_step: apb.RunStep | None = None
    tool_step: apb.RunStep | None = None
    # By the model's index: {"id", "name", "arguments"}.
    calls: dict[int, dict] = field(default_factory=dict)
    finish: int = lpb.FINISH_REASON_UNSPECIFIED
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cancelled: bool = False
    citations: CitationStream | None = None


class Cancelled(Exception):
    pass


class Execution:
    def __init__(self, runs: Runs, who: UserIdentity, run: apb.Run, log_: RunEventLog,
                 outputs: dict[str, str] | None) -> None:
        self.runs = runs
        self.who = who
        self.run = run
        self.log = log_
        self.outputs = outputs
        self.started_after = 0
        self.holds_lease = True
        self.task: asyncio.Task | None = None
        self._cancel = False
        self._abandoned = False
        self._stream_task: asyncio.Task | None = None
        self._hits: list[SearchHit] = []
        # Files the code interpreter produced in this run, by path under /mnt/data -> file id.
        self._produced: dict[str, str] = {}
        self._filenames: dict[str, str] = {}
        # Image files of user messages, read once, for models with vision.
        self._images: dict[str, tuple[bytes, str]] = {}
        self._model: lpb.Model | None = None
        self._model_calls = 0
        self._used_ids: set[str] = set()
        self._vector_stores: list[str] | None = None
        # The session's messages read while the run was taken (see begin), for the first prompt.
        self._first_messages: asyncio.Task | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    async def begin(cls, runs: Runs, who: UserIdentity, run: apb.Run, *, expected: tuple[int, ...],
                    outputs: dict[str, str] | None = None, require_session_head: bool = False) -> Execution:
        """Takes the run (compare-and-set to IN_PROGRESS with this replica's lease and the status
        event) and starts executing it. Aborted if another replica or client got there first."""
        local = runs.local.open(run.id, run.last_sequence + 1)
        event_log = RunEventLog(runs.store, who, run.id, run.last_sequence, local,
                                flush_seconds=runs.settings.event_flush_seconds)
        started = apb.Run()
        started.CopyFrom(run)
        started.status = apb.RUN_STATUS_IN_PROGRESS
        started.ClearField("required_action")
        started.ClearField("expire_time")
        paths = ["status", "required_action", "expire_time"]
        if not run.HasField("start_time"):
            started.start_time.CopyFrom(now_stamp())
            paths.append("start_time")
        # The session's messages (the first prompt's input) are read while the run is being
        # taken, so the model call does not wait for one more round trip after it.
        messages = asyncio.create_task(runs.sessions.list_messages(who, run.session_id)) if outputs is None else None
        try:
            stored = await event_log.commit(StatusChange(run=started, paths=paths, expected=expected,
                                                         lease=runs.lease(), require_session_head=require_session_head),
                                            run_status_changed=True)
        except LeaseLost as exc:
            await _drop(messages)
            await event_log.close(ended=False)
            raise errors.Aborted(str(exc), reason="RUN_EVENT_SEQUENCE_CONFLICT") from None
        except BaseException:
            await _drop(messages)
            await event_log.close(ended=False)
            raise
        started.last_sequence = stored.last_sequence
        execution = cls(runs, who, started, event_log, outputs)
        execution._first_messages = messages
        execution.started_after = run.last_sequence
        runs.executions[run.id] = execution
        execution.task = asyncio.create_task(execution._main(), name=f"run-{run.id}")
        return execution

    def request_cancel(self) -> None:
        self._cancel = True
        if self._stream_task is not None and not self._stream_task.done():
            self._stream_task.cancel()

    async def abandon(self) -> None:
        """Stops working on the run without writing anything (lease lost, or shutting down):
        whoever claims it next ends it."""
        self._abandoned = True
        self.holds_lease = False
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def _watch_status(self) -> None:
        """Hears CancelRun from any replica: the run's stored status becoming CANCELLING.

        Opened only once the run has gone on for STATUS_WATCH_DELAY_SECONDS: the watch reads
        the run's status on every change of the run (each event batch), which for a short run
        cost more of the run store's time than the rest of the run. Its first read sees a
        cancel made meanwhile, so a cancel from another replica is heard at most that much
        later; one made on this replica stops the run directly (Runs.cancel)."""
        await asyncio.sleep(STATUS_WATCH_DELAY_SECONDS)
        while True:
            try:
                async for change in self.runs.store.watch(self.who, rs.WatchRunEventsRequest(
                        run_id=self.run.id, after_sequence=0, status_only=True)):
                    if change.status == apb.RUN_STATUS_CANCELLING:
                        self.request_cancel()
                return
            except errors.ParleyError:
                await asyncio.sleep(1.0)

    async def _main(self) -> None:
        # The run's span: a child of the call that started it (the task keeps that call's
        # context after the caller has left); its model calls and tools are its children.
        span = tracer.start_span("assistants.run", attributes={
            "parley.run.id": self.run.id, "gen_ai.conversation.id": self.run.session_id})
        attached = otel_context.attach(trace.set_span_in_context(span))
        watcher = asyncio.create_task(self._watch_status())
        ended = False
        try:
            if self.outputs is not None:
                await self._apply_outputs(self.outputs)
            ended = await self._loop()
        except LeaseLost as exc:
            log.warning("run %s: another writer took its log (%s); stopping here", self.run.id, exc)
        except asyncio.CancelledError:
            if not self._abandoned:
                raise
        except Exception as exc:  # noqa: BLE001 - every failure ends the run with a reason
            ended = await self._fail_safely(exc)
        finally:
            await _drop(self._first_messages)
            self._first_messages = None
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
            self.holds_lease = False
            if self.runs.executions.get(self.run.id) is self:
                del self.runs.executions[self.run.id]
            await self.log.close(ended=ended)
            self.runs.wake()
            span.set_attribute("parley.run.status", apb.RunStatus.Name(self.run.status))
            span.end()
            otel_context.detach(attached)

    async def _fail_safely(self, exc: Exception) -> bool:
        code, message = _failure(exc)
        if code == apb.RUN_ERROR_CODE_SERVER_ERROR and not isinstance(exc, errors.ParleyError):
            log.exception("run %s failed", self.run.id, exc_info=exc)
        else:
            log.warning("run %s failed: %s", self.run.id, getattr(exc, "reason", type(exc).__name__))
        error = apb.RunError(code=code, message=message)
        try:
            for step in await self._steps():
                if step.status == apb.RUN_STEP_STATUS_IN_PROGRESS:
                    failed = apb.RunStep()
                    failed.CopyFrom(step)
                    failed.last_error.CopyFrom(error)
                    await self._end_step(failed, apb.RUN_STEP_STATUS_FAILED, ["last_error"])
            await self._end(apb.RUN_STATUS_FAILED, error=error)
            return True
        except Exception:  # noqa: BLE001 - the lease will lapse and another replica ends it
            log.exception("run %s: could not store its failure", self.run.id)
            return False

    # -- the loop -----------------------------------------------------------------------------

    def _specs(self) -> tuple[list[FunctionSpec], dict[str, apb.Tool]]:
        specs: list[FunctionSpec] = []
        by_name: dict[str, apb.Tool] = {}
        for tool in self.run.tools:
            kind = tool.WhichOneof("tool")
            if kind == "function":
                parameters = json_format.MessageToDict(tool.function.parameters) if tool.function.HasField(
                    "parameters") else {}
                spec = FunctionSpec(tool.function.name, tool.function.description, parameters, tool.function.strict)
            elif kind in self.runs.executors:
                spec = self.runs.executors[kind].function(_tool_dict(tool))
            else:
                continue
            specs.append(spec)
            by_name[spec.name] = tool
        return specs, by_name

    async def _steps(self) -> list[apb.RunStep]:
        return await self.runs._all_steps(self.who, self.run.id)

    async def _loop(self) -> bool:
        specs, by_name = self._specs()
        if self.run.tool_choice.type == apb.TOOL_CHOICE_TYPE_NONE:
            specs = []
        # A run that starts from the queue has no steps yet; a resumed one reads them.
        steps = await self._steps() if self.outputs is not None or self.started_after > 1 else []
        for step in steps:
            if step.WhichOneof("step_details") == "tool_calls":
                for detail in step.tool_calls.tool_calls:
                    self._used_ids.add(detail.id)
                    if detail.WhichOneof("call") == "file_search":
                        self._hits += prompts.hits_of(detail)
        self._model = await self.runs.model_info(self.who, self.run.model)
        while True:
            if self._cancel:
                await self._cancelled(None)
                return True
            usage = self.run.usage
            if self.run.max_prompt_tokens and usage.prompt_tokens >= self.run.max_prompt_tokens:
                return await self._incomplete(apb.INCOMPLETE_REASON_MAX_PROMPT_TOKENS)
            if self.run.max_completion_tokens and usage.completion_tokens >= self.run.max_completion_tokens:
                return await self._incomplete(apb.INCOMPLETE_REASON_MAX_COMPLETION_TOKENS)
            if self._model_calls >= self.runs.settings.max_model_calls:
                raise errors.FailedPrecondition(
                    f"the run made {self._model_calls} model calls without finishing", reason="TOO_MANY_MODEL_CALLS")
            if self._first_messages is not None:
                task, self._first_messages = self._first_messages, None
                session_messages = await task
            else:
                session_messages = await self.runs.sessions.list_messages(self.who, self.run.session_id)
            await self._learn_filenames(session_messages)
            budget = self.run.max_prompt_tokens - usage.prompt_tokens if self.run.max_prompt_tokens else None
            reserve = self._output_reserve()
            try:
                built = await prompts.build(
                    self.runs.llm, self.who, self.run, session_messages=session_messages, steps=steps, specs=specs,
                    filenames=self._filenames, context_window=int(self._model.context_window),
                    prompt_budget=budget, output_reserve=reserve, images=self._images)
            except prompts.PromptTooLong:
                return await self._incomplete(apb.INCOMPLETE_REASON_MAX_PROMPT_TOKENS)
            self._model_calls += 1
            with tracer.start_as_current_span("assistants.model_call",
                                              attributes={"parley.run.model_call": self._model_calls}):
                turn = await self._stream_turn(built, specs)
            _add_usage(self.run.usage, turn.prompt_tokens, turn.completion_tokens, turn.cost)
            if turn.cancelled:
                await self._cancelled(turn)
                return True
            incomplete = None
            if turn.finish == lpb.FINISH_REASON_CONTENT_FILTER:
                incomplete = apb.INCOMPLETE_REASON_CONTENT_FILTER
            elif turn.finish == lpb.FINISH_REASON_LENGTH and self.run.max_completion_tokens and \
                    self.run.usage.completion_tokens >= self.run.max_completion_tokens - 1:
                incomplete = apb.INCOMPLETE_REASON_MAX_COMPLETION_TOKENS
            elif self.run.max_completion_tokens and self.run.usage.completion_tokens > self.run.max_completion_tokens:
                incomplete = apb.INCOMPLETE_REASON_MAX_COMPLETION_TOKENS
            elif self.run.max_prompt_tokens and self.run.usage.prompt_tokens > self.run.max_prompt_tokens:
                incomplete = apb.INCOMPLETE_REASON_MAX_PROMPT_TOKENS
            await self._finish_message(turn, incomplete=incomplete is not None)
            if turn.finish == lpb.FINISH_REASON_ERROR:
                raise errors.Unavailable("the model failed in the middle of its answer", reason="PROVIDER_ERROR")
            if incomplete is not None:
                if turn.tool_step is not None:
                    await self._end_step(turn.tool_step, apb.RUN_STEP_STATUS_CANCELLED)
                return await self._incomplete(incomplete)
            if not turn.calls:
                await self._end(apb.RUN_STATUS_COMPLETED)
                return True
            waiting = await self._tool_round(turn, by_name)
            if waiting:
                return False
            steps = await self._steps()

    def _output_reserve(self) -> int:
        remaining = None
        if self.run.max_completion_tokens:
            remaining = max(self.run.max_completion_tokens - self.run.usage.completion_tokens, 1)
        cap = int(self._model.max_output_tokens) if self._model and self._model.max_output_tokens else 0
        reserve = min(prompts.DEFAULT_OUTPUT_RESERVE, cap) if cap else prompts.DEFAULT_OUTPUT_RESERVE
        return min(reserve, remaining) if remaining else reserve

    async def _learn_filenames(self, messages) -> None:
        vision = lpb.MODEL_CAPABILITY_VISION in self._model.capabilities
        for message in messages:
            for part in message.content:
                file_id = part.image_file.file_id if part.WhichOneof("part") == "image_file" else ""
                if vision and file_id and file_id not in self._images and message.role == spb.ROLE_USER:
                    try:
                        info = await self.runs.files.get_file(self.who, file_id)
                        _, data = await self.runs.files.download(self.who, file_id)
                        self._images[file_id] = (data, info.media_type)
                    except errors.ParleyError:
                        pass  # mentioned by id instead
            for attachment in message.attachments:
                if attachment.file_id not in self._filenames:
                    try:
                        self._filenames[attachment.file_id] = (
                            await self.runs.files.get_file(self.who, attachment.file_id)).filename
                    except errors.ParleyError:
                        self._filenames[attachment.file_id] = attachment.file_id

    # -- one model call -----------------------------------------------------------------------

    def _request(self, built: prompts.Prompt, specs) -> lapi.StreamGenerateRequest:
        run = self.run
        request = lapi.StreamGenerateRequest(
            model=run.model, messages=built.messages, tools=built.tools, priority=lpb.PRIORITY_HIGH,
            metadata={"run_id": run.id, "assistant_id": run.assistant_id, "session_id": run.session_id})
        if specs:
            choice = run.tool_choice
            if choice.type == apb.TOOL_CHOICE_TYPE_REQUIRED:
                request.tool_choice.mode = lpb.TOOL_CHOICE_MODE_REQUIRED
            elif choice.type == apb.TOOL_CHOICE_TYPE_FUNCTION and self._model_calls == 1:
                request.tool_choice.function_name = choice.function_name
            else:
                request.tool_choice.mode = lpb.TOOL_CHOICE_MODE_AUTO
            request.parallel_tool_calls = run.parallel_tool_calls
        if run.HasField("temperature"):
            request.temperature = run.temperature
        if run.HasField("top_p"):
            request.top_p = run.top_p
        if run.max_completion_tokens:
            request.max_tokens = max(run.max_completion_tokens - run.usage.completion_tokens, 1)
        kind = _RESPONSE_TYPES.get(run.response_format.type)
        if kind is not None:
            request.response_format.type = kind
            if kind == lpb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
                schema = run.response_format.json_schema
                request.response_format.json_schema.CopyFrom(lpb.JsonSchema(
                    name=schema.name, description=schema.description, schema=schema.schema, strict=schema.strict))
        return request

    async def _store_step(self, kind: int) -> apb.RunStep:
        return await self.runs.store.call(self.who, "CreateRunStep", rs.CreateRunStepRequest(
            run_step=apb.RunStep(run_id=self.run.id, type=kind, status=apb.RUN_STEP_STATUS_IN_PROGRESS)))

    async def _stream_turn(self, built: prompts.Prompt, specs) -> Turn:
        turn = Turn(citations=CitationStream(list(self._hits), files=dict(self._produced)))
        request = self._request(built, specs)
        builtin = {s.name for s in specs} & set(self.runs.executors)
        # The turn's first step is stored while the model thinks, off the first token's path;
        # it becomes whichever kind the model's first output needs.
        spare: asyncio.Task | None = asyncio.create_task(self._store_step(apb.RUN_STEP_TYPE_MESSAGE_CREATION))

        async def take_step(kind: int) -> apb.RunStep:
            nonlocal spare
            if spare is not None:
                task, spare = spare, None
                step = await task
                if step.type != kind:
                    step = await self.runs.store.call(self.who, "UpdateRunStep", rs.UpdateRunStepRequest(
                        run_step=apb.RunStep(id=step.id, type=kind), update_mask=FieldMask(paths=["type"])))
            else:
                step = await self._store_step(kind)
            await self.log.emit(step_created=step)
            return step

        async def send_text(text: str, annotations) -> None:
            if not text and not annotations:
                return
            if turn.message_step is None:
                turn.message_step = await take_step(apb.RUN_STEP_TYPE_MESSAGE_CREATION)
            await self.log.emit(message_delta=apb.MessageDelta(step_id=turn.message_step.id, index=0, text=text,
                                                               annotations=annotations))

        async def consume() -> None:
            async for response in self.runs.llm.stream(self.who, request):
                kind = response.WhichOneof("event")
                if kind == "text_delta":
                    turn.text += response.text_delta.text
                    await send_text(*turn.citations.feed(response.text_delta.text))
                elif kind == "tool_call_delta":
                    delta = response.tool_call_delta
                    if turn.tool_step is None:
                        turn.tool_step = await take_step(apb.RUN_STEP_TYPE_TOOL_CALLS)
                    call = turn.calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                    first = not call["id"] and not call["name"]
                    if delta.id:
                        call["id"] = delta.id
                    if delta.name:
                        call["name"] = delta.name
                    call["arguments"] += delta.arguments
                    name = call["name"]
                    event = apb.ToolCallDelta(step_id=turn.tool_step.id, index=delta.index)
                    if first:
                        event.id = call["id"]
                        event.name = name if name not in builtin else ""
                        event.type = _TOOL_TYPES.get(name if name in builtin else "function")
                    if name not in builtin:
                        event.arguments = delta.arguments
                    await self.log.emit(tool_call_delta=event)
                elif kind == "finish":
                    finish = response.finish
                    turn.finish = finish.finish_reason
                    turn.prompt_tokens = int(finish.usage.input_tokens)
                    turn.completion_tokens = int(finish.usage.output_tokens)
                    turn.cost = finish.cost_usd

        self._stream_task = asyncio.create_task(consume())
        try:
            await self._stream_task
        except asyncio.CancelledError:
            if not self._cancel or self._abandoned:
                if spare is not None:
                    spare.cancel()
                raise
            turn.cancelled = True
        except BaseException:
            if spare is not None:  # stored or not, it is shown, so the failure that ends it follows it
                with contextlib.suppress(BaseException):
                    await take_step(apb.RUN_STEP_TYPE_MESSAGE_CREATION)
            raise
        finally:
            self._stream_task = None
        tail = turn.citations.finish()
        await send_text(*tail)
        if spare is not None:  # the model wrote nothing: an empty message (or a cancelled step)
            turn.message_step = await take_step(apb.RUN_STEP_TYPE_MESSAGE_CREATION)
        return turn

    async def _finish_message(self, turn: Turn, *, incomplete: bool) -> None:
        """Stores the turn's text as one whole session message and ends its step."""
        step = turn.message_step
        if step is None:
            return
        metadata = {"status": "incomplete"} if incomplete or turn.cancelled else {}
        message = await self.runs.sessions.create_message(self.who, self.run.session_id, spb.Message(
            role=spb.ROLE_ASSISTANT, content=[spb.ContentPart(text=turn.text or " ")], metadata=metadata,
            assistant_id=self.run.assistant_id, run_id=self.run.id))
        await self.log.emit(message_created=message)
        ended = apb.RunStep()
        ended.CopyFrom(step)
        ended.message_creation.CopyFrom(apb.MessageCreationDetails(
            message_id=message.id, annotations=turn.citations.annotations if turn.citations else []))
        paths = ["message_creation"]
        if turn.tool_step is None:
            ended.usage.CopyFrom(_turn_usage(turn))
            paths.append("usage")
        turn.message_step = await self._end_step(
            ended, apb.RUN_STEP_STATUS_CANCELLED if turn.cancelled else apb.RUN_STEP_STATUS_COMPLETED, paths)

    async def _end_step(self, step: apb.RunStep, status: int, paths=()) -> apb.RunStep:
        ended = apb.RunStep()
        ended.CopyFrom(step)
        ended.status = status
        time_field = {apb.RUN_STEP_STATUS_COMPLETED: "complete_time", apb.RUN_STEP_STATUS_CANCELLED: "cancel_time",
                      apb.RUN_STEP_STATUS_EXPIRED: "expire_time"}.get(status, "fail_time")
        if status != apb.RUN_STEP_STATUS_IN_PROGRESS:
            getattr(ended, time_field).CopyFrom(now_stamp())
        mask = [*paths, "status"] + ([time_field] if status != apb.RUN_STEP_STATUS_IN_PROGRESS else [])
        stored = await self.runs.store.call(self.who, "UpdateRunStep", rs.UpdateRunStepRequest(
            run_step=ended, update_mask=FieldMask(paths=mask)))
        await self.log.emit(step_updated=stored)
        return stored

    # -- tools --------------------------------------------------------------------------------

    def _unique_id(self, proposed: str) -> str:
        call_id = proposed if proposed and proposed not in self._used_ids else f"call_{uuid.uuid4().hex[:24]}"
        self._used_ids.add(call_id)
        return call_id

    async def _tool_round(self, turn: Turn, by_name: dict[str, apb.Tool]) -> bool:
        """Runs the built-in calls, answers cached functions, and either goes on (False) or
        waits for the caller's outputs in REQUIRES_ACTION (True)."""
        details: list[apb.ToolCallDetail] = []
        for index in sorted(turn.calls):
            call = turn.calls[index]
            detail = apb.ToolCallDetail(id=self._unique_id(call["id"]))
            tool = by_name.get(call["name"])
            kind = tool.WhichOneof("tool") if tool is not None else "function"
            if kind == "function":
                detail.function.CopyFrom(apb.FunctionCall(name=call["name"], arguments=call["arguments"]))
                if tool is None:
                    detail.function.output = f"Error: there is no tool named {call['name']!r}."
            elif kind == "file_search":
                detail.file_search.CopyFrom(apb.FileSearchCall(ranking_options=tool.file_search.ranking_options))
            elif kind == "code_interpreter":
                detail.code_interpreter.CopyFrom(apb.CodeInterpreterCall())
            details.append(detail)
        step = turn.tool_step
        for position, detail in enumerate(details):
            kind = detail.WhichOneof("call")
            if kind in ("file_search", "code_interpreter"):
                call = turn.calls[sorted(turn.calls)[position]]
                await self._run_builtin(step, position, detail, call, by_name[call["name"]])
        await self._answer_from_cache(details, by_name)
        pending = [d for d in details if d.WhichOneof("call") == "function" and not d.function.output
                   and not d.function.cached]
        step.tool_calls.CopyFrom(apb.ToolCallsDetails(tool_calls=details))
        step.usage.CopyFrom(_turn_usage(turn))
        if not pending:
            turn.tool_step = await self._end_step(step, apb.RUN_STEP_STATUS_COMPLETED, ["tool_calls", "usage"])
            return False
        turn.tool_step = await self._end_step(step, apb.RUN_STEP_STATUS_IN_PROGRESS, ["tool_calls", "usage"])
        waiting = apb.Run()
        waiting.CopyFrom(self.run)
        waiting.status = apb.RUN_STATUS_REQUIRES_ACTION
        waiting.required_action.submit_tool_outputs.tool_calls.extend(
            spb.ToolCall(id=d.id, name=d.function.name, arguments=d.function.arguments) for d in pending)
        waiting.expire_time.CopyFrom(stamp_in(self.runs.settings.action_timeout_seconds))
        try:
            stored = await self.log.commit(StatusChange(
                run=waiting, paths=["status", "required_action", "expire_time", "usage"],
                expected=[apb.RUN_STATUS_IN_PROGRESS], lease=rs.RunLease()), run_status_changed=True)
        except errors.Aborted:
            await self._cancelled(None)  # CancelRun got there first
            return False
        self.run = waiting
        self.run.last_sequence = stored.last_sequence
        self.holds_lease = False
        return True

    async def _run_builtin(self, step: apb.RunStep, position: int, detail: apb.ToolCallDetail, call: dict,
                           tool: apb.Tool) -> None:
        kind = detail.WhichOneof("call")
        executor = self.runs.executors[kind]
        workdir = Path(tempfile.mkdtemp(prefix=f"parley-run-{self.run.id[:8]}-"))

        async def emit(delta: ToolOutputDelta) -> None:
            event = apb.ToolCallDelta(step_id=step.id, index=position, id=detail.id, type=_TOOL_TYPES[kind],
                                      code_input=delta.code_input, code_logs=delta.code_logs)
            if delta.code_image_file_id:
                event.code_image.file_id = delta.code_image_file_id
            await self.log.emit(tool_call_delta=event)

        context = ToolContext(run=await self._scope(), identity=self.who, files=RunFilesOf(self.runs.files, self.who),
                              emit=emit, workdir=workdir)
        try:
            with tracer.start_as_current_span(f"assistants.tool {kind}", attributes={
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": kind,
                    "gen_ai.tool.call.id": detail.id}):
                outcome = await executor.execute(ToolCall(id=detail.id, name=call["name"],
                                                          arguments=call["arguments"], tool=_tool_dict(tool)), context)
            error = None
        except ToolError as exc:
            outcome, error = None, str(exc)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if kind == "file_search":
            if outcome is not None:
                detail.file_search.query = outcome.search_query
                detail.file_search.results.extend(apb.FileSearchResult(
                    file_id=h.file_id, filename=h.filename, score=h.score, text=h.text, page=h.page)
                    for h in outcome.search_hits)
                self._hits += list(outcome.search_hits)
            else:
                try:
                    detail.file_search.query = str(json.loads(call["arguments"] or "{}").get("query", ""))[:4096]
                except (ValueError, AttributeError):
                    pass
        else:
            if outcome is not None:
                detail.code_interpreter.input = outcome.code_input
                self._produced.update(zip(outcome.produced_paths, outcome.produced_file_ids))
                for output in outcome.code_outputs:
                    if output.image_file_id:
                        detail.code_interpreter.outputs.append(apb.CodeInterpreterOutput(
                            image=apb.CodeInterpreterImage(file_id=output.image_file_id)))
                    else:
                        detail.code_interpreter.outputs.append(apb.CodeInterpreterOutput(logs=output.logs))
            else:
                try:
                    detail.code_interpreter.input = str(json.loads(call["arguments"] or "{}").get("code", ""))
                except (ValueError, AttributeError):
                    pass
                detail.code_interpreter.outputs.append(apb.CodeInterpreterOutput(logs=f"Error: {error}"))

    async def _answer_from_cache(self, details: list[apb.ToolCallDetail], by_name: dict[str, apb.Tool]) -> None:
        cacheable = [d for d in details if d.WhichOneof("call") == "function" and not d.function.output
                     and d.function.name in by_name and _ttl(by_name[d.function.name]) > 0]
        if not cacheable:
            return
        reply = await self.runs.store.call(self.who, "LookupFunctionResults", rs.LookupFunctionResultsRequest(
            keys=[rs.FunctionResult(name=d.function.name, arguments=d.function.arguments) for d in cacheable]))
        found = {(r.name, r.arguments): r.output for r in reply.results}
        for detail in cacheable:
            output = found.get((detail.function.name, detail.function.arguments))
            if output is not None:
                detail.function.output = output
                detail.function.cached = True

    async def _apply_outputs(self, outputs: dict[str, str]) -> None:
        steps = await self._steps()
        step = next((s for s in reversed(steps) if s.WhichOneof("step_details") == "tool_calls"
                     and s.status == apb.RUN_STEP_STATUS_IN_PROGRESS), None)
        if step is None:
            return
        by_name = {t.function.name: t for t in self.run.tools if t.HasField("function")}
        to_cache = []
        for detail in step.tool_calls.tool_calls:
            if detail.WhichOneof("call") == "function" and detail.id in outputs:
                detail.function.output = outputs[detail.id]
                tool = by_name.get(detail.function.name)
                if tool is not None and _ttl(tool) > 0:
                    expire = datetime.now(timezone.utc) + timedelta(seconds=_ttl(tool))
                    result = rs.FunctionResult(name=detail.function.name, arguments=detail.function.arguments,
                                               output=detail.function.output)
                    result.expire_time.FromDatetime(expire)
                    to_cache.append(result)
        await self._end_step(step, apb.RUN_STEP_STATUS_COMPLETED, ["tool_calls"])
        if to_cache:
            with contextlib.suppress(errors.ParleyError):  # a cache write never fails the run
                await self.runs.store.call(self.who, "StoreFunctionResults",
                                           rs.StoreFunctionResultsRequest(results=to_cache))

    async def _scope(self) -> RunScope:
        if self._vector_stores is None:
            stores = list(self.run.tool_resources.file_search.vector_store_ids)
            for tool in self.run.tools:
                if tool.HasField("file_search"):
                    stores += list(tool.file_search.vector_store_ids)
            stores += await self._session_store()
            self._vector_stores = list(dict.fromkeys(stores))
        messages = await self.runs.sessions.list_messages(self.who, self.run.session_id)
        code_files = list(self.run.tool_resources.code_interpreter.file_ids) + [
            a.file_id for m in messages for a in m.attachments if "code_interpreter" in a.tools]
        return RunScope(run_id=self.run.id, session_id=self.run.session_id, assistant_id=self.run.assistant_id,
                        user_id=self.who.user_id, code_interpreter_file_ids=tuple(dict.fromkeys(code_files)),
                        vector_store_ids=tuple(self._vector_stores))

    async def _session_store(self) -> list[str]:
        """The session's own vector store holding the files attached to its messages for
        file_search (created on first need, its id kept in the session's metadata), once every
        attached file is indexed."""
        messages = await self.runs.sessions.list_messages(self.who, self.run.session_id)
        attached = list(dict.fromkeys(a.file_id for m in messages for a in m.attachments if "file_search" in a.tools))
        if not attached:
            return []
        session = await self.runs.sessions.get_session(self.who, self.run.session_id)
        store_id = session.metadata.get(SESSION_STORE_KEY, "")
        if store_id:
            try:
                await self.runs.files.get_vector_store(self.who, store_id)
            except errors.NotFound:
                store_id = ""
        if not store_id:
            store = await self.runs.files.create_vector_store(self.who, f"session {session.id}", attached,
                                                              {"session_id": session.id})
            store_id = store.id
            if len(session.metadata) < 16:
                metadata = {**dict(session.metadata), SESSION_STORE_KEY: store_id}
                with contextlib.suppress(errors.ParleyError):
                    await self.runs.sessions.set_session_metadata(self.who, session, metadata)
        else:
            for file_id in attached:
                with contextlib.suppress(errors.AlreadyExists, errors.FailedPrecondition):
                    await self.runs.files.add_vector_store_file(self.who, store_id, file_id)
        deadline = time.monotonic() + self.runs.settings.attachment_index_timeout_seconds
        while time.monotonic() < deadline:
            store = await self.runs.files.get_vector_store(self.who, store_id)
            if store.file_counts.in_progress == 0:
                break
            await asyncio.sleep(0.25)
        return [store_id]

    # -- endings ------------------------------------------------------------------------------

    async def _end(self, status: int, *, error: apb.RunError | None = None,
                   incomplete_reason: int | None = None, expected=(apb.RUN_STATUS_IN_PROGRESS,
                                                                   apb.RUN_STATUS_CANCELLING), extra=()) -> None:
        final = apb.Run()
        final.CopyFrom(self.run)
        final.status = status
        final.ClearField("required_action")
        paths = ["status", "usage", "required_action"]
        time_field = {apb.RUN_STATUS_COMPLETED: "complete_time", apb.RUN_STATUS_INCOMPLETE: "complete_time",
                      apb.RUN_STATUS_CANCELLED: "cancel_time", apb.RUN_STATUS_FAILED: "fail_time"}[status]
        getattr(final, time_field).CopyFrom(now_stamp())
        paths.append(time_field)
        kinds: dict = {}
        if extra:
            kinds["extra"] = list(extra)
        kinds["run_status_changed"] = True
        if error is not None:
            final.last_error.CopyFrom(error)
            paths.append("last_error")
            kinds["error"] = error
        if incomplete_reason is not None:
            final.incomplete_details.reason = incomplete_reason
            paths.append("incomplete_details")
        kinds["done"] = apb.RunDone(status=status, usage=final.usage)
        await self.log.commit(StatusChange(run=final, paths=paths, expected=expected, lease=rs.RunLease()), **kinds)
        # Released with the final status: a renewal answered from now on says "not held",
        # which must not stop this execution while it closes its log.
        self.holds_lease = False
        self.run = final
        record_end(final)

    async def _incomplete(self, reason: int) -> bool:
        await self._end(apb.RUN_STATUS_INCOMPLETE, incomplete_reason=reason)
        return True

    async def _cancelled(self, turn: Turn | None) -> None:
        if turn is not None:
            await self._finish_message(turn, incomplete=True)
            if turn.tool_step is not None:
                await self._end_step(turn.tool_step, apb.RUN_STEP_STATUS_CANCELLED)
        cancelling = apb.Run()
        cancelling.CopyFrom(self.run)
        cancelling.status = apb.RUN_STATUS_CANCELLING
        await self._end(apb.RUN_STATUS_CANCELLED, extra=[{"run_status_changed": cancelling}])


async def _drop(task: asyncio.Task | None) -> None:
    """Cancels a read nobody will use, and retrieves its outcome so none is left unobserved."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def record_end(run: apb.Run) -> None:
    """The run's end in the metrics (count by status, duration from its start)."""
    status = apb.RunStatus.Name(run.status).removeprefix("RUN_STATUS_").lower()
    seconds = None
    if run.HasField("start_time"):
        seconds = max(time.time() - run.start_time.ToNanoseconds() / 1e9, 0.0)
    metrics.run_ended(status, seconds)


def _ttl(tool: apb.Tool) -> float:
    ttl = tool.function.cache_ttl
    return ttl.seconds + ttl.nanos / 1e9


def _turn_usage(turn: Turn) -> apb.Usage:
    return apb.Usage(prompt_tokens=turn.prompt_tokens, completion_tokens=turn.completion_tokens,
                     total_tokens=turn.prompt_tokens + turn.completion_tokens, cost_usd=turn.cost)


def _failure(exc: Exception) -> tuple[int, str]:
    reason = getattr(exc, "reason", "")
    if isinstance(exc, errors.ResourceExhausted):
        if reason == "BUDGET_EXCEEDED":
            return apb.RUN_ERROR_CODE_BUDGET_EXCEEDED, "the user's spending budget is exhausted"
        return apb.RUN_ERROR_CODE_RATE_LIMIT_EXCEEDED, "model rate limits were still exceeded after waiting"
    if isinstance(exc, errors.InvalidArgument):
        return apb.RUN_ERROR_CODE_INVALID_PROMPT, f"the model refused the prompt: {exc.message}"[:500]
    if isinstance(exc, errors.Unavailable) and reason in ("PROVIDER_ERROR", "LLM_UNAVAILABLE"):
        return apb.RUN_ERROR_CODE_MODEL_ERROR, "the model failed after retries and fallbacks"
    if isinstance(exc, errors.FailedPrecondition) and reason == "TOO_MANY_MODEL_CALLS":
        return apb.RUN_ERROR_CODE_SERVER_ERROR, exc.message
    if isinstance(exc, errors.ParleyError) and reason.startswith("FILES"):
        return apb.RUN_ERROR_CODE_TOOL_ERROR, "a built-in tool failed"
    return apb.RUN_ERROR_CODE_SERVER_ERROR, "the run failed inside Parley"
