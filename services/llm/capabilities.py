"""Can this model serve this request? Capabilities (tools, vision, JSON output), output
limits, the context window and embedding dimensions, each failure INVALID_ARGUMENT naming the
field. Whether the model's provider is configured at all is checked here too."""

from __future__ import annotations

import asyncio

from services.llm.catalog import Catalog, ModelSpec
from services.llm.models import OFF_LOOP_CHARS, Capability, ChatRequest, EmbedRequest
from services.llm.tokens import TokenCounter
from services.runtime import errors


def require_configured(catalog: Catalog, providers, spec: ModelSpec) -> None:
    if not catalog.is_configured(spec) or spec.provider not in providers:
        raise errors.FailedPrecondition(
            f"{spec.id} is not available: its provider {spec.provider!r} is not configured",
            reason="MODEL_UNCONFIGURED", metadata={"model": spec.id},
        )


def check_chat(spec: ModelSpec, request: ChatRequest, field: str = "model") -> int:
    """Raises INVALID_ARGUMENT if `spec` cannot serve `request`; returns the max tokens to ask for."""
    caps = spec.capabilities
    if spec.is_embedding:
        raise errors.InvalidArgument.for_field(field, f"{spec.id} is an embedding model; use Embed", "MODEL_NOT_CHAT")
    if request.tools and Capability.TOOLS not in caps:
        raise errors.InvalidArgument.for_field("tools", f"{spec.id} does not support tools", "TOOLS_UNSUPPORTED")
    if Capability.VISION not in caps and any(m.has_images for m in request.messages):
        raise errors.InvalidArgument.for_field("messages", f"{spec.id} does not accept images", "VISION_UNSUPPORTED")
    fmt = request.response_format.type
    if fmt == "json_object" and Capability.JSON_OUTPUT not in caps:
        raise errors.InvalidArgument.for_field("response_format", f"{spec.id} has no JSON output", "JSON_UNSUPPORTED")
    if fmt == "json_schema" and not ({Capability.JSON_SCHEMA, Capability.TOOLS} & caps):
        raise errors.InvalidArgument.for_field(
            "response_format", f"{spec.id} cannot produce schema-constrained JSON", "JSON_UNSUPPORTED"
        )
    if request.max_tokens is not None and spec.max_output_tokens and request.max_tokens > spec.max_output_tokens:
        raise errors.InvalidArgument.for_field(
            "max_tokens", f"{spec.id} writes at most {spec.max_output_tokens} tokens", "MAX_TOKENS_TOO_LARGE"
        )
    return request.max_tokens or spec.max_output_tokens


def can_serve(spec: ModelSpec, request: ChatRequest) -> bool:
    try:
        check_chat(spec, request)
    except errors.InvalidArgument:
        return False
    return True


async def check_prompt_size(tokens: TokenCounter, spec: ModelSpec, request: ChatRequest, size: int) -> int:
    """The prompt's token count; INVALID_ARGUMENT (PROMPT_TOO_LONG) when it and the requested
    output do not fit the context window. `size` is the request's content size: large
    prompts are counted in a worker thread."""
    if size > OFF_LOOP_CHARS:
        prompt, _ = await asyncio.to_thread(tokens.count_chat, spec, request.messages, request.tools)
    else:
        prompt, _ = tokens.count_chat(spec, request.messages, request.tools)
    # Room for at least the requested output (or one token when none was asked for).
    wanted = request.max_tokens or 1
    if prompt + wanted > spec.context_window:
        raise errors.InvalidArgument.for_field(
            "messages",
            f"the prompt has about {prompt} tokens; with {wanted} output tokens it exceeds "
            f"{spec.id}'s context window of {spec.context_window}",
            "PROMPT_TOO_LONG",
        )
    return prompt


def check_embedding_model(spec: ModelSpec) -> None:
    if not spec.is_embedding:
        raise errors.InvalidArgument.for_field("model", f"{spec.id} is not an embedding model", "MODEL_NOT_EMBEDDING")


def check_dimensions(spec: ModelSpec, request: EmbedRequest) -> int:
    """Raises INVALID_ARGUMENT if `spec` cannot produce the requested dimensions; returns them."""
    if request.dimensions is not None and request.dimensions != spec.embedding_dimensions:
        if not spec.flexible_dimensions or not 0 < request.dimensions <= spec.embedding_dimensions:
            raise errors.InvalidArgument.for_field(
                "dimensions", f"{spec.id} only produces {spec.embedding_dimensions} dimensions", "DIMENSIONS_UNSUPPORTED"
            )
    return request.dimensions or spec.embedding_dimensions
