"""Anthropic on the official `anthropic` SDK: the Messages API, streamed.

Translation, both ways, in one place: system messages are joined into the system prompt;
tool results become `tool_result` blocks of the next user turn (consecutive ones merged);
assistant tool calls become `tool_use` blocks; JSON-schema output is a forced tool call whose
arguments are streamed back as text. The stream's message_start / content_block_start /
content_block_delta / content_block_stop / message_delta / message_stop events become text
and tool-call deltas and one final event.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import anthropic

from services.llm.models import (
    ChatRequest,
    FinishReason,
    ImagePart,
    Message,
    ProviderFinish,
    Role,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallDelta,
    Usage,
)
from services.llm.providers.base import (
    EmbeddingBatch,
    ProviderError,
    first_model_ids,
    kind_for_status,
    malformed_stream,
    parse_retry_after,
)
from services.llm.providers.openai import safe_message

STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}
_ERROR_TYPES = {
    "overloaded_error": "overloaded",
    "rate_limit_error": "rate_limited",
    "api_error": "server",
    "timeout_error": "timeout",
    "invalid_request_error": "bad_request",
    "request_too_large": "too_large",
    "authentication_error": "auth",
    "permission_error": "auth",
    "not_found_error": "not_found",
}
_DATA_URL = re.compile(r"^data:(image/[a-z+.-]+);base64,(.*)$", re.S)
JSON_OBJECT_INSTRUCTION = "Answer with one JSON object only, no prose and no code fences."


def _image_block(part: ImagePart) -> dict:
    if part.data:
        import base64

        return {"type": "image", "source": {"type": "base64", "media_type": part.media_type,
                                            "data": base64.b64encode(part.data).decode()}}
    match = _DATA_URL.match(part.url)
    if match:
        return {"type": "image", "source": {"type": "base64", "media_type": match.group(1), "data": match.group(2)}}
    return {"type": "image", "source": {"type": "url", "url": part.url}}


def _arguments(text: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"value": value}


def to_anthropic(messages: tuple[Message, ...]) -> tuple[str, list[dict]]:
    """(system prompt, messages) in the Messages API's shape."""
    system: list[str] = []
    out: list[dict] = []

    def append(role: str, blocks: list[dict]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)  # the API wants alternating turns
        else:
            out.append({"role": role, "content": blocks})

    for m in messages:
        if m.role == Role.SYSTEM:
            system.append(m.text)
        elif m.role == Role.TOOL:
            append("user", [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.text}])
        elif m.role == Role.USER:
            append("user", [
                _image_block(p) if isinstance(p, ImagePart) else {"type": "text", "text": p.text}
                for p in m.content if not (isinstance(p, TextPart) and not p.text)
            ])
        else:
            blocks = [{"type": "text", "text": m.text}] if m.text else []
            blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": _arguments(c.arguments)}
                       for c in m.tool_calls]
            append("assistant", blocks)
    return "\n\n".join(s for s in system if s), out


def anthropic_params(request: ChatRequest, max_tokens: int) -> tuple[dict, str | None]:
    """The request's options, and the name of the tool standing in for JSON-schema output."""
    system, messages = to_anthropic(request.messages)
    params: dict = {"messages": messages, "max_tokens": max_tokens}
    tools = [
        {"name": t.name, "description": t.description,
         "input_schema": t.parameters or {"type": "object", "properties": {}}}
        for t in request.tools
    ]
    json_tool = None
    fmt = request.response_format
    if fmt.type == "json_schema":
        json_tool = fmt.name
        tools.append({"name": fmt.name, "description": fmt.description or "Give the answer in this structure.",
                      "input_schema": fmt.schema or {"type": "object"}})
        params["tool_choice"] = {"type": "tool", "name": fmt.name}
    elif fmt.type == "json_object":
        system = f"{system}\n\n{JSON_OBJECT_INSTRUCTION}" if system else JSON_OBJECT_INSTRUCTION
    if tools:
        params["tools"] = tools
    if request.tool_choice is not None and request.tools and json_tool is None:
        choice = request.tool_choice
        if choice.function:
            params["tool_choice"] = {"type": "tool", "name": choice.function}
        else:
            params["tool_choice"] = {"type": {"none": "none", "auto": "auto", "required": "any"}[choice.mode]}
    if request.parallel_tool_calls is False and "tool_choice" in params and params["tool_choice"]["type"] != "none":
        params["tool_choice"]["disable_parallel_tool_use"] = True
    elif request.parallel_tool_calls is False and tools:
        params["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": True}
    if system:
        params["system"] = system
    # This SDK version no longer names the sampling parameters; the API still takes them.
    extra: dict = {}
    if request.temperature is not None:
        extra["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None:
        extra["top_p"] = request.top_p
    if extra:
        params["extra_body"] = extra
    if request.stop:
        params["stop_sequences"] = list(request.stop)
    return params, json_tool


def provider_error(exc: Exception) -> ProviderError:
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderError("timeout", "the provider did not answer in time")
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderError("connection", "could not reach the provider")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        if status < 400:  # an error event inside a 200 stream
            kind = _ERROR_TYPES.get(str(error.get("type", "")), "server")
        else:
            kind = kind_for_status(status)
        text = error.get("message") or exc.message
        message = "authentication with the provider failed" if kind == "auth" else safe_message(text)
        return ProviderError(kind, f"HTTP {status}: {message}", status=status,
                             retry_after=parse_retry_after(exc.response.headers))
    if isinstance(exc, anthropic.APIError):
        return ProviderError("server", f"the provider reported an error: {safe_message(exc.message)}")
    return ProviderError("server", f"unexpected provider failure ({type(exc).__name__})")


class AnthropicProvider:
    def __init__(self, name: str, *, api_key: str | None, base_url: str | None, transport: str = "aiohttp") -> None:
        self.name = name
        http_client = anthropic.DefaultAioHttpClient() if transport == "aiohttp" else anthropic.DefaultAsyncHttpxClient()
        self.client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0, http_client=http_client)

    async def stream(self, model: str, request: ChatRequest, *, max_tokens: int, timeout: float | None) -> AsyncIterator[StreamEvent]:
        params, json_tool = anthropic_params(request, max_tokens)
        try:
            stream = await self.client.messages.create(model=model, stream=True, timeout=timeout, **params)
        except anthropic.AnthropicError as exc:
            raise provider_error(exc) from None
        usage = Usage()
        finish = FinishReason.STOP
        response_model = ""
        # Anthropic numbers content blocks; tool calls are numbered among themselves.
        tool_index: dict[int, int] = {}
        json_blocks: set[int] = set()
        try:
            async for event in stream:
                kind = event.type
                if kind == "message_start":
                    message = event.message
                    response_model = message.model or ""
                    u = message.usage
                    cached = u.cache_read_input_tokens or 0
                    usage.input_tokens = (u.input_tokens or 0) + cached + (u.cache_creation_input_tokens or 0)
                    usage.cached_input_tokens = cached
                    usage.output_tokens = u.output_tokens or 0
                elif kind == "content_block_start":
                    block = event.content_block
                    if block.type == "tool_use":
                        if json_tool is not None and block.name == json_tool:
                            json_blocks.add(event.index)
                            continue
                        tool_index[event.index] = len(tool_index)
                        yield ToolCallDelta(index=tool_index[event.index], id=block.id, name=block.name)
                    elif block.type == "text" and getattr(block, "text", ""):
                        yield TextDelta(block.text)
                elif kind == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta":
                        if delta.text:
                            yield TextDelta(delta.text)
                    elif delta.type == "input_json_delta" and delta.partial_json:
                        if event.index in json_blocks:
                            yield TextDelta(delta.partial_json)
                        elif event.index in tool_index:
                            yield ToolCallDelta(index=tool_index[event.index], arguments=delta.partial_json)
                elif kind == "message_delta":
                    if event.delta.stop_reason:
                        finish = STOP_REASONS.get(event.delta.stop_reason, FinishReason.STOP)
                    u = event.usage
                    if u is not None:
                        usage.output_tokens = u.output_tokens or usage.output_tokens
                        if u.input_tokens:
                            cached = u.cache_read_input_tokens or usage.cached_input_tokens
                            usage.input_tokens = u.input_tokens + cached + (u.cache_creation_input_tokens or 0)
                            usage.cached_input_tokens = cached
        except anthropic.AnthropicError as exc:
            raise provider_error(exc) from None
        except ValueError:  # the SDK's JSON decoding (or its models) of an event that is not Anthropic's format
            raise malformed_stream() from None
        finally:
            await stream.close()
        if json_blocks and finish == FinishReason.TOOL_CALLS and not tool_index:
            finish = FinishReason.STOP
        yield ProviderFinish(finish, usage, response_model)

    async def embed(self, model: str, inputs: list[str], *, dimensions: int | None, truncate: bool,
                    timeout: float | None) -> EmbeddingBatch:
        raise ProviderError("not_found", "Anthropic offers no embedding models")

    async def list_models(self, *, timeout: float, limit: int = 2000) -> list[str]:
        """Anthropic's model ids (`GET /v1/models`, paged by the SDK)."""
        try:
            return await first_model_ids(self.client.models.list(limit=1000, timeout=timeout), limit)
        except Exception as exc:  # noqa: BLE001 - mapped in one place
            raise provider_error(exc) from None

    async def aclose(self) -> None:
        await self.client.close()
