"""The one retry loop (SDK retries are off): every vendor call — a streamed chat, a buffered
chat, an embedding batch — is an attempt run here, with one span per attempt, exponential
backoff with full jitter (or the vendor's Retry-After) on retryable failures, the caller's
deadline around every read, and the deployment's cooldown bookkeeping.

A stream is retried only until its first event has left; after that a failure ends it with
UNAVAILABLE (PROVIDER_STREAM_INTERRUPTED). A buffered attempt holds its events until the
vendor has finished, so it can be retried as a unit. When a model's attempts are spent the
loop raises `FallBack`, and the caller moves on to the next model of its chain.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from services.llm.catalog import ModelSpec
from services.llm.limits import Cooldowns
from services.llm.models import ChatRequest, FinishReason, ProviderFinish, StreamEvent, Usage
from services.llm.providers.base import EmbeddingBatch, ProviderError
from services.llm.spans import end_attempt_span, start_attempt_span
from services.runtime import errors
from services.runtime import metrics as rpc_metrics

log = logging.getLogger("parley.llm")


@dataclass(frozen=True)
class RetrySettings:
    # Attempts per model (the first call plus retries).
    max_attempts: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    # A Retry-After longer than this is not waited for: the next model is tried instead.
    max_retry_wait: float = 30.0
    # Per vendor call when the caller set no deadline.
    request_timeout: float = 600.0


class Deadline:
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

    def queue_deadline(self, wait: float) -> float:
        """Event-loop time until which a call may wait in a queue: `wait` from now, never
        past the call's own deadline."""
        at = asyncio.get_running_loop().time() + wait
        return min(at, self.at) if self.at is not None else at


def deadline_exceeded() -> errors.DeadlineExceeded:
    return errors.DeadlineExceeded("the call's deadline passed before the model answered", reason="DEADLINE_EXCEEDED")


def provider_failure(error: ProviderError, model: str) -> errors.ParleyError:
    """The caller-facing error for a vendor failure that retries and fallbacks did not fix."""
    if error.kind in ("bad_request", "too_large"):
        return errors.InvalidArgument(f"{model} rejected the request: {error.message}", reason="PROVIDER_REJECTED")
    if error.kind == "rate_limited":
        return errors.ResourceExhausted(
            f"{model} is rate limited: {error.message}", reason="PROVIDER_RATE_LIMITED", retry_after=error.retry_after
        )
    return errors.Unavailable(f"{model} failed: {error.message}", reason="PROVIDER_ERROR",
                              metadata={"model": model, "kind": error.kind})


class FallBack(Exception):
    """This model failed before any output: try the next one, unless `final` (the vendor
    rejected the request itself, so another model would too)."""

    def __init__(self, error: ProviderError, model: str) -> None:
        super().__init__(error.message)
        self.cause = error
        self.error = provider_failure(error, model)
        self.final = error.kind in ("bad_request", "too_large")


# What one attempt yields last: a chat's ProviderFinish or an embedding batch.
Final = ProviderFinish | EmbeddingBatch


class Attempts:
    def __init__(self, settings: RetrySettings, cooldowns: Cooldowns) -> None:
        self.settings = settings
        self.cooldowns = cooldowns

    def _backoff(self, attempt: int, error: ProviderError) -> float:
        if error.retry_after is not None:
            return error.retry_after
        return random.uniform(0, min(self.settings.backoff_max, self.settings.backoff_base * 2**attempt))

    async def _wait_before_retry(self, spec: ModelSpec, attempt: int, error: ProviderError, deadline: Deadline) -> bool:
        """Sleeps before the next attempt; False when no further attempt makes sense."""
        self.cooldowns.failed(spec.id)
        if not error.retryable or attempt + 1 >= self.settings.max_attempts:
            return False
        wait = self._backoff(attempt, error)
        remaining = deadline.remaining()
        if wait > self.settings.max_retry_wait or (remaining is not None and wait >= remaining):
            return False
        log.info("retrying %s in %.2fs after %s", spec.id, wait, error.kind)
        rpc_metrics.llm_retried(spec.provider, error.kind)
        await asyncio.sleep(wait)
        return True

    async def run(
        self,
        spec: ModelSpec,
        operation: str,
        call: Callable[[float], AsyncIterator[StreamEvent | Final]],
        deadline: Deadline,
        *,
        buffered: bool,
        request: ChatRequest | None = None,
    ) -> AsyncIterator[StreamEvent | Final]:
        """Yields the vendor's events, the final one (ProviderFinish or EmbeddingBatch) last.
        `call(timeout)` opens one attempt. Raises FallBack when the model's attempts are spent
        before any event has left."""
        attempt = 0
        while True:
            if deadline.expired():
                raise deadline_exceeded()
            span = start_attempt_span(spec, operation, attempt, request)
            opened_at, first_chunk_at = time.perf_counter(), None
            events = call(deadline.timeout(self.settings.request_timeout))
            held: list[StreamEvent] = []
            started_output = False
            final: Final | None = None
            failure: BaseException | None = None
            try:
                while True:
                    try:
                        if deadline.at is None:
                            event = await anext(events)
                        else:
                            async with asyncio.timeout_at(deadline.at):
                                event = await anext(events)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        failure = TimeoutError()
                        raise deadline_exceeded() from None
                    if isinstance(event, (ProviderFinish, EmbeddingBatch)):
                        final = event
                        break
                    if first_chunk_at is None:
                        first_chunk_at = time.perf_counter()
                        span.set_attribute("gen_ai.response.time_to_first_chunk", first_chunk_at - opened_at)
                    if buffered:
                        held.append(event)
                    else:
                        started_output = True
                        yield event
                self.cooldowns.succeeded(spec.id)
            except ProviderError as error:
                failure = error
                if started_output:
                    self.cooldowns.failed(spec.id)
                    raise errors.Unavailable(
                        f"{spec.id} failed after the answer had started streaming ({error.kind}); the partial "
                        "answer cannot be continued, retry the call",
                        reason="PROVIDER_STREAM_INTERRUPTED", metadata={"model": spec.id},
                    ) from None
                if error.kind in ("bad_request", "too_large") or not await self._wait_before_retry(
                        spec, attempt, error, deadline):
                    raise FallBack(error, spec.id) from None
                attempt += 1
                continue
            except BaseException as exc:
                failure = failure or exc
                raise
            finally:
                await events.aclose()
                end_attempt_span(span, final, failure)
            for event in held:
                yield event
            # A chat stream that ended without a final event: what came is complete.
            yield final if final is not None else ProviderFinish(FinishReason.STOP, Usage())
            return


async def single(awaitable_factory: Callable[[], object]) -> AsyncIterator:
    """One awaited result as a one-event stream (so embedding calls share the loop)."""
    yield await awaitable_factory()  # type: ignore[misc]
