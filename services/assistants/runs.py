"""Runs: creating them, following their events, cancelling them, answering their function
calls; and, with `execution`, running them. Independent of transport: the servicer converts,
this module decides.

A run lives in the run store. The replica that starts it (after creating it, claiming it from
the queue, or accepting its tool outputs) holds a lease on it and is the only writer of its
event log until the run ends or waits for tool outputs. See docs/assistants.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timezone

from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as aapi
from parley.runstore.v1 import runstore_service_pb2 as rs
from parley.sessions.v1 import sessions_pb2 as spb
from services.assistants import templates
from services.assistants import validation as check
from services.assistants.events import LocalRuns, now_stamp
from services.assistants.execution import Execution, record_end
from services.assistants.identity import MintedIdentities, UserIdentity
from services.assistants.ports import FilesPort, LLMPort, RunStorePort, SessionsPort, Who
from services.assistants.settings import EngineSettings
from services.assistants.tools.base import ToolExecutor
from services.runtime import errors
from services.runtime.errors import FieldViolation

log = logging.getLogger("parley.assistants.runs")

ACTIVE = (apb.RUN_STATUS_QUEUED, apb.RUN_STATUS_IN_PROGRESS, apb.RUN_STATUS_REQUIRES_ACTION,
          apb.RUN_STATUS_CANCELLING)
MAX_ADDITIONAL_MESSAGES = 32
MAX_OUTPUT_CHARS = 512 * 1024
MAX_TOOL_OUTPUTS = 128


def status_name(status: int) -> str:
    return apb.RunStatus.Name(status) if status in apb.RunStatus.values() else str(status)


def created_event(run: apb.Run) -> apb.RunEvent:
    """A run's first event as the run store stored it with the run."""
    snapshot = apb.Run()
    snapshot.CopyFrom(run)
    snapshot.last_sequence = 0
    return apb.RunEvent(sequence=1, run_id=run.id, create_time=run.create_time, run_status_changed=snapshot)


def not_requires_action(run: apb.Run) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        f"run {run.id} is {status_name(run.status)}, not waiting for tool outputs",
        reason="RUN_NOT_REQUIRES_ACTION", metadata={"run_id": run.id, "status": status_name(run.status)})


def _message_violations(messages: Sequence[spb.Message], field: str) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if len(messages) > MAX_ADDITIONAL_MESSAGES:
        found.append(FieldViolation(field, f"has more than {MAX_ADDITIONAL_MESSAGES} messages"))
    for i, message in enumerate(messages[:MAX_ADDITIONAL_MESSAGES]):
        if message.role not in (spb.ROLE_USER, spb.ROLE_ASSISTANT):
            found.append(FieldViolation(f"{field}[{i}].role", "must be ROLE_USER or ROLE_ASSISTANT"))
        if not message.content:
            found.append(FieldViolation(f"{field}[{i}].content", "needs at least one part"))
    return found


class Runs:
    def __init__(self, store: RunStorePort, sessions: SessionsPort, llm: LLMPort, files: FilesPort,
                 identities: MintedIdentities, executors: dict[str, ToolExecutor], settings: EngineSettings) -> None:
        self.store = store
        self.sessions = sessions
        self.llm = llm
        self.files = files
        self.identities = identities
        self.executors = executors
        self.settings = settings
        self.local = LocalRuns()
        # Runs this replica executes, by id (see execution.Execution).
        self.executions: dict[str, Execution] = {}
        self._wake = asyncio.Event()
        self._models: dict[str, tuple[object, float]] = {}
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    def lease(self) -> rs.RunLease:
        seconds = self.settings.lease_seconds
        return rs.RunLease(owner=self.settings.replica_id,
                           duration=Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9)))

    # -- creating -----------------------------------------------------------------------------

    async def create(self, who: UserIdentity, request: aapi.CreateRunRequest) -> apb.Run:
        violations = check.options_violations(request, "", fields=(
            "model", "instructions", "additional_instructions", "temperature", "top_p", "metadata", "response_format",
            "tool_resources"))
        found, missing = check.tool_violations(request.tools, "tools", available=self.executors)
        violations += found
        if not request.assistant_id:
            violations.append(FieldViolation("assistant_id", "is required"))
        if request.max_prompt_tokens and request.max_prompt_tokens < 256:
            violations.append(FieldViolation("max_prompt_tokens", "must be at least 256 (or 0 for no limit)"))
        if request.max_completion_tokens and request.max_completion_tokens < 16:
            violations.append(FieldViolation("max_completion_tokens", "must be at least 16 (or 0 for no limit)"))
        if request.max_prompt_tokens < 0:
            violations.append(FieldViolation("max_prompt_tokens", "must not be negative"))
        if request.max_completion_tokens < 0:
            violations.append(FieldViolation("max_completion_tokens", "must not be negative"))
        truncation = request.truncation_strategy
        violations += check._enum(truncation.type, apb.TruncationType.DESCRIPTOR, "truncation_strategy.type")
        if truncation.type == apb.TRUNCATION_TYPE_LAST_MESSAGES and truncation.last_messages < 1:
            violations.append(FieldViolation("truncation_strategy.last_messages",
                                             "must be at least 1 for TRUNCATION_TYPE_LAST_MESSAGES"))
        violations += check._enum(request.tool_choice.type, apb.ToolChoiceType.DESCRIPTOR, "tool_choice.type")
        violations += check._enum(request.busy_session_strategy, apb.BusySessionStrategy.DESCRIPTOR,
                                  "busy_session_strategy")
        violations += _message_violations(request.additional_messages, "additional_messages")
        if not request.session_id:
            violations += check.text_violations(request.session.title, "session.title", max_chars=256,
                                                single_line=False)
            violations += check.metadata_violations(dict(request.session.metadata), "session.metadata")
            violations += _message_violations(request.session.messages, "session.messages")
        errors.collect(violations)
        if missing:
            raise check.unavailable_tools(missing)

        strategy = request.busy_session_strategy or apb.BUSY_SESSION_STRATEGY_QUEUE
        created_session = ""
        written: list[str] = []

        async def new_session() -> str:
            nonlocal created_session
            session = await self.sessions.create_session(who, request.session.title,
                                                         dict(request.session.metadata), request.assistant_id)
            created_session = session.id
            for message in request.session.messages:
                await self.sessions.create_message(who, session.id, message)
            return session.id

        # A new session (and its messages) is written while the assistant, model and files are
        # checked, off the first token's path; a refused run removes it again (below). Only for
        # an id in its stored spelling, so the session names the assistant exactly as stored.
        creating = asyncio.create_task(new_session()) if not request.session_id and _canonical_id(
            request.assistant_id) else None
        try:
            stored = await self._create(who, request, strategy, creating, new_session, written)
        except BaseException:
            # A refused run leaves nothing behind: the session it created, the messages it added.
            # (A session being written is let finish, so it is known and can be removed.)
            if creating is not None:
                with contextlib.suppress(BaseException):
                    await creating
            with contextlib.suppress(Exception):
                if created_session:
                    await self.sessions.delete_session(who, created_session)
                else:
                    for message_id in written:
                        await self.sessions.delete_message(who, request.session_id, message_id)
            raise
        if strategy == apb.BUSY_SESSION_STRATEGY_CANCEL_ACTIVE:
            await self._cancel_earlier(who, stored)
        await self.try_start(who, stored)
        return stored

    async def _create(self, who: UserIdentity, request: aapi.CreateRunRequest, strategy: int,
                      creating: asyncio.Task | None, new_session, written: list[str]) -> apb.Run:
        """Checks the run against its assistant, model and files, then stores it (with its
        session and messages, unless they exist); `create` undoes those writes if this fails."""
        assistant = await self.store.call(who, "GetAssistant", rs.GetAssistantRequest(assistant_id=request.assistant_id))
        tools = list(request.tools) or list(assistant.tools)
        if not request.tools:
            _, missing = check.tool_violations(tools, "tools", available=self.executors)
            if missing:
                raise check.unavailable_tools(missing)
        choice = request.tool_choice
        functions = {t.function.name for t in tools if t.HasField("function")} | {
            t.WhichOneof("tool") for t in tools if not t.HasField("function")}
        if choice.type == apb.TOOL_CHOICE_TYPE_FUNCTION and choice.function_name not in functions:
            raise errors.InvalidArgument.for_field("tool_choice.function_name",
                                                   "must name one of the run's tools")
        if choice.type == apb.TOOL_CHOICE_TYPE_REQUIRED and not tools:
            raise errors.InvalidArgument.for_field("tool_choice.type", "TOOL_CHOICE_TYPE_REQUIRED needs tools")
        instructions = request.instructions or assistant.instructions
        if request.additional_instructions:
            instructions = f"{instructions}\n\n{request.additional_instructions}" if instructions \
                else request.additional_instructions
        values = dict(request.variables)
        templates.check((instructions,), values)
        instructions = templates.render(instructions, values)
        model = await self.resolve_model(who, request.model or assistant.model,
                                         "model" if request.model else "assistant.model")
        resources = apb.ToolResources()
        resources.CopyFrom(assistant.tool_resources)
        for file_id in request.tool_resources.code_interpreter.file_ids:
            if file_id not in resources.code_interpreter.file_ids:
                resources.code_interpreter.file_ids.append(file_id)
        for store_id in request.tool_resources.file_search.vector_store_ids:
            if store_id not in resources.file_search.vector_store_ids:
                resources.file_search.vector_store_ids.append(store_id)
        await check.check_vector_stores(self.files, who, list(request.tool_resources.file_search.vector_store_ids) + [
            v for t in request.tools if t.HasField("file_search") for v in t.file_search.vector_store_ids])
        await check.check_files(self.files, who, request.tool_resources.code_interpreter.file_ids)

        if request.session_id:
            session_id = request.session_id
            if strategy == apb.BUSY_SESSION_STRATEGY_REJECT or request.additional_messages:
                # Checked before the additional messages are written, so a refused run
                # changes nothing (another user's session is NOT_FOUND here); the store
                # checks again under the session's lock.
                active = await self.store.call(who, "GetActiveRun", rs.GetActiveRunRequest(session_id=session_id))
                if active.HasField("run") and strategy == apb.BUSY_SESSION_STRATEGY_REJECT:
                    raise errors.FailedPrecondition(
                        f"session {session_id} already has an active run", reason="SESSION_BUSY",
                        metadata={"session_id": session_id, "active_run_id": active.run.id})
        else:
            session_id = await (creating if creating is not None else new_session())
        for message in request.additional_messages:
            written.append((await self.sessions.create_message(who, session_id, message)).id)
        return await self._store_run(who, request, assistant, session_id, model, instructions, tools,
                                     resources, strategy)

    async def _store_run(self, who, request, assistant, session_id: str, model: str, instructions: str, tools,
                         resources, strategy: int) -> apb.Run:
        run = apb.Run(
            session_id=session_id, assistant_id=assistant.id, status=apb.RUN_STATUS_QUEUED, model=model,
            instructions=instructions, tools=tools, tool_resources=resources,
            max_prompt_tokens=request.max_prompt_tokens, max_completion_tokens=request.max_completion_tokens,
            truncation_strategy=request.truncation_strategy, tool_choice=request.tool_choice,
            parallel_tool_calls=request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True,
            response_format=request.response_format if request.HasField("response_format")
            else assistant.response_format,
            busy_session_strategy=strategy, metadata=dict(request.metadata),
        )
        if request.HasField("temperature"):
            run.temperature = request.temperature
        elif assistant.HasField("temperature"):
            run.temperature = assistant.temperature
        if request.HasField("top_p"):
            run.top_p = request.top_p
        elif assistant.HasField("top_p"):
            run.top_p = assistant.top_p
        return await self.store.call(who, "CreateRun", rs.CreateRunRequest(run=run, append_created_event=True))

    async def _cancel_earlier(self, who: UserIdentity, run: apb.Run) -> None:
        token = ""
        while True:
            page = await self.store.call(who, "ListRuns", rs.ListRunsRequest(
                session_id=run.session_id, statuses=list(ACTIVE), page_size=100, page_token=token))
            for other in page.runs:
                if other.id != run.id and other.create_time.ToNanoseconds() <= run.create_time.ToNanoseconds():
                    with contextlib.suppress(errors.FailedPrecondition, errors.NotFound):
                        await self.cancel(who, other.id)
            token = page.next_page_token
            if not token:
                return

    async def try_start(self, who: UserIdentity, run: apb.Run) -> None:
        """Starts a queued run here at once if its session is free; otherwise it waits in the
        queue for whichever replica claims it first."""
        if len(self.executions) >= self.settings.max_concurrent_runs:
            return
        with contextlib.suppress(errors.Aborted):  # not the session's head, or taken already
            await Execution.begin(self, who, run, expected=(apb.RUN_STATUS_QUEUED,), require_session_head=True)

    async def resolve_model(self, who: Who, model: str, field: str) -> str:
        try:
            return (await self.model_info(who, model)).id or model
        except (errors.NotFound, errors.InvalidArgument) as exc:
            raise errors.InvalidArgument.for_field(field, f"is not a model the llm service knows: {exc.message}",
                                                   reason="MODEL_NOT_FOUND") from None

    async def model_info(self, who: Who, model: str):
        """The llm service's facts about a model (window, output cap), kept for a minute."""
        cached = self._models.get(model)
        now = asyncio.get_running_loop().time()
        if cached is not None and cached[1] > now:
            return cached[0]
        info = await self.llm.get_model(who, model)
        if len(self._models) > 1024:
            self._models.clear()
        self._models[model] = (info, now + 60.0)
        return info

    # -- reading ------------------------------------------------------------------------------

    async def get(self, who: Who, run_id: str) -> apb.Run:
        return await self.store.call(who, "GetRun", rs.GetRunRequest(run_id=run_id))

    async def list(self, who: Who, session_id: str, page_size: int, page_token: str) -> rs.ListRunsResponse:
        return await self.store.call(who, "ListRuns", rs.ListRunsRequest(
            session_id=session_id, page_size=page_size, page_token=page_token))

    async def list_steps(self, who: Who, run_id: str, page_size: int, page_token: str) -> rs.ListRunStepsResponse:
        return await self.store.call(who, "ListRunSteps", rs.ListRunStepsRequest(
            run_id=run_id, page_size=page_size, page_token=page_token))

    async def follow(self, who: Who, run_id: str, after_sequence: int, *,
                     until_action: bool, owner_checked: bool = False) -> AsyncIterator[apb.RunEvent]:
        """Every event after `after_sequence`, once and in order, then live until the run ends
        (or, with `until_action`, until it waits for tool outputs). `owner_checked`: the
        caller has just created or read the run as `who` (no need to read it again)."""
        if after_sequence < 0:
            raise errors.InvalidArgument.for_field("after_sequence", "must not be negative")
        after = after_sequence
        local = self.local.get(run_id)
        if local is not None and local.first_sequence <= after + 1:
            if not owner_checked:
                await self.get(who, run_id)  # the caller must own the run
            async for event in local.follow(after):
                yield event
                after = event.sequence
                if _stops(event, until_action):
                    return
            if local.ended:
                return
        async for change in self.store.watch(who, rs.WatchRunEventsRequest(run_id=run_id, after_sequence=after)):
            for event in change.events:
                yield event
                if _stops(event, until_action):
                    return

    async def stream_new(self, who: UserIdentity, request: aapi.CreateRunRequest) -> AsyncIterator[apb.RunEvent]:
        run = await self.create(who, request)
        # The creation event was stored with the run, exactly so (see CreateRunRequest in the
        # run store's contract); what follows comes live from this replica when it started the
        # run, or from the log when another one did.
        yield created_event(run)
        async for event in self.follow(who, run.id, 1, until_action=True, owner_checked=True):
            yield event

    # -- cancelling ---------------------------------------------------------------------------

    async def cancel(self, who: UserIdentity, run_id: str) -> apb.Run:
        for _ in range(8):
            run = await self.get(who, run_id)
            if run.status in (apb.RUN_STATUS_CANCELLING, apb.RUN_STATUS_CANCELLED):
                return run
            if run.status not in ACTIVE:
                raise errors.FailedPrecondition(f"run {run.id} has already ended ({status_name(run.status)})",
                                                reason="RUN_ENDED", metadata={"run_id": run.id,
                                                                              "status": status_name(run.status)})
            try:
                if run.status == apb.RUN_STATUS_IN_PROGRESS:
                    # The replica executing it hears of this through its status watch (or
                    # directly, when that is this replica) and stops the model call.
                    stored = await self.store.call(who, "UpdateRun", rs.UpdateRunRequest(
                        run=apb.Run(id=run.id, status=apb.RUN_STATUS_CANCELLING),
                        update_mask=FieldMask(paths=["status"]), expected_statuses=[apb.RUN_STATUS_IN_PROGRESS]))
                    execution = self.executions.get(run.id)
                    if execution is not None:
                        execution.request_cancel()
                    return stored
                return await self._end_idle(who, run, apb.RUN_STATUS_CANCELLED)
            except errors.Aborted:
                continue  # it moved meanwhile: look again
        raise errors.Aborted(f"run {run_id} keeps changing; try again", reason="RUN_BUSY")

    async def _end_idle(self, who: UserIdentity, run: apb.Run, status: int, *, last_error: apb.RunError | None = None,
                        step_status: int | None = None) -> apb.Run:
        """Ends a run nobody executes (queued, waiting for tool outputs, or orphaned): its
        in-progress steps and the run itself, with the final events, as one writer."""
        steps = await self._all_steps(who, run.id)
        final = apb.Run()
        final.CopyFrom(run)
        final.status = status
        final.ClearField("required_action")
        paths = ["status", "required_action"]
        if status == apb.RUN_STATUS_CANCELLED:
            final.cancel_time.CopyFrom(now_stamp())
            paths.append("cancel_time")
        elif status == apb.RUN_STATUS_FAILED:
            final.fail_time.CopyFrom(now_stamp())
            final.last_error.CopyFrom(last_error or apb.RunError(code=apb.RUN_ERROR_CODE_SERVER_ERROR))
            paths += ["fail_time", "last_error"]
        step_status = step_status or {apb.RUN_STATUS_CANCELLED: apb.RUN_STEP_STATUS_CANCELLED,
                                      apb.RUN_STATUS_EXPIRED: apb.RUN_STEP_STATUS_EXPIRED}.get(
            status, apb.RUN_STEP_STATUS_FAILED)
        sequence = run.last_sequence
        events = []
        for step in steps:
            if step.status != apb.RUN_STEP_STATUS_IN_PROGRESS:
                continue
            ended = apb.RunStep()
            ended.CopyFrom(step)
            ended.status = step_status
            field = {apb.RUN_STEP_STATUS_CANCELLED: "cancel_time", apb.RUN_STEP_STATUS_EXPIRED: "expire_time"}.get(
                step_status, "fail_time")
            getattr(ended, field).CopyFrom(now_stamp())
            update_paths = ["status", field]
            if step_status == apb.RUN_STEP_STATUS_FAILED and last_error is not None:
                ended.last_error.CopyFrom(last_error)
                update_paths.append("last_error")
            await self.store.call(who, "UpdateRunStep", rs.UpdateRunStepRequest(
                run_step=ended, update_mask=FieldMask(paths=update_paths)))
            sequence += 1
            events.append(apb.RunEvent(sequence=sequence, run_id=run.id, create_time=now_stamp(), step_updated=ended))
        snapshot = apb.Run()
        snapshot.CopyFrom(final)
        snapshot.last_sequence = sequence + 1
        events.append(apb.RunEvent(sequence=sequence + 1, run_id=run.id, create_time=now_stamp(),
                                   run_status_changed=snapshot))
        if status == apb.RUN_STATUS_FAILED:
            events.append(apb.RunEvent(sequence=sequence + 2, run_id=run.id, create_time=now_stamp(),
                                       error=final.last_error))
        events.append(apb.RunEvent(sequence=events[-1].sequence + 1, run_id=run.id, create_time=now_stamp(),
                                   done=apb.RunDone(status=status, usage=run.usage)))
        request = rs.UpdateRunRequest(run=final, update_mask=FieldMask(paths=paths), expected_statuses=[run.status],
                                      events=events, lease=rs.RunLease())
        stored = await self.store.call(who, "UpdateRun", request)
        record_end(final)
        self.wake()  # the session may have a queued run next
        return stored

    async def _all_steps(self, who: Who, run_id: str) -> list[apb.RunStep]:
        steps, token = [], ""
        while True:
            page = await self.list_steps(who, run_id, 100, token)
            steps.extend(page.run_steps)
            token = page.next_page_token
            if not token:
                return steps

    # -- tool outputs -------------------------------------------------------------------------

    async def submit(self, who: UserIdentity, run_id: str,
                     outputs: Sequence[aapi.ToolOutput]) -> AsyncIterator[apb.RunEvent]:
        run = await self.get(who, run_id)
        if run.status != apb.RUN_STATUS_REQUIRES_ACTION:
            raise not_requires_action(run)
        if run.HasField("expire_time") and run.expire_time.ToDatetime(tzinfo=timezone.utc) <= datetime.now(timezone.utc):
            with contextlib.suppress(errors.ParleyError):
                await self._end_idle(who, run, apb.RUN_STATUS_EXPIRED)
            raise errors.FailedPrecondition(f"run {run.id} expired waiting for tool outputs", reason="RUN_EXPIRED",
                                            metadata={"run_id": run.id})
        pending = [c.id for c in run.required_action.submit_tool_outputs.tool_calls]
        violations: list[FieldViolation] = []
        seen: set[str] = set()
        if len(outputs) > MAX_TOOL_OUTPUTS:
            violations.append(FieldViolation("tool_outputs", f"has more than {MAX_TOOL_OUTPUTS} outputs"))
        for i, output in enumerate(outputs[:MAX_TOOL_OUTPUTS]):
            if output.tool_call_id not in pending:
                violations.append(FieldViolation(f"tool_outputs[{i}].tool_call_id",
                                                 "is not a pending call of this run"))
            elif output.tool_call_id in seen:
                violations.append(FieldViolation(f"tool_outputs[{i}].tool_call_id", "answers a call a second time"))
            seen.add(output.tool_call_id)
            if len(output.output) > MAX_OUTPUT_CHARS:
                violations.append(FieldViolation(f"tool_outputs[{i}].output",
                                                 f"must have at most {MAX_OUTPUT_CHARS} characters (512 KiB)"))
            elif "\x00" in output.output:
                violations.append(FieldViolation(f"tool_outputs[{i}].output", "must not contain NUL characters"))
        missing = [call_id for call_id in pending if call_id not in seen]
        if missing:
            violations.append(FieldViolation("tool_outputs", f"has no output for {', '.join(missing[:10])}: "
                                                             "every pending call must be answered at once"))
        errors.collect(violations)
        answers = {o.tool_call_id: o.output for o in outputs}
        try:
            execution = await Execution.begin(self, who, run, expected=(apb.RUN_STATUS_REQUIRES_ACTION,),
                                              outputs=answers)
        except errors.Aborted:
            current = await self.get(who, run_id)
            raise not_requires_action(current) from None
        async for event in self.follow(who, run.id, execution.started_after, until_action=True,
                                       owner_checked=True):
            yield event

    # -- the queue ----------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._claim_forever(), name="claim-runs"),
                       asyncio.create_task(self._renew_forever(), name="renew-leases")]

    async def aclose(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Runs still executing are left to their lease: another replica ends them FAILED once
        # it lapses. (Ending them here was tried: the bootstrap closes the app after the
        # server has stopped, and backend calls made then did not complete.)
        for execution in list(self.executions.values()):
            await execution.abandon()

    async def _claim_forever(self) -> None:
        while not self._stopping:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.claim_interval_seconds)
            self._wake.clear()
            free = self.settings.max_concurrent_runs - len(self.executions)
            if free <= 0:
                continue
            try:
                reply = await self.store.claim(rs.ClaimRunsRequest(lease=self.lease(), max_runs=min(free, 10)))
            except errors.ParleyError as exc:
                log.warning("claiming runs failed (%s); retrying", exc.reason)
                continue
            for claim in reply.claims:
                who = self.identities.for_user(claim.run.user_id)
                try:
                    if claim.reason == rs.RUN_CLAIM_REASON_QUEUED:
                        await Execution.begin(self, who, claim.run, expected=(apb.RUN_STATUS_QUEUED,))
                    elif claim.reason == rs.RUN_CLAIM_REASON_LEASE_LAPSED:
                        log.warning("run %s lost its engine replica (lease lapsed); ending it", claim.run.id)
                        if claim.run.status == apb.RUN_STATUS_CANCELLING:
                            await self._end_idle(who, claim.run, apb.RUN_STATUS_CANCELLED)
                        else:
                            await self._end_idle(who, claim.run, apb.RUN_STATUS_FAILED, last_error=apb.RunError(
                                code=apb.RUN_ERROR_CODE_SERVER_ERROR,
                                message="the engine replica running this run stopped (its lease expired); "
                                        "the run was ended so its session can go on"))
                    elif claim.reason == rs.RUN_CLAIM_REASON_ACTION_EXPIRED:
                        await self._end_idle(who, claim.run, apb.RUN_STATUS_EXPIRED)
                except errors.Aborted:
                    continue  # another replica or a client got there first
                except Exception:  # noqa: BLE001 - one bad run must not stop the queue
                    log.exception("handling claimed run %s failed", claim.run.id)

    async def _renew_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            await self.renew_leases()

    async def renew_leases(self) -> None:
        """Renews the leases of the runs executing here; an execution whose lease the store
        no longer holds stops.

        The answer is about the executions that were asked for: while the call was under way
        a run may have ended or gone to wait for tool outputs (releasing its lease), and been
        started again here by SubmitToolOutputs, a new execution with a lease of its own that
        this answer knows nothing of (stopping it left the run stalled until its lease lapsed)."""
        asked = {run_id: e for run_id, e in self.executions.items() if e.holds_lease}
        if not asked:
            return
        try:
            reply = await self.store.renew(rs.RenewRunLeasesRequest(lease=self.lease(), run_ids=list(asked)))
        except errors.ParleyError as exc:
            log.warning("renewing leases failed (%s); retrying", exc.reason)
            return
        held = set(reply.run_ids)
        for run_id, execution in asked.items():
            if run_id not in held and execution.holds_lease and self.executions.get(run_id) is execution:
                log.warning("run %s: lease lost; stopping here", run_id)
                await execution.abandon()


def _canonical_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _stops(event: apb.RunEvent, until_action: bool) -> bool:
    if event.HasField("done"):
        return True
    return until_action and event.HasField("run_status_changed") and \
        event.run_status_changed.status == apb.RUN_STATUS_REQUIRES_ACTION
