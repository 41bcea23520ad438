"""Protobuf ⇄ domain conversion and request validation for the llm service."""

from __future__ import annotations

import re

from google.protobuf import duration_pb2, json_format, timestamp_pb2

from parley.llm.v1 import llm_pb2 as pb
from parley.llm.v1 import llm_service_pb2 as api
from services.llm import pricing
from services.llm.catalog import ModelSpec
from services.llm.models import (
    CachePolicy,
    Capability,
    ChatRequest,
    EmbedRequest,
    Finish,
    FunctionTool,
    GenerateResult,
    ImagePart,
    Message,
    Priority,
    ResponseFormat,
    Role,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)
from services.runtime.errors import FieldViolation, InvalidArgument
from services.runtime.validation import metadata_violations

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MEDIA_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
_DETAIL = {0: "auto", 1: "auto", 2: "low", 3: "high"}
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_TOOLS = 128
MAX_STOP = 4
MAX_EMBED_INPUTS = 2048


def seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def duration(value: float | None) -> duration_pb2.Duration:
    value = max(value or 0.0, 0.0)
    return duration_pb2.Duration(seconds=int(value), nanos=int(round((value % 1) * 1e9)) % 1_000_000_000)


def timestamp(when) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _raise(violations: list[FieldViolation]) -> None:
    if violations:
        first = violations[0]
        raise InvalidArgument(
            message=f"{first.field}: {first.description}" + (f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""),
            reason="INVALID_FIELD",
            field_violations=violations,
        )


def _message(m: pb.ChatMessage, path: str, violations: list[FieldViolation]) -> Message:
    if m.role not in (1, 2, 3, 4):
        violations.append(FieldViolation(f"{path}.role", "is required"))
    parts = []
    for j, part in enumerate(m.content):
        which = part.WhichOneof("part")
        where = f"{path}.content[{j}]"
        if which == "text":
            parts.append(TextPart(part.text))
        elif which == "image_url":
            url = part.image_url.url
            if not url.startswith(("http://", "https://", "data:image/")):
                violations.append(FieldViolation(f"{where}.image_url.url", "must be an http(s) or data:image URL"))
            parts.append(ImagePart(url=url, detail=_DETAIL.get(part.image_url.detail, "auto")))
        elif which == "image_data":
            data = part.image_data
            if data.media_type not in _MEDIA_TYPES:
                violations.append(FieldViolation(f"{where}.image_data.media_type", f"must be one of {sorted(_MEDIA_TYPES)}"))
            if not data.data or len(data.data) > MAX_IMAGE_BYTES:
                violations.append(FieldViolation(f"{where}.image_data.data", "must hold 1 byte to 20 MiB"))
            parts.append(ImagePart(data=data.data, media_type=data.media_type, detail=_DETAIL.get(data.detail, "auto")))
        else:
            violations.append(FieldViolation(where, "is empty"))
    if any(isinstance(p, ImagePart) for p in parts) and m.role != pb.ROLE_USER:
        violations.append(FieldViolation(f"{path}.content", "images are accepted in user messages only"))
    calls = tuple(ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in m.tool_calls)
    if calls and m.role != pb.ROLE_ASSISTANT:
        violations.append(FieldViolation(f"{path}.tool_calls", "only assistant messages call tools"))
    for j, call in enumerate(calls):
        if not call.id or not _NAME.match(call.name):
            violations.append(FieldViolation(f"{path}.tool_calls[{j}]", "needs an id and a valid function name"))
    if m.role == pb.ROLE_TOOL and not m.tool_call_id:
        violations.append(FieldViolation(f"{path}.tool_call_id", "is required for tool messages"))
    if not parts and not calls and m.role != pb.ROLE_TOOL:
        violations.append(FieldViolation(f"{path}.content", "is required"))
    if m.name and not _NAME.match(m.name):
        violations.append(FieldViolation(f"{path}.name", "must be 1 to 64 characters of [A-Za-z0-9_-]"))
    return Message(role=Role(m.role) if m.role in (1, 2, 3, 4) else Role.USER, content=tuple(parts),
                   tool_calls=calls, tool_call_id=m.tool_call_id, name=m.name)


def chat_request(r: api.GenerateRequest | api.StreamGenerateRequest) -> ChatRequest:
    violations: list[FieldViolation] = []
    if not r.messages:
        violations.append(FieldViolation("messages", "at least one message is required"))
    messages = tuple(_message(m, f"messages[{i}]", violations) for i, m in enumerate(r.messages))
    tools = []
    names = set()
    if len(r.tools) > MAX_TOOLS:
        violations.append(FieldViolation("tools", f"at most {MAX_TOOLS} tools"))
    for i, tool in enumerate(r.tools):
        fn = tool.function
        if not _NAME.match(fn.name) or fn.name in names:
            violations.append(FieldViolation(f"tools[{i}].function.name", "must be unique, 1 to 64 characters of [A-Za-z0-9_-]"))
        names.add(fn.name)
        parameters = json_format.MessageToDict(fn.parameters) if fn.HasField("parameters") else None
        tools.append(FunctionTool(name=fn.name, description=fn.description, parameters=parameters, strict=fn.strict))
    choice = None
    if r.HasField("tool_choice"):
        which = r.tool_choice.WhichOneof("choice")
        if which == "function_name":
            if r.tool_choice.function_name not in names:
                violations.append(FieldViolation("tool_choice.function_name", "must name one of the request's tools"))
            choice = ToolChoice(mode="required", function=r.tool_choice.function_name)
        elif which == "mode" and r.tool_choice.mode:
            choice = ToolChoice(mode={1: "none", 2: "auto", 3: "required"}.get(r.tool_choice.mode, "auto"))
            if choice.mode == "required" and not tools:
                violations.append(FieldViolation("tool_choice", "requires tools"))
    if r.HasField("temperature") and not 0 <= r.temperature <= 2:
        violations.append(FieldViolation("temperature", "must be between 0 and 2"))
    if r.HasField("top_p") and not 0 <= r.top_p <= 1:
        violations.append(FieldViolation("top_p", "must be between 0 and 1"))
    if r.HasField("max_tokens") and r.max_tokens <= 0:
        violations.append(FieldViolation("max_tokens", "must be positive"))
    if len(r.stop) > MAX_STOP or any(not s for s in r.stop):
        violations.append(FieldViolation("stop", f"up to {MAX_STOP} non-empty sequences"))
    fmt = ResponseFormat()
    if r.response_format.type == pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        fmt = ResponseFormat(type="json_object")
    elif r.response_format.type == pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        js = r.response_format.json_schema
        if not _NAME.match(js.name) or not js.HasField("schema"):
            violations.append(FieldViolation("response_format.json_schema", "needs a name and a schema"))
        fmt = ResponseFormat(type="json_schema", name=js.name, description=js.description,
                             schema=json_format.MessageToDict(js.schema) if js.HasField("schema") else None,
                             strict=js.strict)
    violations += metadata_violations(r.metadata)
    if r.HasField("max_queue_time") and seconds(r.max_queue_time) < 0:
        violations.append(FieldViolation("max_queue_time", "must not be negative"))
    _raise(violations)
    return ChatRequest(
        model=r.model,
        messages=messages,
        fallback_models=tuple(r.fallback_models),
        disable_fallbacks=r.disable_fallbacks,
        tools=tuple(tools),
        tool_choice=choice,
        parallel_tool_calls=r.parallel_tool_calls if r.HasField("parallel_tool_calls") else None,
        temperature=r.temperature if r.HasField("temperature") else None,
        top_p=r.top_p if r.HasField("top_p") else None,
        max_tokens=r.max_tokens if r.HasField("max_tokens") else None,
        stop=tuple(r.stop),
        seed=r.seed if r.HasField("seed") else None,
        response_format=fmt,
        cache_policy=CachePolicy(r.cache_policy) if r.cache_policy else CachePolicy.DEFAULT,
        priority=Priority(r.priority) if r.priority else Priority.NORMAL,
        max_queue_time=seconds(r.max_queue_time) if r.HasField("max_queue_time") else None,
        metadata=dict(r.metadata),
    )


def embed_request(r: api.EmbedRequest) -> EmbedRequest:
    violations: list[FieldViolation] = []
    if not 1 <= len(r.inputs) <= MAX_EMBED_INPUTS:
        violations.append(FieldViolation("inputs", f"1 to {MAX_EMBED_INPUTS} texts are required"))
    for i, text in enumerate(r.inputs):
        if not text:
            violations.append(FieldViolation(f"inputs[{i}]", "must not be empty"))
    if r.HasField("dimensions") and r.dimensions <= 0:
        violations.append(FieldViolation("dimensions", "must be positive"))
    violations += metadata_violations(r.metadata)
    _raise(violations)
    return EmbedRequest(
        model=r.model, inputs=tuple(r.inputs), dimensions=r.dimensions if r.HasField("dimensions") else None,
        truncate=r.truncate, cache_policy=CachePolicy(r.cache_policy) if r.cache_policy else CachePolicy.DEFAULT,
        priority=Priority(r.priority) if r.priority else Priority.NORMAL, metadata=dict(r.metadata),
    )


def messages_only(messages, tools) -> tuple[tuple[Message, ...], tuple[FunctionTool, ...]]:
    violations: list[FieldViolation] = []
    converted = tuple(_message(m, f"messages[{i}]", violations) for i, m in enumerate(messages))
    tool_list = tuple(
        FunctionTool(t.function.name, t.function.description,
                     json_format.MessageToDict(t.function.parameters) if t.function.HasField("parameters") else None)
        for t in tools
    )
    _raise(violations)
    return converted, tool_list


def usage_to_proto(u: Usage) -> pb.Usage:
    return pb.Usage(input_tokens=u.input_tokens, output_tokens=u.output_tokens, cached_input_tokens=u.cached_input_tokens,
                    total_tokens=u.total_tokens, reasoning_tokens=u.reasoning_tokens)


def event_to_proto(event) -> api.StreamGenerateResponse:
    if isinstance(event, TextDelta):
        return api.StreamGenerateResponse(text_delta=api.TextDelta(text=event.text))
    if isinstance(event, ToolCallDelta):
        return api.StreamGenerateResponse(tool_call_delta=api.ToolCallDelta(
            index=event.index, id=event.id, name=event.name, arguments=event.arguments))
    assert isinstance(event, Finish)
    finish = api.FinishEvent(
        id=event.id, finish_reason=int(event.finish_reason), usage=usage_to_proto(event.usage), cost_usd=event.cost_usd,
        model=event.model, cache_hit=event.cache_hit, latency=duration(event.latency),
    )
    if event.time_to_first_token is not None:
        finish.time_to_first_token.CopyFrom(duration(event.time_to_first_token))
    return api.StreamGenerateResponse(finish=finish)


def generate_response(result: GenerateResult) -> api.GenerateResponse:
    c = result.completion
    message = pb.ChatMessage(role=pb.ROLE_ASSISTANT)
    if c.text:
        message.content.add(text=c.text)
    for call in c.tool_calls:
        message.tool_calls.add(id=call.id, name=call.name, arguments=call.arguments)
    return api.GenerateResponse(
        id=result.id, message=message, finish_reason=int(c.finish_reason), usage=usage_to_proto(c.usage),
        cost_usd=result.cost_usd, model=result.model, cache_hit=result.cache_hit, latency=duration(result.latency),
        queue_time=duration(result.queue_time),
    )


def model_to_proto(spec: ModelSpec, *, configured: bool, cooldown_until: float | None) -> pb.Model:
    price = pricing.pricing_of(spec)
    model = pb.Model(
        id=spec.id, provider=spec.provider, display_name=spec.display_name or spec.vendor_model,
        description=spec.description, aliases=list(spec.aliases),
        capabilities=sorted(int(c) for c in spec.capabilities), context_window=spec.context_window,
        max_output_tokens=spec.max_output_tokens, embedding_dimensions=spec.embedding_dimensions,
        pricing=pb.ModelPricing(input_usd_per_million=price.input, output_usd_per_million=price.output,
                                cached_input_usd_per_million=price.cached_input),
        fallback_models=list(spec.fallbacks),
    )
    if not configured:
        model.availability = pb.MODEL_AVAILABILITY_UNCONFIGURED
    elif cooldown_until is not None:
        model.availability = pb.MODEL_AVAILABILITY_COOLDOWN
        model.cooldown_expire_time.FromSeconds(int(cooldown_until) + 1)
    else:
        model.availability = pb.MODEL_AVAILABILITY_AVAILABLE
    return model


def capabilities(values) -> frozenset[Capability]:
    found = set()
    for value in values:
        if value not in (1, 2, 3, 4, 5, 6):
            raise InvalidArgument.for_field("capabilities", f"unknown capability {value}")
        found.add(Capability(value))
    return frozenset(found)
