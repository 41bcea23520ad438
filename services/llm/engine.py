"""The llm service's domain: route a call to a model, keep its limits, retry and fall back,
serve and fill the caches, check budgets and record usage. Nothing here imports grpc.

A chat call goes: resolve the model → validate against its capabilities and context window
→ check the caller's budget → the response cache → for each model of the chain (the model,
then its fallbacks; deployments cooling down last): wait in its queue, then call it in the
retry loop. Streams fall back only until the first event has left; Generate buffers the
whole answer, so it can fall back at any point.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from array import array
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime, timezone
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.llm.cache import Cache
from services.llm.catalog import Catalog, ModelSpec
from services.llm.limits import Cooldowns, Lease, Queues
from services.llm.models import (
    CachePolicy,
    Capability,
    ChatRequest,
    Completion,
    CompletionBuilder,
    EmbedRequest,
    EmbedResult,
    Finish,
    FinishReason,
    GenerateResult,
    ProviderFinish,
    StreamEvent,
    ToolCall,
    Usage,
    completion_events,
)
from services.llm.pricing import cost_usd
from services.llm.providers.base import LLMProvider, ProviderError
from services.llm.tokens import TokenCounter
from services.llm.usage import Ledger, UsageRecord
from services.runtime import errors
from services.runtime.validation import uuid7

log = logging.getLogger("parley.llm")
tracer = trace.get_tracer("parley.llm")


@dataclass(frozen=True)
class EngineSettings:
    # Attempts per model (the first call plus retries).
    max_attempts: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    # A Retry-After longer than this is not waited for: the next model is tried instead.
    max_retry_wait: float = 30.0
    # Per vendor call when the caller set no deadline.
    request_timeout: float = 600.0
    queue_timeout: float = 30.0
    cooldown_failures: int = 3
    cooldown_seconds: float = 30.0
    response_cache_ttl: float = 3600.0
    embedding_cache_ttl: float = 7 * 24 * 3600.0


class BudgetGuard(Protocol):
    async def check(self, user_id: str) -> None: ...


class _Deadline:
    """The caller's deadline as event-loop time (None: no deadline)."""

    def __init__(self, seconds: float | None) -> None:
        self.at = asyncio.get_running_loop().time() + seconds if seconds is not None else None

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - asyncio.get_running_loop().time()

    def expired(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def timeout(self, default: float) -> float:
        remaining = self.remaining()
        return default if remaining is None else max(min(remaining, default), 0.001)


def _deadline_exceeded() -> errors.DeadlineExceeded:
    return errors.DeadlineExceeded("the call's deadline passed before the model answered", reason="DEADLINE_EXCEEDED")


def _canonical(value):
    if isinstance(value, bytes):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if is_dataclass(value):
        return {k: _canonical(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def response_cache_key(model_id: str, request: ChatRequest) -> str:
    """Exact match on the model and every field but metadata, priority, cache policy and
    queue time."""
    fields = _canonical(request)
    for name in ("metadata", "priority", "cache_policy", "max_queue_time", "model"):
        fields.pop(name, None)
    blob = json.dumps([model_id, fields], sort_keys=True, separators=(",", ":"), default=str)
    return "resp:" + hashlib.sha256(blob.encode()).hexdigest()


def _encode_completion(model: str, completion: Completion) -> bytes:
    return json.dumps({
        "model": model,
        "text": completion.text,
        "tool_calls": [asdict(c) for c in completion.tool_calls],
        "finish_reason": int(completion.finish_reason),
        "usage": asdict(completion.usage),
    }).encode()


def _decode_completion(blob: bytes) -> tuple[str, Completion] | None:
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


def _provider_failure(error: ProviderError, model: str) -> errors.ParleyError:
    """The caller-facing error for a vendor failure that retries and fallbacks did not fix."""
    if error.kind in ("bad_request", "too_large"):
        return errors.InvalidArgument(f"{model} rejected the request: {error.message}", reason="PROVIDER_REJECTED")
    if error.kind == "rate_limited":
        return errors.ResourceExhausted(
            f"{model} is rate limited: {error.message}", reason="PROVIDER_RATE_LIMITED", retry_after=error.retry_after
        )
    return errors.Unavailable(f"{model} failed: {error.message}", reason="PROVIDER_ERROR",
                              metadata={"model": model, "kind": error.kind})


class LLM:
    def __init__(
        self,
        catalog: Catalog,
        providers: dict[str, LLMProvider],
        settings: EngineSettings,
        *,
        cache: Cache,
        ledger: Ledger,
        budgets: BudgetGuard | None = None,
        tokens: TokenCounter | None = None,
        queues: Queues | None = None,
        cooldowns: Cooldowns | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog
        self.providers = providers
        self.settings = settings
        self.cache = cache
        self.ledger = ledger
        self.budgets = budgets
        self.tokens = tokens or TokenCounter()
        self.queues = queues or Queues()
        self.cooldowns = cooldowns or Cooldowns(settings.cooldown_failures, settings.cooldown_seconds)
        self._clock = clock

    # ---- resolution and validation ---------------------------------------------------------

    def resolve(self, name: str, *, field: str = "model", default: str | None = None) -> ModelSpec:
        spec = self.catalog.resolve(name or default or self.catalog.default_model)
        if spec is None:
            raise errors.NotFound(f"unknown model {name!r}; ListModels shows the available ones",
                                  reason="MODEL_NOT_FOUND", metadata={"field": field})
        return spec

    def _require_configured(self, spec: ModelSpec) -> None:
        if not self.catalog.is_configured(spec) or spec.provider not in self.providers:
            raise errors.FailedPrecondition(
                f"{spec.id} is not available: its provider {spec.provider!r} is not configured",
                reason="MODEL_UNCONFIGURED", metadata={"model": spec.id},
            )

    def _check_chat(self, spec: ModelSpec, request: ChatRequest, field: str = "model") -> int:
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

    def _check_prompt_size(self, spec: ModelSpec, request: ChatRequest, max_tokens: int) -> int:
        prompt, _ = self.tokens.count_chat(spec, request.messages, request.tools)
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

    def _chain(self, spec: ModelSpec, request: ChatRequest) -> list[ModelSpec]:
        names: tuple[str, ...] = ()
        if not request.disable_fallbacks:
            names = request.fallback_models or spec.fallbacks
        chain = [spec]
        for i, name in enumerate(names):
            fallback = self.catalog.resolve(name)
            if fallback is None:
                if request.fallback_models:
                    raise errors.InvalidArgument.for_field(f"fallback_models[{i}]", f"unknown model {name!r}",
                                                           "MODEL_NOT_FOUND")
                continue
            if fallback.id in {c.id for c in chain} or not self.catalog.is_configured(fallback):
                continue
            try:
                self._check_chat(fallback, request, field=f"fallback_models[{i}]")
            except errors.InvalidArgument:
                continue  # a fallback that cannot serve this request is skipped, not an error
            chain.append(fallback)
        healthy = [c for c in chain if self.cooldowns.until(c.id) is None]
        cooling = [c for c in chain if self.cooldowns.until(c.id) is not None]
        return healthy + cooling

    def _cacheable(self, spec: ModelSpec, request: ChatRequest) -> bool:
        if request.cache_policy == CachePolicy.BYPASS:
            return False
        if request.cache_policy == CachePolicy.FORCE:
            return True
        return spec.cache and (request.temperature == 0 or request.seed is not None)

    # ---- chat ------------------------------------------------------------------------------

    async def generate(self, user_id: str, request: ChatRequest, timeout: float | None) -> GenerateResult:
        builder = CompletionBuilder()
        finish: Finish | None = None
        async for event in self._chat(user_id, request, timeout, streaming=False):
            if isinstance(event, Finish):
                finish = event
            else:
                builder.add(event)
        assert finish is not None
        builder.finish = ProviderFinish(finish.finish_reason, finish.usage)
        return GenerateResult(
            id=finish.id, completion=builder.build(), cost_usd=finish.cost_usd, model=finish.model,
            cache_hit=finish.cache_hit, latency=finish.latency, queue_time=finish.queue_time,
        )

    def stream(self, user_id: str, request: ChatRequest, timeout: float | None) -> AsyncIterator[StreamEvent | Finish]:
        return self._chat(user_id, request, timeout, streaming=True)

    async def _chat(self, user_id: str, request: ChatRequest, timeout: float | None, *, streaming: bool):
        started = self._clock()
        deadline = _Deadline(timeout)
        call_id = str(uuid7())
        spec = self.resolve(request.model)
        self._require_configured(spec)
        max_tokens = self._check_chat(spec, request)
        prompt_tokens = self._check_prompt_size(spec, request, max_tokens)
        record = UsageRecord(
            id=call_id, user_id=user_id, create_time=datetime.now(timezone.utc), kind="chat",
            requested_model=request.model or spec.id, model=spec.id, provider=spec.provider, status="error",
            streamed=streaming, metadata=dict(request.metadata),
        )
        first_at: float | None = None
        try:
            if self.budgets is not None:
                await self.budgets.check(user_id)
            cache_key = response_cache_key(spec.id, request) if self._cacheable(spec, request) else None
            if cache_key is not None:
                hit = (await self.cache.get_many([cache_key]))[0]
                decoded = _decode_completion(hit) if hit is not None else None
                if decoded is not None:
                    model, completion = decoded
                    for event in completion_events(completion):
                        if first_at is None:
                            first_at = self._clock()
                        yield event
                    record.model, record.status, record.cache_hit = model, "ok", True
                    record.provider = model.partition("/")[0]
                    now = self._clock()
                    yield Finish(
                        id=call_id, finish_reason=completion.finish_reason, usage=completion.usage, cost_usd=0.0,
                        model=model, cache_hit=True, time_to_first_token=(first_at or now) - started,
                        latency=now - started, queue_time=0.0,
                    )
                    return
            chain = self._chain(spec, request)
            last_error: errors.ParleyError | None = None
            for position, candidate in enumerate(chain):
                is_last = position == len(chain) - 1
                candidate_max = min(max_tokens, candidate.max_output_tokens or max_tokens)
                record.model, record.provider = candidate.id, candidate.provider
                try:
                    lease = await self.queues.acquire(
                        candidate.id, candidate.limits, prompt_tokens + candidate_max, int(request.priority),
                        self._queue_deadline(request, deadline),
                    )
                except errors.ResourceExhausted as exc:
                    if deadline.expired():
                        raise _deadline_exceeded() from None
                    last_error = exc
                    if is_last:
                        raise
                    continue
                record.queue_ms += lease.queue_time * 1000
                try:
                    if streaming:
                        events = self._attempts_streaming(candidate, request, candidate_max, deadline)
                    else:
                        events = self._attempts_buffered(candidate, request, candidate_max, deadline)
                    provider_finish: ProviderFinish | None = None
                    builder = CompletionBuilder() if cache_key is not None else None
                    try:
                        async for event in events:
                            if isinstance(event, ProviderFinish):
                                provider_finish = event
                                continue
                            if first_at is None:
                                first_at = self._clock()
                            if builder is not None:
                                builder.add(event)
                            yield event
                    finally:
                        await events.aclose()
                    usage = provider_finish.usage if provider_finish else Usage()
                    await lease.settle(usage.total_tokens)
                except _FallBack as fall:
                    last_error = fall.error
                    if is_last or fall.final:
                        raise fall.error from None
                    log.info("falling back from %s to %s (%s)", candidate.id, chain[position + 1].id, fall.error.reason)
                    continue
                finally:
                    lease.release()
                # Success.
                cost = cost_usd(candidate, usage)
                record.status = "ok"
                self._fill_usage(record, usage, cost)
                now = self._clock()
                finish_reason = provider_finish.finish_reason if provider_finish else FinishReason.STOP
                if builder is not None and finish_reason in (FinishReason.STOP, FinishReason.LENGTH, FinishReason.TOOL_CALLS):
                    builder.finish = ProviderFinish(finish_reason, usage)
                    await self.cache.set_many(
                        {cache_key: _encode_completion(candidate.id, builder.build())}, self.settings.response_cache_ttl
                    )
                yield Finish(
                    id=call_id, finish_reason=finish_reason, usage=usage, cost_usd=cost, model=candidate.id,
                    cache_hit=False, time_to_first_token=(first_at - started) if first_at is not None else None,
                    latency=now - started, queue_time=record.queue_ms / 1000,
                )
                return
            raise last_error or errors.Unavailable("no model could serve the call", reason="PROVIDER_ERROR")
        except errors.ParleyError as exc:
            record.error_reason = exc.reason
            raise
        except (asyncio.CancelledError, GeneratorExit):
            record.status, record.error_reason = "cancelled", "CANCELLED"
            raise
        finally:
            now = self._clock()
            record.latency_ms = (now - started) * 1000
            if first_at is not None:
                record.time_to_first_token_ms = (first_at - started) * 1000
            self.ledger.record(record)

    def _queue_deadline(self, request: ChatRequest | EmbedRequest, deadline: _Deadline) -> float:
        wait = getattr(request, "max_queue_time", None) or self.settings.queue_timeout
        at = asyncio.get_running_loop().time() + wait
        return min(at, deadline.at) if deadline.at is not None else at

    @staticmethod
    def _fill_usage(record: UsageRecord, usage: Usage, cost: float) -> None:
        record.input_tokens = usage.input_tokens
        record.output_tokens = usage.output_tokens
        record.cached_input_tokens = usage.cached_input_tokens
        record.reasoning_tokens = usage.reasoning_tokens
        record.cost_usd = cost

    def _backoff(self, attempt: int, error: ProviderError) -> float:
        if error.retry_after is not None:
            return error.retry_after
        return random.uniform(0, min(self.settings.backoff_max, self.settings.backoff_base * 2**attempt))

    async def _retry_wait(self, spec: ModelSpec, attempt: int, error: ProviderError, deadline: _Deadline) -> bool:
        """Sleeps before the next attempt; False when no further attempt makes sense."""
        self.cooldowns.failed(spec.id)
        if not error.retryable or attempt + 1 >= self.settings.max_attempts:
            return False
        wait = self._backoff(attempt, error)
        remaining = deadline.remaining()
        if wait > self.settings.max_retry_wait or (remaining is not None and wait >= remaining):
            return False
        log.info("retrying %s in %.2fs after %s", spec.id, wait, error.kind)
        await asyncio.sleep(wait)
        return True

    def _span(self, spec: ModelSpec, request: ChatRequest | None, operation: str, attempt: int):
        span = tracer.start_span(f"{operation} {spec.vendor_model}", kind=SpanKind.CLIENT)
        span.set_attribute("gen_ai.operation.name", operation)
        span.set_attribute("gen_ai.provider.name", spec.provider)
        span.set_attribute("gen_ai.request.model", spec.vendor_model)
        span.set_attribute("parley.llm.model", spec.id)
        span.set_attribute("parley.llm.attempt", attempt)
        if request is not None:
            if request.temperature is not None:
                span.set_attribute("gen_ai.request.temperature", request.temperature)
            if request.top_p is not None:
                span.set_attribute("gen_ai.request.top_p", request.top_p)
            if request.max_tokens is not None:
                span.set_attribute("gen_ai.request.max_tokens", request.max_tokens)
            if request.seed is not None:
                span.set_attribute("gen_ai.request.seed", request.seed)
        return span

    @staticmethod
    def _end_span(span, finish: ProviderFinish | None, error: BaseException | None) -> None:
        if finish is not None:
            span.set_attribute("gen_ai.usage.input_tokens", finish.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", finish.usage.output_tokens)
            span.set_attribute("gen_ai.response.finish_reasons", [finish.finish_reason.name.lower()])
            if finish.response_model:
                span.set_attribute("gen_ai.response.model", finish.response_model)
        if error is not None:
            kind = error.kind if isinstance(error, ProviderError) else type(error).__name__
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, kind))
        span.end()

    async def _attempts_streaming(self, spec: ModelSpec, request: ChatRequest, max_tokens: int, deadline: _Deadline):
        """Yields the provider's events. Before the first event a failure is retried and then
        raised as _FallBack; after it, a failure ends the stream with UNAVAILABLE."""
        provider = self.providers[spec.provider]
        attempt = 0
        while True:
            if deadline.expired():
                raise _deadline_exceeded()
            span = self._span(spec, request, "chat", attempt)
            it = provider.stream(spec.vendor_model, request, max_tokens=max_tokens,
                                 timeout=deadline.timeout(self.settings.request_timeout))
            started_output = False
            finish: ProviderFinish | None = None
            failure: BaseException | None = None
            try:
                while True:
                    try:
                        if deadline.at is None:
                            event = await anext(it)
                        else:
                            async with asyncio.timeout_at(deadline.at):
                                event = await anext(it)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise _deadline_exceeded() from None
                    if isinstance(event, ProviderFinish):
                        finish = event
                        self.cooldowns.succeeded(spec.id)
                        yield event
                        return
                    started_output = True
                    yield event
                # A stream that ended without a final event: treat what came as complete.
                finish = ProviderFinish(FinishReason.STOP, Usage())
                self.cooldowns.succeeded(spec.id)
                yield finish
                return
            except ProviderError as error:
                failure = error
                if started_output:
                    self.cooldowns.failed(spec.id)
                    raise errors.Unavailable(
                        f"{spec.id} failed after the answer had started streaming ({error.kind}); the partial "
                        "answer cannot be continued, retry the call",
                        reason="PROVIDER_STREAM_INTERRUPTED", metadata={"model": spec.id},
                    ) from None
                if error.kind in ("bad_request", "too_large"):
                    raise _FallBack(_provider_failure(error, spec.id), final=True) from None
                if not await self._retry_wait(spec, attempt, error, deadline):
                    raise _FallBack(_provider_failure(error, spec.id)) from None
            except BaseException as exc:
                failure = exc
                raise
            finally:
                await it.aclose()
                self._end_span(span, finish, failure)
            attempt += 1

    async def _attempts_buffered(self, spec: ModelSpec, request: ChatRequest, max_tokens: int, deadline: _Deadline):
        """The whole answer, retried as a unit (nothing has reached the caller yet)."""
        provider = self.providers[spec.provider]
        attempt = 0
        while True:
            if deadline.expired():
                raise _deadline_exceeded()
            span = self._span(spec, request, "chat", attempt)
            events: list[StreamEvent] = []
            finish: ProviderFinish | None = None
            failure: BaseException | None = None
            it = provider.stream(spec.vendor_model, request, max_tokens=max_tokens,
                                 timeout=deadline.timeout(self.settings.request_timeout))
            try:
                try:
                    async with asyncio.timeout_at(deadline.at):
                        async for event in it:
                            if isinstance(event, ProviderFinish):
                                finish = event
                                break
                            events.append(event)
                except TimeoutError:
                    raise _deadline_exceeded() from None
                self.cooldowns.succeeded(spec.id)
            except ProviderError as error:
                failure = error
                if error.kind in ("bad_request", "too_large"):
                    raise _FallBack(_provider_failure(error, spec.id), final=True) from None
                if not await self._retry_wait(spec, attempt, error, deadline):
                    raise _FallBack(_provider_failure(error, spec.id)) from None
                attempt += 1
                continue
            except BaseException as exc:
                failure = exc
                raise
            finally:
                await it.aclose()
                self._end_span(span, finish, failure)
            for event in events:
                yield event
            yield finish or ProviderFinish(FinishReason.STOP, Usage())
            return

    # ---- embeddings ------------------------------------------------------------------------

    async def embed(self, user_id: str, request: EmbedRequest, timeout: float | None) -> EmbedResult:
        started = self._clock()
        deadline = _Deadline(timeout)
        spec = self.resolve(request.model, default=self.catalog.default_embedding_model)
        if not spec.is_embedding:
            raise errors.InvalidArgument.for_field("model", f"{spec.id} is not an embedding model", "MODEL_NOT_EMBEDDING")
        self._require_configured(spec)
        if request.dimensions is not None and request.dimensions != spec.embedding_dimensions:
            if not spec.flexible_dimensions or not 0 < request.dimensions <= spec.embedding_dimensions:
                raise errors.InvalidArgument.for_field(
                    "dimensions", f"{spec.id} only produces {spec.embedding_dimensions} dimensions", "DIMENSIONS_UNSUPPORTED"
                )
        record = UsageRecord(
            id=str(uuid7()), user_id=user_id, create_time=datetime.now(timezone.utc), kind="embed",
            requested_model=request.model or spec.id, model=spec.id, provider=spec.provider, status="error",
            metadata=dict(request.metadata),
        )
        try:
            if self.budgets is not None:
                await self.budgets.check(user_id)
            use_cache = request.cache_policy != CachePolicy.BYPASS
            dims = request.dimensions or spec.embedding_dimensions
            keys = [
                f"emb:{spec.id}:{dims}:{int(request.truncate)}:{hashlib.sha256(text.encode()).hexdigest()}"
                for text in request.inputs
            ]
            vectors: list[list[float] | None] = [None] * len(keys)
            if use_cache:
                for i, blob in enumerate(await self.cache.get_many(keys)):
                    if blob is not None:
                        vectors[i] = array("f", blob).tolist()
            hits = [v is not None for v in vectors]
            missing = [i for i, v in enumerate(vectors) if v is None]
            usage = Usage()
            if missing:
                # Unique texts only: a batch often repeats a chunk.
                unique: dict[str, int] = {}
                for i in missing:
                    unique.setdefault(request.inputs[i], len(unique))
                texts = list(unique)
                batch = await self._embed_attempts(spec, texts, request, deadline, record)
                usage.input_tokens = batch.input_tokens
                fresh: dict[str, bytes] = {}
                for i in missing:
                    vector = batch.vectors[unique[request.inputs[i]]]
                    vectors[i] = vector
                    fresh[keys[i]] = array("f", vector).tobytes()
                if use_cache:
                    await self.cache.set_many(fresh, self.settings.embedding_cache_ttl)
            cost = cost_usd(spec, usage)
            record.status = "ok"
            record.cache_hit = not missing
            self._fill_usage(record, usage, cost)
            return EmbedResult(vectors=vectors, cache_hits=hits, model=spec.id, usage=usage, cost_usd=cost)  # type: ignore[arg-type]
        except errors.ParleyError as exc:
            record.error_reason = exc.reason
            raise
        except asyncio.CancelledError:
            record.status, record.error_reason = "cancelled", "CANCELLED"
            raise
        finally:
            record.latency_ms = (self._clock() - started) * 1000
            self.ledger.record(record)

    async def _embed_attempts(self, spec: ModelSpec, texts: list[str], request: EmbedRequest, deadline: _Deadline,
                              record: UsageRecord):
        provider = self.providers[spec.provider]
        estimate = sum(len(t) for t in texts) // 4 + 1
        lease: Lease = await self.queues.acquire(spec.id, spec.limits, estimate, int(request.priority),
                                                 self._queue_deadline(request, deadline))
        record.queue_ms = lease.queue_time * 1000
        try:
            attempt = 0
            while True:
                if deadline.expired():
                    raise _deadline_exceeded()
                span = self._span(spec, None, "embeddings", attempt)
                failure: BaseException | None = None
                try:
                    async with asyncio.timeout_at(deadline.at):
                        batch = await provider.embed(
                            spec.vendor_model, texts, dimensions=request.dimensions, truncate=request.truncate,
                            timeout=deadline.timeout(self.settings.request_timeout),
                        )
                    span.set_attribute("gen_ai.usage.input_tokens", batch.input_tokens)
                    self.cooldowns.succeeded(spec.id)
                    await lease.settle(batch.input_tokens)
                    return batch
                except TimeoutError:
                    failure = TimeoutError()
                    raise _deadline_exceeded() from None
                except ProviderError as error:
                    failure = error
                    if error.kind in ("bad_request", "too_large"):
                        raise errors.InvalidArgument(error.message, reason="INPUT_REJECTED") from None
                    if not await self._retry_wait(spec, attempt, error, deadline):
                        raise _provider_failure(error, spec.id) from None
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    self._end_span(span, None, failure)
                attempt += 1
        finally:
            lease.release()

    # ---- models and tokens -----------------------------------------------------------------

    def list_models(self, *, provider: str = "", capabilities: frozenset[Capability] = frozenset(),
                    include_unconfigured: bool = False) -> list[ModelSpec]:
        found = []
        for spec in sorted(self.catalog.models.values(), key=lambda m: m.id):
            if provider and spec.provider != provider:
                continue
            if not capabilities <= spec.capabilities:
                continue
            if not include_unconfigured and not self.catalog.is_configured(spec):
                continue
            found.append(spec)
        return found

    def count_tokens(self, model: str, messages, tools, text: str) -> tuple[int, bool, ModelSpec]:
        spec = self.resolve(model)
        if bool(messages) == bool(text):
            raise errors.InvalidArgument.for_field("messages", "give exactly one of messages and text", "ONE_OF_REQUIRED")
        if text:
            count, exact = self.tokens.count_text(spec, text)
        else:
            count, exact = self.tokens.count_chat(spec, tuple(messages), tuple(tools))
        if spec.provider == "local" and spec.vendor_model == "echo":
            exact = False
        return count, exact, spec


class _FallBack(Exception):
    """Internal: this model failed before any output; try the next one (unless `final`)."""

    def __init__(self, error: errors.ParleyError, final: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.final = final

