"""The llm service's domain types: provider-neutral requests, stream events and results.

Enum values equal the protobuf ones, so conversion is a cast; nothing here imports grpc.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


# Requests with more content than this (characters and bytes) do their CPU-heavy per-request
# work — token counting, cache-key hashing — in a worker thread instead of on the event loop;
# below it a thread hop costs more than the work.
OFF_LOOP_CHARS = 256 * 1024


class Role(IntEnum):
    SYSTEM = 1
    USER = 2
    ASSISTANT = 3
    TOOL = 4


class FinishReason(IntEnum):
    UNSPECIFIED = 0
    STOP = 1
    LENGTH = 2
    TOOL_CALLS = 3
    CONTENT_FILTER = 4
    ERROR = 5


class CachePolicy(IntEnum):
    DEFAULT = 1
    BYPASS = 2
    FORCE = 3


class Priority(IntEnum):
    LOW = 1
    NORMAL = 2
    HIGH = 3


class Capability(IntEnum):
    STREAMING = 1
    TOOLS = 2
    VISION = 3
    EMBEDDINGS = 4
    JSON_OUTPUT = 5
    JSON_SCHEMA = 6


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image by URL (http(s) or data:) or inline bytes; exactly one of the two is set."""

    url: str = ""
    data: bytes = b""
    media_type: str = ""
    detail: str = "auto"  # "auto", "low" or "high"


ContentPart = TextPart | ImagePart


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    # None: the caller set none (refused by validation before any provider sees it).
    role: Role | None
    content: tuple[ContentPart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def has_images(self) -> bool:
        return any(isinstance(p, ImagePart) for p in self.content)


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str = ""
    # JSON Schema of the arguments; None means no arguments.
    parameters: dict | None = None
    strict: bool = False


@dataclass(frozen=True)
class ToolChoice:
    """`mode` is "none", "auto" or "required"; or `function` names the one tool to call."""

    mode: str = "auto"
    function: str = ""


@dataclass(frozen=True)
class ResponseFormat:
    type: str = "text"  # "text", "json_object" or "json_schema"
    name: str = ""
    description: str = ""
    schema: dict | None = None
    strict: bool = False


@dataclass(frozen=True)
class ChatRequest:
    """A Generate/StreamGenerate request after validation (model not yet resolved)."""

    model: str
    messages: tuple[Message, ...]
    fallback_models: tuple[str, ...] = ()
    disable_fallbacks: bool = False
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    response_format: ResponseFormat = ResponseFormat()
    cache_policy: CachePolicy = CachePolicy.DEFAULT
    priority: Priority = Priority.NORMAL
    # Seconds; None means the configured queue deadline.
    max_queue_time: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EmbedRequest:
    model: str
    inputs: tuple[str, ...]
    dimensions: int | None = None
    truncate: bool = False
    cache_policy: CachePolicy = CachePolicy.DEFAULT
    priority: Priority = Priority.NORMAL
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


# ---- Stream events, as providers produce them and the service forwards them ----------------


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class ProviderFinish:
    """The provider's last word: why it stopped, what it used, and which model answered."""

    finish_reason: FinishReason
    usage: Usage
    # The vendor's own model name, when it reports one.
    response_model: str = ""


StreamEvent = TextDelta | ToolCallDelta | ProviderFinish


@dataclass
class Completion:
    """A whole answer: what Generate returns, and what the response cache stores."""

    text: str
    tool_calls: list[ToolCall]
    finish_reason: FinishReason
    usage: Usage


@dataclass(frozen=True)
class Finish:
    """The service's final stream event (FinishEvent)."""

    id: str
    finish_reason: FinishReason
    usage: Usage
    cost_usd: float
    model: str
    cache_hit: bool
    time_to_first_token: float | None
    latency: float
    queue_time: float


@dataclass
class GenerateResult:
    id: str
    completion: Completion
    cost_usd: float
    model: str
    cache_hit: bool
    latency: float
    queue_time: float


@dataclass
class EmbedResult:
    vectors: list[list[float]]
    cache_hits: list[bool]
    model: str
    usage: Usage
    cost_usd: float


class CompletionBuilder:
    """Accumulates stream events into a Completion (for Generate and for the cache)."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._calls: dict[int, list[str]] = {}
        self._ids: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self.finish: ProviderFinish | None = None

    def add(self, event: StreamEvent) -> None:
        if isinstance(event, TextDelta):
            self._text.append(event.text)
        elif isinstance(event, ToolCallDelta):
            self._calls.setdefault(event.index, [])
            if event.id:
                self._ids[event.index] = event.id
            if event.name:
                self._names[event.index] = event.name
            if event.arguments:
                self._calls[event.index].append(event.arguments)
        else:
            self.finish = event

    def build(self) -> Completion:
        finish = self.finish or ProviderFinish(FinishReason.STOP, Usage())
        calls = [
            ToolCall(id=self._ids.get(i, f"call_{i}"), name=self._names.get(i, ""), arguments="".join(self._calls[i]))
            for i in sorted(self._calls)
        ]
        return Completion(text="".join(self._text), tool_calls=calls, finish_reason=finish.finish_reason, usage=finish.usage)


def completion_events(completion: Completion) -> list[StreamEvent]:
    """A stored completion replayed as stream events (cache hits, non-streaming providers)."""
    events: list[StreamEvent] = []
    if completion.text:
        events.append(TextDelta(completion.text))
    for index, call in enumerate(completion.tool_calls):
        events.append(ToolCallDelta(index=index, id=call.id, name=call.name, arguments=call.arguments))
    return events
