"""The llm service's domain: route a chat call to a model, keep its limits, fall back, serve
and fill the response cache, check budgets and record usage. Nothing here imports grpc.

A chat call goes: validate the request → resolve the model → check it against the model's
capabilities and context window → the caller's budget → the response cache → for each model
of the chain (the model, then its fallbacks; deployments cooling down last): wait in its
queue, then call it in the one retry loop (`retries`). Streams fall back only until the first
event has left; Generate buffers the whole answer, so it can fall back at any point.
Embeddings are `embeddings`; the catalog listing is `listing`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from services.llm import cache_codec
from services.llm.cache import Cache
from services.llm.capabilities import can_serve, check_chat, check_prompt_size, require_configured
from services.llm.catalog import Catalog, ModelSpec
from services.llm.embeddings import Embeddings
from services.llm.limits import Cooldowns, Queues
from services.llm.models import (
    OFF_LOOP_CHARS,
    CachePolicy,
    ChatRequest,
    CompletionBuilder,
    EmbedRequest,
    EmbedResult,
    Finish,
    FinishReason,
    GenerateResult,
    ProviderFinish,
    StreamEvent,
    Usage,
    completion_events,
)
from services.llm.pricing import cost_usd
from services.llm.providers.base import LLMProvider
from services.llm.retries import Attempts, Deadline, FallBack, RetrySettings, deadline_exceeded
from services.llm.tokens import TokenCounter
from services.llm.usage import Ledger, UsageRecord
from services.llm.validation import check_chat_request, check_messages
from services.runtime import errors
from services.runtime import metrics as rpc_metrics
from services.runtime.errors import FieldViolation, collect
from services.runtime.validation import uuid7

log = logging.getLogger("parley.llm")

_CACHEABLE_FINISHES = (FinishReason.STOP, FinishReason.LENGTH, FinishReason.TOOL_CALLS)


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

    @property
    def retries(self) -> RetrySettings:
        return RetrySettings(max_attempts=self.max_attempts, backoff_base=self.backoff_base,
                             backoff_max=self.backoff_max, max_retry_wait=self.max_retry_wait,
                             request_timeout=self.request_timeout)


class BudgetGuard(Protocol):
    async def check(self, user_id: str) -> None: ...


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
        self.queues = queues if queues is not None else Queues()
        self.cooldowns = cooldowns if cooldowns is not None else Cooldowns(settings.cooldown_failures, settings.cooldown_seconds)
        self.attempts = Attempts(settings.retries, self.cooldowns)
        self.embeddings = Embeddings(
            catalog, providers, self.attempts, cache=cache, ledger=ledger, queues=self.queues, budgets=budgets,
            cache_ttl=settings.embedding_cache_ttl, queue_timeout=settings.queue_timeout, clock=clock,
        )
        self._clock = clock

    def resolve(self, name: str, *, field: str = "model") -> ModelSpec:
        return self.catalog.require(name or self.catalog.default_model, field=field)

    def _chain(self, spec: ModelSpec, request: ChatRequest) -> list[ModelSpec]:
        names: tuple[str, ...] = ()
        if not request.disable_fallbacks:
            names = request.fallback_models or spec.fallbacks
        chain = [spec]
        for i, name in enumerate(names):
            fallback = self.catalog.resolve(name)
            if fallback is None:
                if request.fallback_models:
                    raise errors.InvalidArgument.for_field(f"fallback_models[{i}]", f"unknown model {name[:100]!r}",
                                                           "MODEL_NOT_FOUND")
                continue
            if fallback.id in {c.id for c in chain} or not self.catalog.is_configured(fallback):
                continue
            if can_serve(fallback, request):  # one that cannot serve this request is skipped
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
        check_chat_request(request)
        started = self._clock()
        deadline = Deadline(timeout)
        call_id = str(uuid7())
        spec = self.resolve(request.model)
        require_configured(self.catalog, self.providers, spec)
        max_tokens = check_chat(spec, request)
        size = cache_codec.request_size(request)
        prompt_tokens = await check_prompt_size(self.tokens, spec, request, size)
        record = UsageRecord(
            id=call_id, user_id=user_id, create_time=datetime.now(timezone.utc), kind="chat",
            requested_model=request.model or spec.id, model=spec.id, provider=spec.provider, status="error",
            streamed=streaming, metadata=dict(request.metadata),
        )
        first_at: float | None = None
        try:
            if self.budgets is not None:
                await self.budgets.check(user_id)
            cache_key = None
            if self._cacheable(spec, request):
                cache_key = await cache_codec.response_cache_key_async(spec.id, request, size)
                hit = (await self.cache.get_many([cache_key]))[0]
                decoded = cache_codec.decode_completion(hit) if hit is not None else None
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
                        deadline.queue_deadline(request.max_queue_time or self.settings.queue_timeout),
                    )
                except errors.ResourceExhausted as exc:
                    if deadline.expired():
                        raise deadline_exceeded() from None
                    last_error = exc
                    if is_last:
                        raise
                    continue
                record.queue_ms += lease.queue_time * 1000
                try:
                    provider = self.providers[candidate.provider]

                    def call(timeout: float, candidate=candidate, provider=provider, limit=candidate_max):
                        return provider.stream(candidate.vendor_model, request, max_tokens=limit, timeout=timeout)

                    events = self.attempts.run(candidate, "chat", call, deadline, buffered=not streaming,
                                               request=request)
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
                except FallBack as failed:
                    last_error = failed.error
                    if is_last or failed.final:
                        raise failed.error from None
                    log.info("falling back from %s to %s (%s)", candidate.id, chain[position + 1].id,
                             failed.error.reason)
                    rpc_metrics.llm_fell_back(candidate.provider)
                    continue
                finally:
                    lease.release()
                # Success.
                cost = cost_usd(candidate, usage)
                record.status = "ok"
                record.set_usage(usage, cost)
                now = self._clock()
                finish_reason = provider_finish.finish_reason if provider_finish else FinishReason.STOP
                if builder is not None and finish_reason in _CACHEABLE_FINISHES:
                    builder.finish = ProviderFinish(finish_reason, usage)
                    await self.cache.set_many({cache_key: cache_codec.encode_completion(candidate.id, builder.build())},
                                              self.settings.response_cache_ttl)
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

    # ---- embeddings and tokens -------------------------------------------------------------

    async def embed(self, user_id: str, request: EmbedRequest, timeout: float | None) -> EmbedResult:
        return await self.embeddings.embed(user_id, request, timeout)

    async def count_tokens(self, model: str, messages, tools, text: str) -> tuple[int, bool, ModelSpec]:
        if bool(messages) == bool(text):
            collect([FieldViolation("messages", "give exactly one of messages and text")])
        check_messages(tuple(messages))
        spec = self.resolve(model)
        size = len(text) + sum(len(m.text) for m in messages)
        if size > OFF_LOOP_CHARS:
            count, exact = await asyncio.to_thread(self._count, spec, messages, tools, text)
        else:
            count, exact = self._count(spec, messages, tools, text)
        if spec.provider == "local" and spec.vendor_model == "echo":
            exact = False
        return count, exact, spec

    def _count(self, spec: ModelSpec, messages, tools, text: str) -> tuple[int, bool]:
        if text:
            return self.tokens.count_text(spec, text)
        return self.tokens.count_chat(spec, tuple(messages), tuple(tools))
