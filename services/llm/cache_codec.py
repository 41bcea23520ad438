"""What the response and embedding caches store, and under which keys.

Responses: an exact match on the resolved model and every request field except metadata,
priority, cache policy and queue time (images by content hash). Embeddings: per input, keyed
by model, dimensions, truncation and the SHA-256 of the text; vectors as float32 bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from array import array
from dataclasses import asdict, fields, is_dataclass

from services.llm.models import OFF_LOOP_CHARS, ChatRequest, Completion, FinishReason, ToolCall, Usage
_IGNORED = ("metadata", "priority", "cache_policy", "max_queue_time", "model")


def _canonical(value):
    if isinstance(value, bytes):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if is_dataclass(value):
        return {f.name: _canonical(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def response_cache_key(model_id: str, request: ChatRequest) -> str:
    canonical = _canonical(request)
    for name in _IGNORED:
        canonical.pop(name, None)
    blob = json.dumps([model_id, canonical], sort_keys=True, separators=(",", ":"), default=str)
    return "resp:" + hashlib.sha256(blob.encode()).hexdigest()


def request_size(request: ChatRequest) -> int:
    """Characters and bytes of content in a chat request (a cheap upper bound of its weight)."""
    size = 0
    for message in request.messages:
        for part in message.content:
            size += len(getattr(part, "text", "")) + len(getattr(part, "data", b"")) + len(getattr(part, "url", ""))
        for call in message.tool_calls:
            size += len(call.arguments)
    return size


async def response_cache_key_async(model_id: str, request: ChatRequest, size: int) -> str:
    """The key, computed in a worker thread when the request is large."""
    if size > OFF_LOOP_CHARS:
        return await asyncio.to_thread(response_cache_key, model_id, request)
    return response_cache_key(model_id, request)


def encode_completion(model: str, completion: Completion) -> bytes:
    return json.dumps({
        "model": model,
        "text": completion.text,
        "tool_calls": [asdict(c) for c in completion.tool_calls],
        "finish_reason": int(completion.finish_reason),
        "usage": asdict(completion.usage),
    }).encode()


def decode_completion(blob: bytes) -> tuple[str, Completion] | None:
    """(answering model, completion), or None for an entry this version cannot read."""
    try:
        data = json.loads(blob)
        return data["model"], Completion(
            text=data["text"],
            tool_calls=[ToolCall(**c) for c in data["tool_calls"]],
            finish_reason=FinishReason(data["finish_reason"]),
            usage=Usage(**data["usage"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def embedding_key(model_id: str, dimensions: int, truncate: bool, text: str) -> str:
    return f"emb:{model_id}:{dimensions}:{int(truncate)}:{hashlib.sha256(text.encode()).hexdigest()}"


async def embedding_keys(model_id: str, dimensions: int, truncate: bool, texts) -> list[str]:
    """The keys of a batch, hashed in a worker thread when the batch is large."""
    def keys() -> list[str]:
        return [embedding_key(model_id, dimensions, truncate, text) for text in texts]

    if sum(len(t) for t in texts) > OFF_LOOP_CHARS:
        return await asyncio.to_thread(keys)
    return keys()


def encode_vector(vector: list[float]) -> bytes:
    return array("f", vector).tobytes()


def decode_vector(blob: bytes) -> list[float]:
    return array("f", blob).tolist()
