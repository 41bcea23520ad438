"""Protobuf ⇄ domain conversion for the llm service. Nothing here decides what a request may
ask for (that is `validation` and `capabilities`). Enum numbers the contract does not define
and non-finite numbers inside Structs never get here: the shared request check
(`services.runtime.request_check`) refuses them for every RPC before the servicer runs."""

from __future__ import annotations

from datetime import datetime, timezone

from google.protobuf import duration_pb2, json_format, timestamp_pb2

from parley.llm.v1 import llm_pb2 as pb
from parley.llm.v1 import llm_service_pb2 as api
from services.llm import pricing
from services.llm.budgets import Limit
from services.llm.listing import ModelView
from services.llm.models import (
    CachePolicy,
    Capability,
    ChatRequest,
    EmbedRequest,
    EmbedResult,
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
from services.llm.reports import BudgetView, UsagePage, UsageQuery
from services.llm.repository import UsageGroup
from services.runtime.errors import FieldViolation, collect

_DETAIL = {pb.IMAGE_DETAIL_UNSPECIFIED: "auto", pb.IMAGE_DETAIL_AUTO: "auto", pb.IMAGE_DETAIL_LOW: "low",
           pb.IMAGE_DETAIL_HIGH: "high"}
_TOOL_CHOICE = {pb.TOOL_CHOICE_MODE_NONE: "none", pb.TOOL_CHOICE_MODE_AUTO: "auto",
                pb.TOOL_CHOICE_MODE_REQUIRED: "required"}
_FORMAT = {pb.RESPONSE_FORMAT_TYPE_UNSPECIFIED: "text", pb.RESPONSE_FORMAT_TYPE_TEXT: "text",
           pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT: "json_object", pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: "json_schema"}
_GROUP_KEYS = {pb.USAGE_GROUP_BY_USER: "user_id", pb.USAGE_GROUP_BY_MODEL: "model", pb.USAGE_GROUP_BY_DAY: "day"}


def seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def duration(value: float | None) -> duration_pb2.Duration:
    value = max(value or 0.0, 0.0)
    return duration_pb2.Duration(seconds=int(value), nanos=int(round((value % 1) * 1e9)) % 1_000_000_000)


def timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc))
    return stamp


# ---- requests ---------------------------------------------------------------------------


def _message(m: pb.ChatMessage, path: str, violations: list[FieldViolation]) -> Message:
    parts = []
    for j, part in enumerate(m.content):
        which = part.WhichOneof("part")
        if which == "text":
            parts.append(TextPart(part.text))
        elif which == "image_url":
            parts.append(ImagePart(url=part.image_url.url, detail=_DETAIL[part.image_url.detail]))
        elif which == "image_data":
            data = part.image_data
            parts.append(ImagePart(data=data.data, media_type=data.media_type, detail=_DETAIL[data.detail]))
        else:
            violations.append(FieldViolation(f"{path}.content[{j}]", "is empty"))
    calls = tuple(ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in m.tool_calls)
    return Message(role=Role(m.role) if m.role else None, content=tuple(parts), tool_calls=calls,
                   tool_call_id=m.tool_call_id, name=m.name)


def _messages(messages) -> tuple[Message, ...]:
    violations: list[FieldViolation] = []
    converted = tuple(_message(m, f"messages[{i}]", violations) for i, m in enumerate(messages))
    collect(violations)
    return converted


def _struct(message) -> dict:
    return json_format.MessageToDict(message)


def _tools(tools, *, strict: bool = True) -> tuple[FunctionTool, ...]:
    return tuple(
        FunctionTool(name=t.function.name, description=t.function.description,
                     parameters=_struct(t.function.parameters) if t.function.HasField("parameters") else None,
                     strict=t.function.strict if strict else False)
        for t in tools
    )


def chat_request(r: api.GenerateRequest | api.StreamGenerateRequest) -> ChatRequest:
    messages = _messages(r.messages)
    choice = None
    if r.HasField("tool_choice"):
        which = r.tool_choice.WhichOneof("choice")
        if which == "function_name":
            choice = ToolChoice(mode="required", function=r.tool_choice.function_name)
        elif which == "mode" and r.tool_choice.mode:
            choice = ToolChoice(mode=_TOOL_CHOICE[r.tool_choice.mode])
    fmt = ResponseFormat()
    kind = _FORMAT[r.response_format.type]
    if kind == "json_object":
        fmt = ResponseFormat(type="json_object")
    elif kind == "json_schema":
        js = r.response_format.json_schema
        fmt = ResponseFormat(type="json_schema", name=js.name, description=js.description,
                             schema=_struct(js.schema) if js.HasField("schema") else None, strict=js.strict)
    return ChatRequest(
        model=r.model,
        messages=messages,
        fallback_models=tuple(r.fallback_models),
        disable_fallbacks=r.disable_fallbacks,
        tools=_tools(r.tools),
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
    return EmbedRequest(
        model=r.model, inputs=tuple(r.inputs), dimensions=r.dimensions if r.HasField("dimensions") else None,
        truncate=r.truncate, cache_policy=CachePolicy(r.cache_policy) if r.cache_policy else CachePolicy.DEFAULT,
        priority=Priority(r.priority) if r.priority else Priority.NORMAL, metadata=dict(r.metadata),
    )


def count_tokens_input(r: api.CountTokensRequest) -> tuple[tuple[Message, ...], tuple[FunctionTool, ...]]:
    return _messages(r.messages), _tools(r.tools, strict=False)


def _unspecified(field: str, values) -> list[FieldViolation]:
    """The _UNSPECIFIED (zero) entries of a repeated enum, which name nothing."""
    return [FieldViolation(f"{field}[{i}]", "must not be unspecified") for i, v in enumerate(values) if v == 0]


def capabilities(values) -> frozenset[Capability]:
    collect(_unspecified("capabilities", values))
    return frozenset(Capability(v) for v in values)


def usage_query(r: api.GetUsageRequest) -> UsageQuery:
    collect(_unspecified("group_by", r.group_by))
    group_by: list[str] = []
    for value in r.group_by:
        if _GROUP_KEYS[value] not in group_by:
            group_by.append(_GROUP_KEYS[value])
    return UsageQuery(
        start=r.start_time if r.HasField("start_time") else None,
        end=r.end_time if r.HasField("end_time") else None,
        group_by=tuple(group_by), models=tuple(r.models), target_user_id=r.target_user_id, all_users=r.all_users,
        page_size=r.page_size, page_token=r.page_token,
    )


def limits(values) -> list[Limit]:
    found, violations = [], []
    for i, limit in enumerate(values):
        which = limit.WhichOneof("amount")
        if which is None:
            violations.append(FieldViolation(f"limits[{i}]", "set limit_usd or limit_tokens"))
            continue
        found.append(Limit(period=limit.period,
                           limit_usd=limit.limit_usd if which == "limit_usd" else None,
                           limit_tokens=limit.limit_tokens if which == "limit_tokens" else None))
    collect(violations)
    return found


# ---- responses --------------------------------------------------------------------------


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


def embed_response(result: EmbedResult) -> api.EmbedResponse:
    return api.EmbedResponse(
        embeddings=[api.Embedding(values=v, cache_hit=hit) for v, hit in zip(result.vectors, result.cache_hits)],
        model=result.model, usage=usage_to_proto(result.usage), cost_usd=result.cost_usd,
    )


def model_to_proto(view: ModelView) -> pb.Model:
    spec = view.spec
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
    if not view.configured:
        model.availability = pb.MODEL_AVAILABILITY_UNCONFIGURED
    elif view.cooldown_until is not None:
        model.availability = pb.MODEL_AVAILABILITY_COOLDOWN
        model.cooldown_expire_time.FromSeconds(int(view.cooldown_until) + 1)
    else:
        model.availability = pb.MODEL_AVAILABILITY_AVAILABLE
    return model


def _latency(values: tuple) -> pb.LatencyStats:
    mean, p50, p95, p99, top = (v / 1000 if v is not None else 0.0 for v in values)
    return pb.LatencyStats(mean=duration(mean), p50=duration(p50), p95=duration(p95), p99=duration(p99), max=duration(top))


def _usage_row(g: UsageGroup) -> pb.UsageRow:
    row = pb.UsageRow(
        user_id=g.user_id or "", model=g.model or "", request_count=g.request_count, error_count=g.error_count,
        cache_hit_count=g.cache_hit_count,
        usage=pb.Usage(input_tokens=g.input_tokens, output_tokens=g.output_tokens,
                       cached_input_tokens=g.cached_input_tokens, reasoning_tokens=g.reasoning_tokens,
                       total_tokens=g.input_tokens + g.output_tokens),
        cost_usd=g.cost_usd, latency=_latency(g.latency_ms), time_to_first_token=_latency(g.ttft_ms),
    )
    if g.day is not None:
        row.day_start_time.CopyFrom(timestamp(g.day))
    return row


def usage_response(page: UsagePage) -> api.GetUsageResponse:
    return api.GetUsageResponse(rows=[_usage_row(g) for g in page.rows], total=_usage_row(page.total),
                                next_page_token=page.next_page_token)


def budget_to_proto(view: BudgetView) -> pb.Budget:
    result = pb.Budget(user_id=view.user_id)
    if view.update_time is not None:
        result.update_time.CopyFrom(timestamp(view.update_time))
    for s in view.statuses:
        limit = pb.BudgetLimit(period=s.limit.period, spent_usd=s.spent_usd, spent_tokens=s.spent_tokens,
                               admin_set=s.limit.admin_set)
        if s.limit.limit_usd is not None:
            limit.limit_usd = s.limit.limit_usd
        else:
            limit.limit_tokens = int(s.limit.limit_tokens or 0)
        limit.period_start_time.CopyFrom(timestamp(s.start))
        limit.reset_time.CopyFrom(timestamp(s.reset))
        result.limits.append(limit)
    return result
