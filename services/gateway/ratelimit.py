"""Rate limits per API key and per user: requests per minute, concurrent streams and model
tokens per minute.

Requests and tokens are counted in sliding one-minute windows (the weighted sum of this
minute's and the previous minute's fixed-window counters), streams as leases that the
gateway renews while they are open. One call is admitted against all of its subjects (its
key and its user) at once, or against none. `MemoryLimiter` keeps the counters in this
process; `RedisLimiter` keeps them in Redis, one Lua script per decision, so that every
gateway replica shares one limit.

While Redis cannot be reached, `RedisLimiter` limits in this process instead (a
`MemoryLimiter` of its own), as if it were the only replica: calls keep being answered and
limited, each replica holding callers to the limit on its own (so with N replicas a caller
may get up to N times it), and Redis is tried again after `REDIS_RETRY_SECONDS`. Refusing
every call while Redis is down would make the cache of limits a single point of failure
of the whole API.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.gateway.models import RateLimits
from services.runtime import errors

log = logging.getLogger("parley.gateway.ratelimit")

WINDOW = 60
STREAM_LEASE_SECONDS = 90
STREAM_RENEW_SECONDS = 30
# After a Redis failure, how long a replica limits on its own before it tries Redis again
# (so a dead Redis costs one failed attempt per interval, not one per call).
REDIS_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class Subject:
    """Something limits apply to: "key:<id>" or "user:<id>"."""

    name: str
    limits: RateLimits


@dataclass
class Admission:
    subjects: Sequence[Subject]
    stream_id: str | None = None
    released: bool = field(default=False)
    local: bool = False  # admitted by the in-process fallback while Redis was unreachable


def _retry_after(prev: float, cur: float, elapsed: float, limit: float, need: float) -> float:
    """Seconds until prev * (1 - t/W) + cur + need <= limit, in the sliding window."""
    if cur + need > limit:  # not before the next window, then prev=cur decays
        if cur <= 0:
            return WINDOW - elapsed
        return (WINDOW - elapsed) + WINDOW * max(0.0, 1 - (limit - need) / cur)
    if prev <= 0:
        return 0.0
    fraction = 1 - (limit - need - cur) / prev
    return max(0.0, WINDOW * fraction - elapsed)


def _exhausted(subject: Subject, what: str, limit: int, retry_after: float) -> errors.ResourceExhausted:
    kind = subject.name.split(":", 1)[0]
    return errors.ResourceExhausted(
        f"rate limit exceeded: {what} per {'API key' if kind == 'key' else 'user'} is {limit}; "
        f"retry in {max(retry_after, 0.001):.1f}s",
        reason="RATE_LIMITED",
        metadata={"limit": what.replace(" ", "_"), "subject": kind, "quota": str(limit)},
        retry_after=max(retry_after, 0.001),
    )


def _streams_exhausted(subject: Subject, limit: int) -> errors.ResourceExhausted:
    kind = subject.name.split(":", 1)[0]
    return errors.ResourceExhausted(
        f"too many concurrent streams: at most {limit} per {'API key' if kind == 'key' else 'user'}; "
        "retry when one has finished",
        reason="TOO_MANY_STREAMS",
        metadata={"limit": "concurrent_streams", "subject": kind, "quota": str(limit)},
        retry_after=1.0,
    )


class MemoryLimiter:
    """Counters in this process: right for one gateway replica."""

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._counters: dict[tuple[str, str, int], float] = {}
        self._streams: dict[str, set[str]] = {}
        self._last_sweep = 0

    def _window(self, now: float) -> tuple[int, float]:
        window = int(now // WINDOW)
        return window, now - window * WINDOW

    def _estimate(self, subject: str, kind: str, window: int, elapsed: float) -> tuple[float, float]:
        prev = self._counters.get((subject, kind, window - 1), 0.0)
        cur = self._counters.get((subject, kind, window), 0.0)
        return prev, cur

    def _sweep(self, window: int) -> None:
        if window != self._last_sweep:
            self._last_sweep = window
            for key in [k for k in self._counters if k[2] < window - 1]:
                del self._counters[key]

    async def admit(self, subjects: Sequence[Subject], *, stream: bool) -> Admission:
        now = self._clock()
        window, elapsed = self._window(now)
        self._sweep(window)
        weight = 1 - elapsed / WINDOW
        for s in subjects:
            tpm = s.limits.tokens_per_minute
            if tpm:
                prev, cur = self._estimate(s.name, "tok", window, elapsed)
                if prev * weight + cur >= tpm:
                    raise _exhausted(s, "tokens per minute", tpm, _retry_after(prev, cur, elapsed, tpm, 1))
            rpm = s.limits.requests_per_minute
            if rpm:
                prev, cur = self._estimate(s.name, "req", window, elapsed)
                if prev * weight + cur + 1 > rpm:
                    raise _exhausted(s, "requests per minute", rpm, _retry_after(prev, cur, elapsed, rpm, 1))
            if stream and s.limits.concurrent_streams:
                if len(self._streams.get(s.name, ())) >= s.limits.concurrent_streams:
                    raise _streams_exhausted(s, s.limits.concurrent_streams)
        stream_id = uuid.uuid4().hex if stream else None
        for s in subjects:
            if s.limits.requests_per_minute:
                key = (s.name, "req", window)
                self._counters[key] = self._counters.get(key, 0.0) + 1
            if stream_id and s.limits.concurrent_streams:
                self._streams.setdefault(s.name, set()).add(stream_id)
        return Admission(subjects, stream_id)

    async def release(self, admission: Admission) -> None:
        if admission.released or admission.stream_id is None:
            return
        admission.released = True
        for s in admission.subjects:
            open_streams = self._streams.get(s.name)
            if open_streams is not None:
                open_streams.discard(admission.stream_id)
                if not open_streams:
                    del self._streams[s.name]

    async def record_tokens(self, subjects: Sequence[Subject], tokens: int) -> None:
        if tokens <= 0:
            return
        window, _ = self._window(self._clock())
        for s in subjects:
            if s.limits.tokens_per_minute:
                key = (s.name, "tok", window)
                self._counters[key] = self._counters.get(key, 0.0) + tokens

    async def aclose(self) -> None:
        pass


# KEYS: none (built from ARGV so one script serves any number of subjects).
# ARGV: prefix, stream_id ("" if none), lease_seconds, then per subject: name, rpm, streams, tpm.
# Returns {0} when admitted, or {1, subject_index, kind, retry_after_ms}.
_ADMIT = """
local prefix, stream_id, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local window = math.floor(now / 60)
local elapsed = now - window * 60
local weight = 1 - elapsed / 60
local n = (#ARGV - 3) / 4
local function retry(prev, cur, limit, need)
  if cur + need > limit then
    if cur <= 0 then return 60 - elapsed end
    return (60 - elapsed) + 60 * math.max(0, 1 - (limit - need) / cur)
  end
  if prev <= 0 then return 0 end
  return math.max(0, 60 * (1 - (limit - need - cur) / prev) - elapsed)
end
for i = 0, n - 1 do
  local name = ARGV[4 + i * 4]
  local rpm, streams, tpm = tonumber(ARGV[5 + i * 4]), tonumber(ARGV[6 + i * 4]), tonumber(ARGV[7 + i * 4])
  local base = prefix .. name
  if tpm > 0 then
    local prev = tonumber(redis.call('GET', base .. ':tok:' .. (window - 1)) or '0')
    local cur = tonumber(redis.call('GET', base .. ':tok:' .. window) or '0')
    if prev * weight + cur >= tpm then return {1, i, 'tok', math.ceil(retry(prev, cur, tpm, 1) * 1000)} end
  end
  if rpm > 0 then
    local prev = tonumber(redis.call('GET', base .. ':req:' .. (window - 1)) or '0')
    local cur = tonumber(redis.call('GET', base .. ':req:' .. window) or '0')
    if prev * weight + cur + 1 > rpm then return {1, i, 'req', math.ceil(retry(prev, cur, rpm, 1) * 1000)} end
  end
  if stream_id ~= '' and streams > 0 then
    redis.call('ZREMRANGEBYSCORE', base .. ':streams', '-inf', now)
    if redis.call('ZCARD', base .. ':streams') >= streams then return {1, i, 'streams', 1000} end
  end
end
for i = 0, n - 1 do
  local name = ARGV[4 + i * 4]
  local rpm, streams = tonumber(ARGV[5 + i * 4]), tonumber(ARGV[6 + i * 4])
  local base = prefix .. name
  if rpm > 0 then
    local key = base .. ':req:' .. window
    redis.call('INCR', key)
    redis.call('EXPIRE', key, 130)
  end
  if stream_id ~= '' and streams > 0 then
    redis.call('ZADD', base .. ':streams', now + lease, stream_id)
    redis.call('EXPIRE', base .. ':streams', lease + 10)
  end
end
return {0}
"""

# ARGV: prefix, tokens, then subject names with a tokens-per-minute limit.
_TOKENS = """
local t = redis.call('TIME')
local window = math.floor(tonumber(t[1]) / 60)
for i = 3, #ARGV do
  local key = ARGV[1] .. ARGV[i] .. ':tok:' .. window
  redis.call('INCRBY', key, ARGV[2])
  redis.call('EXPIRE', key, 130)
end
return 0
"""

# ARGV: prefix, stream_id, lease_seconds (0 removes), subject names.
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local lease = tonumber(ARGV[3])
for i = 4, #ARGV do
  local key = ARGV[1] .. ARGV[i] .. ':streams'
  if lease > 0 then
    -- Not XX: a lease that lapsed while Redis could not be reached counts again.
    redis.call('ZADD', key, now + lease, ARGV[2])
    redis.call('EXPIRE', key, lease + 10)
  else
    redis.call('ZREM', key, ARGV[2])
  end
end
return 0
"""


class RedisLimiter:
    """Counters in Redis, shared by every gateway replica using the same URL and prefix."""

    def __init__(self, url: str, prefix: str = "parley:rl:", *, clock=time.monotonic) -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._prefix = prefix
        self._admit = self._redis.register_script(_ADMIT)
        self._tokens = self._redis.register_script(_TOKENS)
        self._lease = self._redis.register_script(_LEASE)
        self._open: dict[str, list[str]] = {}
        # Streams that ended while their lease could not be removed: retried each renewal.
        self._unreleased: dict[str, list[str]] = {}
        self._renewer: asyncio.Task | None = None
        # Limits of this replica alone, while Redis cannot be reached.
        self._local = MemoryLimiter()
        self._clock = clock
        self._redis_retry_at = 0.0

    @property
    def redis_down(self) -> bool:
        return self._clock() < self._redis_retry_at

    def _redis_failed(self, exc: Exception) -> None:
        if not self.redis_down:
            log.warning("Redis is unreachable (%s): limiting in this replica alone; trying Redis again in %.0fs",
                        type(exc).__name__, REDIS_RETRY_SECONDS)
        self._redis_retry_at = self._clock() + REDIS_RETRY_SECONDS

    async def _admit_locally(self, subjects: Sequence[Subject], stream: bool) -> Admission:
        admission = await self._local.admit(subjects, stream=stream)
        admission.local = True
        return admission

    async def admit(self, subjects: Sequence[Subject], *, stream: bool) -> Admission:
        if self.redis_down:
            return await self._admit_locally(subjects, stream)
        stream_id = uuid.uuid4().hex if stream else None
        args: list = [self._prefix, stream_id or "", STREAM_LEASE_SECONDS]
        for s in subjects:
            args += [s.name, s.limits.requests_per_minute, s.limits.concurrent_streams, s.limits.tokens_per_minute]
        try:
            result = await self._admit(args=args)
        except Exception as exc:  # noqa: BLE001 - any Redis failure
            self._redis_failed(exc)
            return await self._admit_locally(subjects, stream)
        if self._redis_retry_at:
            self._redis_retry_at = 0.0
            log.info("Redis is reachable again: limits are shared by every replica again")
        if int(result[0]) == 1:
            subject = subjects[int(result[1])]
            kind = result[2].decode() if isinstance(result[2], bytes) else result[2]
            retry = int(result[3]) / 1000
            if kind == "streams":
                raise _streams_exhausted(subject, subject.limits.concurrent_streams)
            if kind == "tok":
                raise _exhausted(subject, "tokens per minute", subject.limits.tokens_per_minute, retry)
            raise _exhausted(subject, "requests per minute", subject.limits.requests_per_minute, retry)
        if stream_id:
            names = [s.name for s in subjects if s.limits.concurrent_streams]
            if names:
                self._open[stream_id] = names
                if self._renewer is None:
                    self._renewer = asyncio.create_task(self._renew_forever())
        return Admission(subjects, stream_id)

    async def release(self, admission: Admission) -> None:
        if admission.local:
            await self._local.release(admission)
            return
        if admission.released or admission.stream_id is None:
            return
        admission.released = True
        names = self._open.pop(admission.stream_id, None)
        if names:
            await self._remove_lease(admission.stream_id, names)

    async def _remove_lease(self, stream_id: str, names: list[str]) -> None:
        try:
            await self._lease(args=[self._prefix, stream_id, 0, *names])
            self._unreleased.pop(stream_id, None)
        except Exception as exc:  # noqa: BLE001 - any Redis failure: retried at the next renewal
            self._unreleased[stream_id] = names
            log.warning("could not release a stream lease (%s); retrying at the next renewal, and it "
                        "expires within %ds in any case", type(exc).__name__, STREAM_LEASE_SECONDS)

    async def record_tokens(self, subjects: Sequence[Subject], tokens: int) -> None:
        names = [s.name for s in subjects if s.limits.tokens_per_minute]
        if tokens > 0 and names:
            if self.redis_down:
                await self._local.record_tokens(subjects, tokens)
                return
            try:
                await self._tokens(args=[self._prefix, int(tokens), *names])
            except Exception as exc:  # noqa: BLE001 - failing a finished call would not bring the count back
                self._redis_failed(exc)
                await self._local.record_tokens(subjects, tokens)

    async def renew(self) -> None:
        """Extends the lease of every stream open here (re-adding leases that lapsed) and
        retries releases that failed."""
        for stream_id, names in list(self._open.items()):
            try:
                await self._lease(args=[self._prefix, stream_id, STREAM_LEASE_SECONDS, *names])
            except Exception as exc:  # noqa: BLE001 - the next round re-adds it, even if it lapsed meanwhile
                log.warning("could not renew a stream lease (%s); retrying in %ds",
                            type(exc).__name__, STREAM_RENEW_SECONDS)
                continue
            if stream_id not in self._open:  # released while the renewal was in flight
                await self._remove_lease(stream_id, names)
        for stream_id, names in list(self._unreleased.items()):
            await self._remove_lease(stream_id, names)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(STREAM_RENEW_SECONDS)
            try:
                await self.renew()
            except Exception:  # noqa: BLE001 - a bug here must not end renewals for good
                log.exception("stream lease renewal failed")

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        await self._redis.aclose()


