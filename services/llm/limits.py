"""Per-deployment request queues that keep a model's RPM, TPM and concurrency limits by
making callers wait (higher priority first, then arrival order), and a cooldown for a
deployment that keeps failing.

Rates are token buckets refilled continuously (RPM/60 requests and TPM/60 tokens per
second) holding at most one second of capacity, so a burst never exceeds what the vendor
would accept over any second of its minute. The limits are per replica: with N replicas,
give each 1/N of the vendor's limit in the models file.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field

from services.llm.catalog import Limits
from services.runtime.errors import ResourceExhausted


class TokenBucket:
    def __init__(self, per_second: float, capacity: float, clock=time.monotonic) -> None:
        self.rate = per_second
        self.capacity = max(capacity, 1.0)
        self.level = self.capacity
        self._clock = clock
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay(self, amount: float) -> float:
        """Seconds until `amount` (clamped to the capacity) is available."""
        self._refill()
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= min(amount, self.capacity)

    def give_back(self, amount: float) -> None:
        """Credits (or, when negative, debits) a correction once the real usage is known."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class Lease:
    """A granted slot; release it when the call ends, settle it when usage is known."""

    def __init__(self, queue: DeploymentQueue | None, tokens: float, queue_time: float) -> None:
        self._queue = queue
        self._tokens = tokens
        self.queue_time = queue_time
        self._released = False

    def settle(self, actual_tokens: int) -> None:
        if self._queue is not None and self._queue.tpm is not None:
            self._queue.tpm.give_back(self._tokens - actual_tokens)
            self._tokens = actual_tokens

    def release(self) -> None:
        if not self._released and self._queue is not None:
            self._released = True
            self._queue._release()


_FREE = Lease(None, 0, 0.0)


@dataclass(order=True)
class _Waiter:
    rank: int
    seq: int
    tokens: float = field(compare=False)
    future: asyncio.Future = field(compare=False)
    enqueued: float = field(compare=False)


class DeploymentQueue:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.rpm = TokenBucket(limits.rpm / 60.0, limits.rpm / 60.0) if limits.rpm else None
        self.tpm = TokenBucket(limits.tpm / 60.0, limits.tpm / 60.0) if limits.tpm else None
        self.concurrency = limits.concurrency
        self.active = 0
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def depth(self) -> int:
        return sum(1 for w in self._heap if not w.future.done())

    def _delay(self, tokens: float) -> float:
        delay = 0.0
        if self.rpm is not None:
            delay = max(delay, self.rpm.delay(1))
        if self.tpm is not None:
            delay = max(delay, self.tpm.delay(tokens))
        return delay

    def _pump(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._heap:
            head = self._heap[0]
            if head.future.done():
                heapq.heappop(self._heap)
                continue
            if self.concurrency is not None and self.active >= self.concurrency:
                return  # a release pumps again
            delay = self._delay(head.tokens)
            if delay > 0:
                self._timer = asyncio.get_running_loop().call_later(delay, self._pump)
                return
            heapq.heappop(self._heap)
            if self.rpm is not None:
                self.rpm.take(1)
            if self.tpm is not None:
                self.tpm.take(head.tokens)
            self.active += 1
            head.future.set_result(Lease(self, head.tokens, time.monotonic() - head.enqueued))

    def _release(self) -> None:
        self.active -= 1
        if self._heap:
            self._pump()

    def estimated_wait(self) -> float:
        per_request = 60.0 / self.limits.rpm if self.limits.rpm else 1.0
        return max(1.0, per_request * (self.depth + 1))

    async def acquire(self, tokens: float, priority: int, deadline: float | None) -> Lease:
        """Waits for a slot until `deadline` (event-loop time), then fails with
        RESOURCE_EXHAUSTED (QUEUE_TIMEOUT) and a RetryInfo."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(-priority, next(self._seq), tokens, loop.create_future(), time.monotonic())
        heapq.heappush(self._heap, waiter)
        self._pump()
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter.future
        except TimeoutError:
            if waiter.future.done() and not waiter.future.cancelled():
                waiter.future.result().release()
            retry = self.estimated_wait()
            raise ResourceExhausted(
                "the model's request queue is full: no capacity within the queue deadline",
                reason="QUEUE_TIMEOUT", retry_after=retry,
            ) from None
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                waiter.future.result().release()
            raise
        finally:
            if not waiter.future.done():
                waiter.future.cancel()
            if self._heap:
                self._pump()


class Queues:
    def __init__(self) -> None:
        self._queues: dict[str, DeploymentQueue] = {}

    def get(self, key: str, limits: Limits) -> DeploymentQueue | None:
        if limits.unlimited:
            return None
        queue = self._queues.get(key)
        if queue is None or queue.limits != limits:
            queue = self._queues[key] = DeploymentQueue(limits)
        return queue

    async def acquire(self, key: str, limits: Limits, tokens: float, priority: int, deadline: float | None) -> Lease:
        queue = self.get(key, limits)
        if queue is None:
            return _FREE
        return await queue.acquire(tokens, priority, deadline)

    def depth(self, key: str) -> int:
        queue = self._queues.get(key)
        return queue.depth if queue else 0


class Cooldowns:
    """After `threshold` consecutive failures a deployment is skipped for `seconds` (its
    fallbacks answer instead); one success clears its record."""

    def __init__(self, threshold: int, seconds: float, clock=time.time) -> None:
        self.threshold = threshold
        self.seconds = seconds
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def failed(self, key: str) -> None:
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        if self.threshold and count >= self.threshold:
            self._until[key] = self._clock() + self.seconds
            self._failures[key] = 0

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
        self._until.pop(key, None)

    def until(self, key: str) -> float | None:
        """Wall-clock end of the deployment's cooldown, if it is cooling down."""
        until = self._until.get(key)
        if until is not None and until <= self._clock():
            del self._until[key]
            return None
        return until
