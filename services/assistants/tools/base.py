"""The one interface every tool executor implements: function calling, file_search and
code_interpreter alike.

The run loop offers each of a run's tools to the model as a function (`ToolExecutor.function`),
and when the model calls one, hands the call to its executor (`ToolExecutor.execute`) with a
`ToolContext`: the run as tools see it, the run's user to call other services as, a way to
stream output to the run's clients as `tool_call_delta` events, and where files come from
and go. Executors return a `ToolOutcome`: what the model reads next, and the details the
run step records.

Executors are built once per engine process by a `build(deps: ToolDeps) -> ToolExecutor`
function in their module, listed by kind in `services/assistants/tools/__init__.py`
(`EXECUTORS`). Nothing here imports grpc or protobuf: executors that call a service over
gRPC keep their stubs inside their own module.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class ToolError(Exception):
    """A built-in tool failed in a way the model should hear about (e.g. the code raised, a
    search store is unavailable). The message becomes the call's output for the model and
    the step records it; it must not contain secrets. Any other exception fails the run
    with RUN_ERROR_CODE_TOOL_ERROR."""


@dataclass(frozen=True)
class FunctionSpec:
    """How a tool is offered to the model (parley.llm.v1.FunctionDefinition)."""

    name: str
    description: str
    # JSON Schema of the arguments object; empty means no arguments.
    parameters: Mapping[str, Any] = field(default_factory=dict)
    strict: bool = False


@dataclass(frozen=True)
class RunScope:
    """The run a tool call belongs to, as tools see it."""

    run_id: str
    session_id: str
    assistant_id: str
    user_id: str
    # tool_resources.code_interpreter.file_ids of the assistant and run, plus the files
    # attached to the session's messages for "code_interpreter", deduplicated, in order.
    code_interpreter_file_ids: tuple[str, ...] = ()
    # Every vector store file_search searches for this run (assistant, run, session).
    vector_store_ids: tuple[str, ...] = ()


class CallerIdentity(Protocol):
    """Who a tool acts as: the run's user. Runs outlive the caller's 60-second identity, so
    the engine mints a fresh short-lived one for each call (see docs/assistants.md)."""

    @property
    def user_id(self) -> str: ...

    def metadata(self, scopes: Sequence[str]) -> tuple[tuple[str, str], ...]:
        """gRPC metadata carrying a fresh identity of the run's user with `scopes`
        (e.g. ("files",)); pass it as `metadata=` to any backend stub call."""
        ...


@dataclass(frozen=True)
class StoredFile:
    file_id: str
    filename: str
    data: bytes


class RunFiles(Protocol):
    """Files of the files service, as the run's user."""

    async def read(self, file_id: str) -> StoredFile:
        """The file's name and bytes. Another user's file raises NotFound."""
        ...

    async def write(self, filename: str, data: bytes, *, media_type: str = "") -> str:
        """Stores a file the tool produced (an image, a CSV) as the run's user and returns its
        file id, for CodeInterpreterImage.file_id or a FilePath annotation."""
        ...


@dataclass(frozen=True)
class ToolOutputDelta:
    """A fragment of a built-in tool's output, streamed as a tool_call_delta event of the
    call. Set exactly one field."""

    # Code interpreter: the code being run (normally sent once, whole, before running).
    code_input: str = ""
    # Code interpreter: text the code printed, in order.
    code_logs: str = ""
    # Code interpreter: an image the code produced, already stored (RunFiles.write).
    code_image_file_id: str = ""


@dataclass(frozen=True)
class ToolCall:
    # Unique within the run; the tool_call_id of the step's ToolCallDetail.
    id: str
    # The function name the model called (FunctionSpec.name).
    name: str
    # The JSON arguments exactly as the model wrote them (may be invalid JSON).
    arguments: str
    # The run's tool entry this call is for, in protobuf JSON (e.g. {"file_search":
    # {"max_num_results": 5}}): per-tool options.
    tool: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ToolContext:
    run: RunScope
    identity: CallerIdentity
    files: RunFiles
    # Streams a fragment of this call's output to the run's clients (a tool_call_delta
    # event, batched to the run's log like every event).
    emit: Callable[[ToolOutputDelta], Awaitable[None]]
    # A private scratch directory for this call, removed when the call ends.
    workdir: Path
    # Seconds left before the run's engine gives up on this call; None means no limit.
    timeout: float | None = None


@dataclass(frozen=True)
class CodeOutput:
    """One output of a code interpreter call, in order: logs text or an image file."""

    logs: str = ""
    image_file_id: str = ""


@dataclass(frozen=True)
class SearchHit:
    """One file_search result, exactly as the model saw it."""

    file_id: str
    filename: str
    score: float
    text: str
    # 1-based page of the chunk's start; 0 when the file has no pages.
    page: int = 0
    vector_store_id: str = ""


@dataclass(frozen=True)
class ToolOutcome:
    """What a call produced."""

    # What the model reads as the call's result (the tool message's content).
    output: str
    # Code interpreter step details: the code run and what it printed or drew.
    code_input: str = ""
    code_outputs: tuple[CodeOutput, ...] = ()
    # File search step details: the query and the results, best first.
    search_query: str = ""
    search_hits: tuple[SearchHit, ...] = ()
    # Files the tool produced that the answer may link (FilePath annotations).
    produced_file_ids: tuple[str, ...] = ()
    # Their paths under /mnt/data, in the same order: the links the answer may write.
    produced_paths: tuple[str, ...] = ()


class ToolExecutor(abc.ABC):
    """Runs one kind of built-in tool."""

    # The tool kind, as the oneof field of parley.assistants.v1.Tool names it:
    # "file_search" or "code_interpreter".
    kind: str = ""

    @abc.abstractmethod
    def function(self, tool: Mapping[str, Any]) -> FunctionSpec:
        """How this tool is offered to the model, given the run's tool entry (protobuf JSON)."""

    @abc.abstractmethod
    async def execute(self, call: ToolCall, context: ToolContext) -> ToolOutcome:
        """Runs the call. Raise ToolError for a failure the model should see."""

    async def aclose(self) -> None:
        """Releases what `build` acquired (channels, pools). Called once at shutdown."""


class FilesPort(Protocol):
    """The files service as the engine and tools use it, acting as `identity`'s user."""

    async def read(self, identity: CallerIdentity, file_id: str) -> StoredFile: ...

    async def write(self, identity: CallerIdentity, filename: str, data: bytes, *, media_type: str = "") -> str: ...


class IdentitySource(Protocol):
    def for_user(self, user_id: str) -> CallerIdentity: ...


@dataclass(frozen=True)
class ToolDeps:
    """What an executor's `build` gets from the engine process."""

    identities: IdentitySource
    files: FilesPort
    # Extra engine components by name (e.g. "search" for file_search); executors that need
    # nothing beyond the above ignore it.
    components: Mapping[str, Any] = field(default_factory=dict)
