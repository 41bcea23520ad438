"""Per-user budgets: limits in USD or tokens per UTC day, ISO week or month, checked before
every call.

A check reads the user's limits and the ledger's spending per period (cached for a couple
of seconds, so a call costs no database round trip), plus the calls recorded since that
read and the records still waiting in the ledger's buffer. If the database cannot be read
the check lets the call through (and logs it): a budget outage must not become an LLM outage.
Calls in flight when a limit is reached complete, so spending may overshoot by them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from services.llm.usage import UsageRecord
from services.runtime import errors
from services.runtime import metrics as rpc_metrics

log = logging.getLogger("parley.llm.budgets")

DAY, WEEK, MONTH = 1, 2, 3
PERIOD_NAMES = {DAY: "day", WEEK: "week", MONTH: "month"}


def period_bounds(period: int, now: datetime) -> tuple[datetime, datetime]:
    day = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == DAY:
        return day, day + timedelta(days=1)
    if period == WEEK:
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    start = day.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


@dataclass
class Limit:
    period: int
    limit_usd: float | None = None
    limit_tokens: int | None = None
    admin_set: bool = False

    @property
    def unit(self) -> str:
        return "usd" if self.limit_usd is not None else "tokens"

    @property
    def amount(self) -> float:
        return self.limit_usd if self.limit_usd is not None else float(self.limit_tokens or 0)

    def to_json(self) -> dict:
        data: dict = {"period": self.period, "admin_set": self.admin_set}
        if self.limit_usd is not None:
            data["limit_usd"] = self.limit_usd
        else:
            data["limit_tokens"] = self.limit_tokens
        return data

    @classmethod
    def from_json(cls, data: dict) -> Limit:
        return cls(period=int(data["period"]), limit_usd=data.get("limit_usd"), limit_tokens=data.get("limit_tokens"),
                   admin_set=bool(data.get("admin_set")))


@dataclass
class LimitStatus:
    limit: Limit
    spent_usd: float
    spent_tokens: int
    start: datetime
    reset: datetime


@dataclass
class _Entry:
    limits: list[Limit]
    starts: list[datetime]
    spent: list[tuple[float, int]]
    fetched: float
    observed: list[UsageRecord] = field(default_factory=list)


class Budgets:
    def __init__(self, repository, *, cache_seconds: float = 2.0, pending=None) -> None:
        self._repo = repository
        self._ttl = cache_seconds
        self._entries: dict[str, _Entry] = {}
        # Callable giving the ledger's unwritten records (they count as spent already).
        self._pending = pending or (lambda: ())

    def set_pending_source(self, pending) -> None:
        self._pending = pending

    def observe(self, record: UsageRecord) -> None:
        entry = self._entries.get(record.user_id)
        if entry is not None:
            entry.observed.append(record)

    async def _load(self, user_id: str) -> _Entry:
        entry = self._entries.get(user_id)
        if entry is not None and time.monotonic() - entry.fetched < self._ttl:
            return entry
        raw, _ = await self._repo.get_budget(user_id)
        limits = [Limit.from_json(item) for item in raw]
        now = datetime.now(timezone.utc)
        starts = sorted({period_bounds(limit.period, now)[0] for limit in limits})
        # Unwritten records first, then the database without them: each call counts once,
        # whether or not its batch commits in between.
        pending = [r for r in self._pending() if r.user_id == user_id]
        spent = await self._repo.spending_by_period(user_id, starts, [r.id for r in pending]) if starts else []
        entry = _Entry(limits, starts, spent, time.monotonic())
        entry.observed = pending
        self._entries[user_id] = entry
        if len(self._entries) > 100_000:
            self._entries.pop(next(iter(self._entries)))
        return entry

    def invalidate(self, user_id: str) -> None:
        self._entries.pop(user_id, None)

    def _statuses(self, entry: _Entry) -> list[LimitStatus]:
        now = datetime.now(timezone.utc)
        statuses = []
        for limit in entry.limits:
            start, reset = period_bounds(limit.period, now)
            usd, tokens = 0.0, 0
            if start in entry.starts:
                usd, tokens = entry.spent[entry.starts.index(start)]
            for record in entry.observed:
                if record.create_time >= start:
                    usd += record.cost_usd
                    tokens += record.total_tokens
            statuses.append(LimitStatus(limit, usd, tokens, start, reset))
        return statuses

    async def status(self, user_id: str) -> list[LimitStatus]:
        self.invalidate(user_id)
        return self._statuses(await self._load(user_id))

    async def check(self, user_id: str) -> None:
        try:
            entry = await self._load(user_id)
        except errors.ParleyError as exc:
            log.warning("budget check skipped: %s", exc.reason)
            return
        statuses = self._statuses(entry)
        if statuses:
            rpc_metrics.budget_checked(max(
                (s.spent_usd if s.limit.unit == "usd" else s.spent_tokens) / s.limit.amount if s.limit.amount else 1.0
                for s in statuses))
        for s in statuses:
            spent = s.spent_usd if s.limit.unit == "usd" else s.spent_tokens
            if spent >= s.limit.amount:
                period = PERIOD_NAMES[s.limit.period]
                shown = f"${s.limit.amount:.4f}" if s.limit.unit == "usd" else f"{int(s.limit.amount)} tokens"
                raise errors.ResourceExhausted(
                    f"budget exceeded: {shown} per {period} is used up until {s.reset.isoformat()}",
                    reason="BUDGET_EXCEEDED",
                    metadata={"period": period, "unit": s.limit.unit, "limit": f"{s.limit.amount:g}"},
                    retry_after=max((s.reset - datetime.now(timezone.utc)).total_seconds(), 0.0),
                )

    async def set_limits(self, user_id: str, new: list[Limit], *, admin: bool, on_write=None) -> datetime:
        """Replaces the user's limits; `on_write(conn)` runs in the same transaction (the audit
        event of the change)."""
        seen = set()
        for i, limit in enumerate(new):
            key = (limit.period, limit.unit)
            if limit.period not in PERIOD_NAMES:
                raise errors.InvalidArgument.for_field(f"limits[{i}].period", "is required", "FIELD_REQUIRED")
            if not 0 < limit.amount < math.inf:
                raise errors.InvalidArgument.for_field(f"limits[{i}].amount", "must be set and positive", "INVALID_FIELD")
            if key in seen:
                raise errors.InvalidArgument.for_field(f"limits[{i}]", "at most one limit per period and unit",
                                                       "DUPLICATE_LIMIT")
            seen.add(key)
        if admin:
            for limit in new:
                limit.admin_set = True
        else:
            raw, _ = await self._repo.get_budget(user_id)
            current = {(limit.period, limit.unit): limit for limit in map(Limit.from_json, raw)}
            by_key = {(limit.period, limit.unit): limit for limit in new}
            for key, old in current.items():
                if not old.admin_set:
                    continue
                replacement = by_key.get(key)
                if replacement is None or replacement.amount > old.amount:
                    raise errors.PermissionDenied(
                        f"an administrator set the {PERIOD_NAMES[key[0]]} {key[1]} limit; you may only lower it",
                        reason="ADMIN_LIMIT",
                    )
                replacement.admin_set = True
        update_time = await self._repo.put_budget(user_id, [limit.to_json() for limit in new], on_write=on_write)
        self.invalidate(user_id)
        return update_time
