"""Embed: per-input cache hits, only the missing (and distinct) texts sent to the model, in
the model's queue and the one retry loop; one usage record per call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timezone

from services.llm import cache_codec
from services.llm.cache import Cache
from services.llm.capabilities import check_dimensions, check_embedding_model, require_configured
from services.llm.catalog import Catalog, ModelSpec
from services.llm.limits import Queues
from services.llm.models import CachePolicy, EmbedRequest, EmbedResult, Usage
from services.llm.pricing import cost_usd
from services.llm.providers.base import EmbeddingBatch, LLMProvider
from services.llm.retries import Attempts, Deadline, FallBack, single
from services.llm.usage import Ledger, UsageRecord
from services.llm.validation import check_embed_request
from services.runtime import errors
from services.runtime.validation import uuid7


class Embeddings:
    def __init__(self, catalog: Catalog, providers: dict[str, LLMProvider], attempts: Attempts, *, cache: Cache,
                 ledger: Ledger, queues: Queues, budgets, cache_ttl: float, queue_timeout: float,
                 clock: Callable[[], float]) -> None:
        self._catalog = catalog
        self._providers = providers
        self._attempts = attempts
        self._cache = cache
        self._ledger = ledger
        self._queues = queues
        self._budgets = budgets
        self._ttl = cache_ttl
        self._queue_timeout = queue_timeout
        self._clock = clock

    async def embed(self, user_id: str, request: EmbedRequest, timeout: float | None) -> EmbedResult:
        check_embed_request(request)
        started = self._clock()
        deadline = Deadline(timeout)
        spec = self._catalog.require(request.model or self._catalog.default_embedding_model)
        check_embedding_model(spec)
        require_configured(self._catalog, self._providers, spec)
        dims = check_dimensions(spec, request)
        record = UsageRecord(
            id=str(uuid7()), user_id=user_id, create_time=datetime.now(timezone.utc), kind="embed",
            requested_model=request.model or spec.id, model=spec.id, provider=spec.provider, status="error",
            metadata=dict(request.metadata),
        )
        try:
            if self._budgets is not None:
                await self._budgets.check(user_id)
            use_cache = request.cache_policy != CachePolicy.BYPASS
            keys = await cache_codec.embedding_keys(spec.id, dims, request.truncate, request.inputs)
            vectors: list[list[float] | None] = [None] * len(keys)
            if use_cache:
                for i, blob in enumerate(await self._cache.get_many(keys)):
                    if blob is not None:
                        vectors[i] = cache_codec.decode_vector(blob)
            hits = [v is not None for v in vectors]
            missing = [i for i, v in enumerate(vectors) if v is None]
            usage = Usage()
            if missing:
                # Distinct texts only: a batch often repeats a chunk.
                unique: dict[str, int] = {}
                for i in missing:
                    unique.setdefault(request.inputs[i], len(unique))
                batch = await self._call(spec, list(unique), request, deadline, record)
                usage.input_tokens = batch.input_tokens
                fresh: dict[str, bytes] = {}
                for i in missing:
                    vector = batch.vectors[unique[request.inputs[i]]]
                    vectors[i] = vector
                    fresh[keys[i]] = cache_codec.encode_vector(vector)
                if use_cache:
                    await self._cache.set_many(fresh, self._ttl)
            cost = cost_usd(spec, usage)
            record.status = "ok"
            record.cache_hit = not missing
            record.set_usage(usage, cost)
            return EmbedResult(vectors=vectors, cache_hits=hits, model=spec.id, usage=usage, cost_usd=cost)  # type: ignore[arg-type]
        except errors.ParleyError as exc:
            record.error_reason = exc.reason
            raise
        except asyncio.CancelledError:
            record.status, record.error_reason = "cancelled", "CANCELLED"
            raise
        finally:
            record.latency_ms = (self._clock() - started) * 1000
            self._ledger.record(record)

    async def _call(self, spec: ModelSpec, texts: list[str], request: EmbedRequest, deadline: Deadline,
                    record: UsageRecord) -> EmbeddingBatch:
        provider = self._providers[spec.provider]
        estimate = sum(len(t) for t in texts) // 4 + 1
        lease = await self._queues.acquire(spec.id, spec.limits, estimate, int(request.priority),
                                           deadline.queue_deadline(self._queue_timeout))
        record.queue_ms = lease.queue_time * 1000

        def call(timeout: float):
            return single(lambda: provider.embed(spec.vendor_model, texts, dimensions=request.dimensions,
                                                 truncate=request.truncate, timeout=timeout))

        try:
            batch = None
            try:
                async for event in self._attempts.run(spec, "embeddings", call, deadline, buffered=True):
                    batch = event
            except FallBack as failed:
                if failed.final:
                    raise errors.InvalidArgument(failed.cause.message, reason="INPUT_REJECTED") from None
                raise failed.error from None
            assert isinstance(batch, EmbeddingBatch)
            await lease.settle(batch.input_tokens)
            return batch
        finally:
            lease.release()
