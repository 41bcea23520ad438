"""Mistral on the official `mistralai` SDK: chat completions streamed as server-sent chunks.

Mistral's chunks resemble OpenAI's, with differences handled here: a tool call usually
arrives whole in one delta and its `index` may be missing (so calls are numbered by id),
`tool_choice` "required" is "any", content may be a list of chunks, and usage comes on the
last chunk.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx2
from mistralai.client import Mistral
from mistralai.client import errors as mistral_errors

from services.llm.models import (
    ChatRequest,
    FinishReason,
    ImagePart,
    Message,
    ProviderFinish,
    Role,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from services.llm.providers.base import (
    EmbeddingBatch,
    ProviderError,
    kind_for_status,
    malformed_stream,
    parse_retry_after,
)
from services.llm.providers.openai import FINISH_REASONS, image_url, safe_message
from services.llm.tokens import estimate_text

_ROLES = {Role.SYSTEM: "system", Role.USER: "user", Role.ASSISTANT: "assistant", Role.TOOL: "tool"}


def to_mistral_messages(messages: tuple[Message, ...]) -> list[dict]:
    out: list[dict] = []
    for m in messages:
        entry: dict = {"role": _ROLES[m.role]}
        if m.role == Role.TOOL:
            entry.update(tool_call_id=m.tool_call_id, content=m.text)
        elif m.has_images:
            entry["content"] = [
                {"type": "image_url", "image_url": {"url": image_url(p)}} if isinstance(p, ImagePart)
                else {"type": "text", "text": p.text}
                for p in m.content
            ]
        else:
            entry["content"] = m.text
        if m.tool_calls:
            entry["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ]
        out.append(entry)
    return out


def mistral_params(request: ChatRequest) -> dict:
    params: dict = {}
    if request.tools:
        params["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters or {"type": "object", "properties": {}}}}
            for t in request.tools
        ]
        if request.parallel_tool_calls is not None:
            params["parallel_tool_calls"] = request.parallel_tool_calls
        if request.tool_choice is not None:
            choice = request.tool_choice
            params["tool_choice"] = (
                {"type": "function", "function": {"name": choice.function}} if choice.function
                else {"none": "none", "auto": "auto", "required": "any"}[choice.mode]
            )
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.top_p is not None:
        params["top_p"] = request.top_p
    if request.max_tokens is not None:
        params["max_tokens"] = request.max_tokens
    if request.stop:
        params["stop"] = list(request.stop)
    if request.seed is not None:
        params["random_seed"] = request.seed
    fmt = request.response_format
    if fmt.type == "json_object":
        params["response_format"] = {"type": "json_object"}
    elif fmt.type == "json_schema":
        params["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.name, "schema_definition": fmt.schema or {}, "strict": fmt.strict,
            **({"description": fmt.description} if fmt.description else {}),
        }}
    return params


def provider_error(exc: Exception) -> ProviderError:
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderError("timeout", "the provider did not answer in time")
    if isinstance(exc, (httpx2.TransportError, mistral_errors.NoResponseError)):
        return ProviderError("connection", "could not reach the provider")
    if isinstance(exc, mistral_errors.MistralError) and 200 <= exc.status_code < 300:
        # The SDK could not read a successful response (an SSE event whose data is not JSON).
        return malformed_stream()
    if isinstance(exc, mistral_errors.MistralError):
        status = exc.status_code
        kind = kind_for_status(status)
        text = exc.body or exc.message
        try:
            parsed = json.loads(exc.body)
            text = parsed.get("message") or parsed.get("detail") or text
        except (ValueError, TypeError, AttributeError):
            pass
        message = "authentication with the provider failed" if kind == "auth" else safe_message(str(text))
        return ProviderError(kind, f"HTTP {status}: {message}", status=status, retry_after=parse_retry_after(exc.headers))
    return ProviderError("server", f"unexpected provider failure ({type(exc).__name__})")


def _content_text(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for chunk in content:  # a list of typed chunks
        text = getattr(chunk, "text", None)
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


def _server_url(base_url: str | None) -> str | None:
    if not base_url:
        return None
    base = base_url.rstrip("/")
    return base[:-3] if base.endswith("/v1") else base


_ERRORS = (mistral_errors.MistralError, mistral_errors.NoResponseError, httpx2.HTTPError)


class MistralProvider:
    def __init__(self, name: str, *, api_key: str | None, base_url: str | None) -> None:
        self.name = name
        self._http = httpx2.AsyncClient(follow_redirects=True, limits=httpx2.Limits(max_connections=1000,
                                                                                    max_keepalive_connections=100))
        self.client = Mistral(api_key=api_key, server_url=_server_url(base_url), async_client=self._http)

    async def stream(self, model: str, request: ChatRequest, *, max_tokens: int, timeout: float | None) -> AsyncIterator[StreamEvent]:
        timeout_ms = int(timeout * 1000) if timeout else None
        try:
            stream = await self.client.chat.stream_async(
                model=model, messages=to_mistral_messages(request.messages), retries=None, timeout_ms=timeout_ms,
                **mistral_params(request),
            )
        except _ERRORS as exc:
            raise provider_error(exc) from None
        finish = FinishReason.UNSPECIFIED
        usage: Usage | None = None
        response_model = ""
        output_chars = 0
        ids: dict[str, int] = {}
        named: set[int] = set()
        last_index = -1
        try:
            async for event in stream:
                chunk = event.data
                response_model = chunk.model or response_model
                if chunk.usage is not None and (chunk.usage.prompt_tokens or chunk.usage.completion_tokens):
                    usage = Usage(input_tokens=chunk.usage.prompt_tokens or 0,
                                  output_tokens=chunk.usage.completion_tokens or 0)
                for choice in chunk.choices:
                    delta = choice.delta
                    text = _content_text(delta.content if isinstance(delta.content, (str, list)) else None)
                    if text:
                        output_chars += len(text)
                        yield TextDelta(text)
                    calls = delta.tool_calls if isinstance(delta.tool_calls, list) else []
                    for call in calls:
                        call_id = call.id if call.id and call.id != "null" else ""
                        if call_id and call_id not in ids:
                            ids[call_id] = len(ids)
                        index = ids[call_id] if call_id else max(last_index, 0)
                        last_index = index
                        arguments = call.function.arguments
                        if not isinstance(arguments, str):
                            arguments = json.dumps(arguments)
                        output_chars += len(arguments)
                        first = index not in named
                        named.add(index)
                        yield ToolCallDelta(index=index, id=call_id if first else "",
                                            name=(call.function.name or "") if first else "", arguments=arguments)
                    if choice.finish_reason:
                        finish = FINISH_REASONS.get(str(choice.finish_reason), FinishReason.STOP)
        except _ERRORS as exc:
            raise provider_error(exc) from None
        except ValueError:  # the SDK's models refused an event that is not Mistral's format
            raise malformed_stream() from None
        finally:
            await stream.close()
        if usage is None:
            usage = Usage(input_tokens=sum(estimate_text(m.text) + 3 for m in request.messages),
                          output_tokens=output_chars // 4)
        yield ProviderFinish(finish if finish != FinishReason.UNSPECIFIED else FinishReason.STOP, usage, response_model)

    async def embed(self, model: str, inputs: list[str], *, dimensions: int | None, truncate: bool,
                    timeout: float | None) -> EmbeddingBatch:
        try:
            reply = await self.client.embeddings.create_async(
                model=model, inputs=inputs, retries=None, timeout_ms=int(timeout * 1000) if timeout else None,
            )
        except _ERRORS as exc:
            raise provider_error(exc) from None
        vectors = [list(item.embedding or []) for item in sorted(reply.data, key=lambda d: d.index or 0)]
        tokens = reply.usage.prompt_tokens if reply.usage else sum(estimate_text(t) for t in inputs)
        return EmbeddingBatch(vectors=vectors, input_tokens=tokens or 0)

    async def aclose(self) -> None:
        await self._http.aclose()
