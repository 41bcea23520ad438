"""Per-deployment request queues that keep a model's RPM, TPM and concurrency limits by
making callers wait (higher priority first, then arrival order), and a cooldown for a
deployment that keeps failing.

Rates are token buckets refilled continuously (RPM/60 requests and TPM/60 tokens per
second) holding at most one second of capacity, so a burst never exceeds what the vendor
would accept over any second of its minute. Without Redis the limits are per replica: with N
replicas, give each 1/N of the vendor's limit in the models file. With Redis (`PARLEY_REDIS_URL`) the
RPM and TPM buckets are shared by every replica (one atomic script on Redis's clock);
concurrency stays per replica.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from services.llm.catalog import Limits
from services.runtime import metrics as rpc_metrics
from services.runtime.errors import ResourceExhausted

log = logging.getLogger("parley.llm.limits")


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


class LocalRates:
    """RPM and TPM buckets of one deployment, in this process."""

    def __init__(self, limits: Limits) -> None:
        self.rpm = TokenBucket(limits.rpm / 60.0, limits.rpm / 60.0) if limits.rpm else None
        self.tpm = TokenBucket(limits.tpm / 60.0, limits.tpm / 60.0) if limits.tpm else None

    async def take(self, tokens: float) -> float:
        """Takes one request and `tokens` if both are available (returns 0), else returns
        the seconds to wait and takes nothing."""
        delay = 0.0
        if self.rpm is not None:
            delay = max(delay, self.rpm.delay(1))
        if self.tpm is not None:
            delay = max(delay, self.tpm.delay(tokens))
        if delay > 0:
            return delay
        if self.rpm is not None:
            self.rpm.take(1)
        if self.tpm is not None:
            self.tpm.take(tokens)
        return 0.0

    async def give_back(self, tokens: float) -> None:
        if self.tpm is not None:
            self.tpm.give_back(tokens)


# One atomic step over both buckets, on the Redis server's clock: every replica draws from
# the same RPM and TPM. KEYS: the bucket hash. ARGV: rpm rate/s, rpm capacity, tpm rate/s,
# tpm capacity, tokens wanted (negative: a refund), take (1) or refund (0).
_TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm_rate, rpm_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local tpm_rate, tpm_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, take = tonumber(ARGV[5]), tonumber(ARGV[6])
local v = redis.call('HMGET', KEYS[1], 'r', 't', 's')
local stamp = tonumber(v[3]) or now
local r = math.min(rpm_cap, (tonumber(v[1]) or rpm_cap) + (now - stamp) * rpm_rate)
local k = math.min(tpm_cap, (tonumber(v[2]) or tpm_cap) + (now - stamp) * tpm_rate)
local delay = 0
if take == 1 then
  if rpm_rate > 0 and r < 1 then delay = math.max(delay, (1 - r) / rpm_rate) end
  local need = math.min(tokens, tpm_cap)
  if tpm_rate > 0 and k < need then delay = math.max(delay, (need - k) / tpm_rate) end
  if delay == 0 then
    r = r - 1
    k = k - math.min(tokens, tpm_cap)
  end
else
  k = math.min(tpm_cap, k + tokens)
end
redis.call('HSET', KEYS[1], 'r', r, 't', k, 's', now)
redis.call('EXPIRE', KEYS[1], 120)
return tostring(delay)
"""


class RedisRates:
    """RPM and TPM buckets shared by every replica through Redis. If Redis fails the
    replica falls back to its own buckets (logged) rather than failing calls."""

    def __init__(self, redis, key: str, limits: Limits) -> None:
        self._redis = redis
        self._key = key
        self._script = redis.register_script(_TAKE_SCRIPT)
        self._args = [
            (limits.rpm or 0) / 60.0, max((limits.rpm or 0) / 60.0, 1.0),
            (limits.tpm or 0) / 60.0, max((limits.tpm or 0) / 60.0, 1.0),
        ]
        self._local = LocalRates(limits)

    async def take(self, tokens: float) -> float:
        try:
            return float(await self._script(keys=[self._key], args=[*self._args, tokens, 1]))
        except Exception as exc:  # noqa: BLE001
            log.warning("shared rate limits unavailable (%s); using this replica's", type(exc).__name__)
            return await self._local.take(tokens)

    async def give_back(self, tokens: float) -> None:
        try:
            await self._script(keys=[self._key], args=[*self._args, tokens, 0])
        except Exception:  # noqa: BLE001 - a lost refund only makes the limit stricter for a moment
            await self._local.give_back(tokens)


class Lease:
    """A granted slot; release it when the call ends, settle it when usage is known."""

    def __init__(self, queue: DeploymentQueue | None, tokens: float, queue_time: float) -> None:
        self._queue = queue
        self._tokens = tokens
        self.queue_time = queue_time
        self._released = False

    async def settle(self, actual_tokens: int) -> None:
        if self._queue is not None and self._queue.limits.tpm:
            difference, self._tokens = self._tokens - actual_tokens, actual_tokens
            if difference:
                await self._queue.rates.give_back(difference)

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
    """Waiters in priority order, admitted one by one by a dispatcher task when the
    concurrency limit and the rate buckets allow."""

    def __init__(self, limits: Limits, rates: LocalRates | RedisRates | None = None) -> None:
        self.limits = limits
        self.rates = rates or LocalRates(limits)
        self.concurrency = limits.concurrency
        self.active = 0
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return sum(1 for w in self._heap if not w.future.done())

    @property
    def idle(self) -> bool:
        return self.active == 0 and not self._heap

    def _kick(self) -> None:
        self._wake.set()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    async def _sleep(self, seconds: float | None) -> None:
        """Until `seconds` pass or something changes (an arrival, a release)."""
        self._wake.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _dispatch(self) -> None:
        while self._heap:
            head = self._heap[0]
            if head.future.done():
                heapq.heappop(self._heap)
                continue
            if self.concurrency is not None and self.active >= self.concurrency:
                await self._sleep(None)
                continue
            delay = await self.rates.take(head.tokens)
            if delay > 0:
                await self._sleep(delay)
                continue
            if head.future.done():  # gave up while we took its capacity: hand it back
                await self.rates.give_back(head.tokens)
                continue
            heapq.heappop(self._heap)
            self.active += 1
            head.future.set_result(Lease(self, head.tokens, time.monotonic() - head.enqueued))

    def _release(self) -> None:
        self.active -= 1
        if self._heap:
            self._kick()

    def estimated_wait(self) -> float:
        per_request = 60.0 / self.limits.rpm if self.limits.rpm else 1.0
        return max(1.0, per_request * (self.depth + 1))

    async def acquire(self, tokens: float, priority: int, deadline: float | None) -> Lease:
        """Waits for a slot until `deadline` (event-loop time), then fails with
        RESOURCE_EXHAUSTED (QUEUE_TIMEOUT) and a RetryInfo."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(-priority, next(self._seq), tokens, loop.create_future(), time.monotonic())
        heapq.heappush(self._heap, waiter)
        self._kick()
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


class Queues:
    """The deployments' queues; their rate buckets live in Redis when one is given.

    Any "ollama/<name>" (or pass-through vendor model) gets a queue of its own, so at most
    `max_queues` are kept: the least recently used idle ones are forgotten (a forgotten
    queue starts again with full buckets, as after a restart)."""

    def __init__(self, redis=None, prefix: str = "parley:llm:", max_queues: int = 1024) -> None:
        self._queues: OrderedDict[str, DeploymentQueue] = OrderedDict()
        self._redis = redis
        self._prefix = prefix
        self._max = max_queues

    def get(self, key: str, limits: Limits) -> DeploymentQueue | None:
        if limits.unlimited:
            return None
        queue = self._queues.get(key)
        if queue is None or queue.limits != limits:
            rates = None
            if self._redis is not None and (limits.rpm or limits.tpm):
                rates = RedisRates(self._redis, f"{self._prefix}rate:{key}", limits)
            queue = self._queues[key] = DeploymentQueue(limits, rates)
            self._forget_idle()
        self._queues.move_to_end(key)
        return queue

    def _forget_idle(self) -> None:
        excess = len(self._queues) - self._max
        if excess <= 0:
            return
        for key in [k for k, q in self._queues.items() if q.idle][:excess]:
            del self._queues[key]

    @property
    def count(self) -> int:
        return len(self._queues)

    def items(self) -> list[tuple[str, DeploymentQueue]]:
        return list(self._queues.items())

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

    def __init__(self, threshold: int, seconds: float, clock=time.time, max_keys: int = 4096) -> None:
        self.threshold = threshold
        self.seconds = seconds
        self._clock = clock
        # Keyed by any model id a caller names, so bounded: the oldest entries are forgotten.
        self._max = max_keys
        self._failures: OrderedDict[str, int] = OrderedDict()
        self._until: OrderedDict[str, float] = OrderedDict()

    def _bounded_set(self, table: OrderedDict, key: str, value) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self._max:
            table.popitem(last=False)

    def failed(self, key: str) -> None:
        count = self._failures.get(key, 0) + 1
        self._bounded_set(self._failures, key, count)
        if self.threshold and count >= self.threshold:
            self._bounded_set(self._until, key, self._clock() + self.seconds)
            self._failures[key] = 0
            rpc_metrics.llm_cooled_down(key)

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
