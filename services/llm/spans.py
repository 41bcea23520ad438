"""The one span per vendor attempt, with the OpenTelemetry GenAI attributes. Prompts and
answers are never recorded."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.llm.catalog import ModelSpec
from services.llm.models import ChatRequest, ProviderFinish
from services.llm.providers.base import EmbeddingBatch, ProviderError

tracer = trace.get_tracer("parley.llm")


def start_attempt_span(spec: ModelSpec, operation: str, attempt: int, request: ChatRequest | None = None) -> Span:
    """`operation` is "chat" or "embeddings"; `request` adds the chat sampling attributes."""
    span = tracer.start_span(f"{operation} {spec.vendor_model}", kind=SpanKind.CLIENT)
    span.set_attribute("gen_ai.operation.name", operation)
    span.set_attribute("gen_ai.provider.name", spec.provider)
    span.set_attribute("gen_ai.request.model", spec.vendor_model)
    span.set_attribute("parley.llm.model", spec.id)
    span.set_attribute("parley.llm.attempt", attempt)
    if request is not None:
        # The session (thread) the call belongs to, when the caller says so (the run engine does).
        conversation = request.metadata.get("session_id")
        if conversation:
            span.set_attribute("gen_ai.conversation.id", conversation)
        if request.temperature is not None:
            span.set_attribute("gen_ai.request.temperature", request.temperature)
        if request.top_p is not None:
            span.set_attribute("gen_ai.request.top_p", request.top_p)
        if request.max_tokens is not None:
            span.set_attribute("gen_ai.request.max_tokens", request.max_tokens)
        if request.seed is not None:
            span.set_attribute("gen_ai.request.seed", request.seed)
    return span


def end_attempt_span(span: Span, result: ProviderFinish | EmbeddingBatch | None, error: BaseException | None) -> None:
    if isinstance(result, ProviderFinish):
        span.set_attribute("gen_ai.usage.input_tokens", result.usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", result.usage.output_tokens)
        span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason.name.lower()])
        if result.response_model:
            span.set_attribute("gen_ai.response.model", result.response_model)
    elif isinstance(result, EmbeddingBatch):
        span.set_attribute("gen_ai.usage.input_tokens", result.input_tokens)
    if error is not None:
        kind = error.kind if isinstance(error, ProviderError) else type(error).__name__
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))
    span.end()
