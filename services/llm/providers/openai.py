"""OpenAI and OpenAI-compatible servers (Ollama, vLLM, llama.cpp) on the official `openai` SDK.

Requests use Chat Completions with `stream_options.include_usage`, so the last chunk carries
the usage; tool calls arrive as deltas keyed by index, forwarded as they come. SDK retries
are off: the service's retry loop decides.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import aiohttp
import httpx2
import openai

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
    first_model_ids,
    kind_for_status,
    malformed_stream,
    parse_retry_after,
)
from services.llm.tokens import estimate_text
from services.runtime.logs import mask_secrets

FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}
_ROLES = {Role.SYSTEM: "system", Role.USER: "user", Role.ASSISTANT: "assistant", Role.TOOL: "tool"}


def safe_message(text: str, limit: int = 300) -> str:
    """A vendor's error text, fit for callers and logs: secrets masked, length bounded."""
    text = mask_secrets(str(text or "")).strip()
    return text[:limit] + ("…" if len(text) > limit else "")


def image_url(part: ImagePart) -> str:
    if part.data:
        return f"data:{part.media_type};base64,{base64.b64encode(part.data).decode()}"
    return part.url


def to_openai_messages(messages: tuple[Message, ...]) -> list[dict]:
    out: list[dict] = []
    for m in messages:
        entry: dict = {"role": _ROLES[m.role]}
        if m.role == Role.TOOL:
            entry["tool_call_id"] = m.tool_call_id
            entry["content"] = m.text
        elif m.has_images:
            entry["content"] = [
                {"type": "image_url", "image_url": {"url": image_url(p), "detail": p.detail}}
                if isinstance(p, ImagePart) else {"type": "text", "text": p.text}
                for p in m.content
            ]
        else:
            entry["content"] = m.text if (m.content or m.role != Role.ASSISTANT) else None
        if m.tool_calls:
            entry["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ]
        if m.name and m.role != Role.TOOL:
            entry["name"] = m.name
        out.append(entry)
    return out


def openai_params(request: ChatRequest, *, compatible: bool) -> dict:
    params: dict = {}
    if request.tools:
        params["tools"] = [
            {"type": "function", "function": {
                "name": t.name, "description": t.description,
                "parameters": t.parameters or {"type": "object", "properties": {}},
                **({"strict": True} if t.strict else {}),
            }}
            for t in request.tools
        ]
        if request.parallel_tool_calls is not None:
            params["parallel_tool_calls"] = request.parallel_tool_calls
    if request.tool_choice is not None and request.tools:
        choice = request.tool_choice
        params["tool_choice"] = (
            {"type": "function", "function": {"name": choice.function}} if choice.function else choice.mode
        )
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.top_p is not None:
        params["top_p"] = request.top_p
    if request.max_tokens is not None:
        params["max_tokens" if compatible else "max_completion_tokens"] = request.max_tokens
    if request.stop:
        params["stop"] = list(request.stop)
    if request.seed is not None:
        params["seed"] = request.seed
    fmt = request.response_format
    if fmt.type == "json_object":
        params["response_format"] = {"type": "json_object"}
    elif fmt.type == "json_schema":
        schema = {"name": fmt.name, "schema": fmt.schema or {}, "strict": fmt.strict}
        if fmt.description:
            schema["description"] = fmt.description
        params["response_format"] = {"type": "json_schema", "json_schema": schema}
    return params


def provider_error(exc: Exception) -> ProviderError:
    """One place mapping the SDK's exceptions (shared by OpenAI-style SDK errors)."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError("timeout", "the provider did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError("connection", "could not reach the provider")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        kind = kind_for_status(status)
        if kind == "bad_request" and (getattr(exc, "code", None) == "context_length_exceeded"):
            kind = "too_large"
        message = "authentication with the provider failed" if kind == "auth" else safe_message(exc.message)
        return ProviderError(kind, f"HTTP {status}: {message}", status=status,
                             retry_after=parse_retry_after(exc.response.headers))
    if isinstance(exc, openai.APIError):
        return ProviderError("server", f"the provider reported an error: {safe_message(exc.message)}")
    return ProviderError("server", f"unexpected provider failure ({type(exc).__name__})")


def _http_client(transport: str):
    if transport == "aiohttp":
        return openai.DefaultAioHttpClient()
    return openai.DefaultAsyncHttpxClient()


class OpenAIProvider:
    def __init__(self, name: str, *, api_key: str, base_url: str | None, transport: str = "aiohttp",
                 compatible: bool = False) -> None:
        self.name = name
        self.compatible = compatible
        self.client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0,
                                         http_client=_http_client(transport))

    async def list_models(self, *, timeout: float, limit: int = 2000) -> list[str]:
        """The server's own model ids (`GET /models`)."""
        try:
            return await first_model_ids(self.client.models.list(timeout=timeout), limit)
        except Exception as exc:  # noqa: BLE001 - mapped in one place
            raise provider_error(exc) from None

    async def stream(self, model: str, request: ChatRequest, *, max_tokens: int, timeout: float | None) -> AsyncIterator[StreamEvent]:
        """The SDK sends the request and maps HTTP errors; the SSE body is read as raw lines
        and decoded with json.loads here. The SDK's typed chunk models cost about 0.5 ms of
        CPU per chunk, more than everything else the service does per token together."""
        params = openai_params(request, compatible=self.compatible)
        finish = FinishReason.UNSPECIFIED
        usage: Usage | None = None
        response_model = ""
        output_chars = 0
        try:
            async with self.client.chat.completions.with_streaming_response.create(
                model=model, messages=to_openai_messages(request.messages), stream=True,
                stream_options={"include_usage": True}, timeout=timeout, **params,
            ) as response:
                async for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, `event:` lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise malformed_stream() from None
                    if chunk.get("error"):
                        error = chunk["error"]
                        text = error.get("message") if isinstance(error, dict) else str(error)
                        raise ProviderError("server", f"the provider reported an error: {safe_message(text)}")
                    response_model = chunk.get("model") or response_model
                    u = chunk.get("usage")
                    if u:
                        prompt_details = u.get("prompt_tokens_details") or {}
                        completion_details = u.get("completion_tokens_details") or {}
                        usage = Usage(
                            input_tokens=u.get("prompt_tokens") or 0,
                            output_tokens=u.get("completion_tokens") or 0,
                            cached_input_tokens=prompt_details.get("cached_tokens") or 0,
                            reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
                        )
                    for choice in chunk.get("choices") or ():
                        if choice.get("index", 0) != 0:
                            continue
                        delta = choice.get("delta") or {}
                        content = delta.get("content")
                        if content:
                            output_chars += len(content)
                            yield TextDelta(content)
                        for call in delta.get("tool_calls") or ():
                            fn = call.get("function") or {}
                            arguments = fn.get("arguments") or ""
                            output_chars += len(arguments)
                            yield ToolCallDelta(index=call.get("index", 0), id=call.get("id") or "",
                                                name=fn.get("name") or "", arguments=arguments)
                        if choice.get("finish_reason"):
                            finish = FINISH_REASONS.get(choice["finish_reason"], FinishReason.STOP)
        except openai.OpenAIError as exc:
            raise provider_error(exc) from None
        except (httpx2.TimeoutException, asyncio.TimeoutError):
            raise ProviderError("timeout", "the provider did not answer in time") from None
        except (httpx2.HTTPError, aiohttp.ClientError, OSError):
            raise ProviderError("connection", "the connection to the provider broke") from None
        if usage is None:
            # Servers that ignore include_usage: an estimate beats reporting nothing.
            usage = Usage(input_tokens=sum(estimate_text(m.text) + 3 for m in request.messages),
                          output_tokens=max(output_chars // 4, 1 if output_chars else 0))
        yield ProviderFinish(finish if finish != FinishReason.UNSPECIFIED else FinishReason.STOP, usage, response_model)

    async def embed(self, model: str, inputs: list[str], *, dimensions: int | None, truncate: bool,
                    timeout: float | None) -> EmbeddingBatch:
        params = {"dimensions": dimensions} if dimensions else {}
        try:
            reply = await self.client.embeddings.create(
                model=model, input=inputs, encoding_format="float", timeout=timeout, **params
            )
        except openai.OpenAIError as exc:
            raise provider_error(exc) from None
        vectors = [item.embedding for item in sorted(reply.data, key=lambda d: d.index)]
        tokens = reply.usage.prompt_tokens if reply.usage else sum(estimate_text(t) for t in inputs)
        return EmbeddingBatch(vectors=vectors, input_tokens=tokens)

    async def aclose(self) -> None:
        await self.client.close()
