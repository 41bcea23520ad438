"""Usage reports and budgets for the caller (or, for administrators, anyone): GetUsage's
range, grouping and paging over the ledger; SetBudget and GetBudget over the budgets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from services.llm import access
from services.llm.budgets import PERIOD_NAMES, Budgets, Limit, LimitStatus
from services.llm.catalog import Catalog
from services.llm.repository import UsageGroup, UsageRepository
from services.runtime import errors
from services.runtime.audit import AuditLog, Kind
from services.runtime.identity import Identity
from services.runtime.pagination import Position, decode_token, encode_token, page_size
from services.runtime.validation import timestamp_to_datetime

MAX_RANGE = timedelta(days=366)
DEFAULT_RANGE = timedelta(days=30)


@dataclass(frozen=True)
class UsageQuery:
    # google.protobuf.Timestamp-like (seconds, nanos) or None; checked here.
    start: object | None
    end: object | None
    group_by: tuple[str, ...]
    models: tuple[str, ...]
    target_user_id: str
    all_users: bool
    page_size: int
    page_token: str


@dataclass
class UsagePage:
    rows: list[UsageGroup]
    total: UsageGroup
    next_page_token: str


@dataclass
class BudgetView:
    user_id: str
    statuses: list[LimitStatus]
    update_time: datetime | None


def _limits_text(limits: list[Limit]) -> str:
    """"day:usd=5,month:tokens=100000": what a budget change set, for its audit event."""
    return ",".join(f"{PERIOD_NAMES.get(limit.period, limit.period)}:{limit.unit}={limit.amount:g}"
                    for limit in limits) or "none"


class Reports:
    def __init__(self, catalog: Catalog, usage: UsageRepository | None, budgets: Budgets | None,
                 audit: AuditLog | None = None) -> None:
        self._catalog = catalog
        self._usage = usage
        self._budgets = budgets
        self._audit = audit or AuditLog.discarding()

    def _ledger(self) -> tuple[UsageRepository, Budgets]:
        if self._usage is None or self._budgets is None:
            raise errors.FailedPrecondition("this deployment records no usage (no database)", reason="NO_LEDGER")
        return self._usage, self._budgets

    async def usage(self, identity: Identity, query: UsageQuery) -> UsagePage:
        repo, _ = self._ledger()
        user_id = access.report_subject(identity, query.target_user_id, query.all_users)
        if query.all_users or user_id != identity.user_id:
            self._audit.record(Kind.USAGE_READ_OTHER_USER, subject="" if query.all_users else user_id,
                               details={"all_users": query.all_users})
        models = [self._catalog.require(m, field="models").id for m in query.models]
        size = page_size(query.page_size, default=100, maximum=1000)
        start = timestamp_to_datetime(query.start, "start_time") if query.start is not None else None
        end = timestamp_to_datetime(query.end, "end_time") if query.end is not None else None
        raw_start = start.isoformat() if start else ""
        raw_end = end.isoformat() if end else ""
        key = f"{user_id}|{query.all_users}|{raw_start}|{raw_end}|{sorted(query.group_by)}|{sorted(models)}"
        position = decode_token(query.page_token, key, kinds=(Position.COUNT, Position.TIME))
        # A listing keeps the "now" of its first page, so later pages read the same range.
        if position:
            end = position[1]
        elif end is None:
            end = datetime.now(timezone.utc)
        start = start if start is not None else end - DEFAULT_RANGE
        if start >= end:
            raise errors.InvalidArgument.for_field("start_time", "must be before end_time", "INVALID_RANGE")
        if end - start > MAX_RANGE:
            raise errors.InvalidArgument.for_field("start_time", "the range is at most 366 days", "INVALID_RANGE")
        offset = position[0] if position else 0
        groups, total = await repo.report(user_id, all_users=query.all_users, start=start, end=end,
                                          group_by=list(query.group_by), models=models, limit=size + 1, offset=offset)
        more = len(groups) > size
        return UsagePage(rows=groups[:size], total=total,
                         next_page_token=encode_token(key, [offset + size, end.isoformat()]) if more else "")

    async def set_budget(self, identity: Identity, target_user_id: str, limits: list[Limit]) -> BudgetView:
        _, budgets = self._ledger()
        user_id = access.target_user(identity, target_user_id)

        async def audited(conn) -> None:
            await self._audit.write(conn, Kind.BUDGET_CHANGED, subject=user_id, resource=user_id,
                                    details={"limits": _limits_text(limits)})

        await budgets.set_limits(user_id, limits, admin=identity.has_scope("admin"), on_write=audited)
        return await self._budget(user_id)

    async def get_budget(self, identity: Identity, target_user_id: str) -> BudgetView:
        self._ledger()
        user_id = access.target_user(identity, target_user_id)
        if user_id != identity.user_id:
            self._audit.record(Kind.BUDGET_READ_OTHER_USER, subject=user_id, resource=user_id)
        return await self._budget(user_id)

    async def _budget(self, user_id: str) -> BudgetView:
        repo, budgets = self._ledger()
        statuses = await budgets.status(user_id)
        _, update_time = await repo.get_budget(user_id)
        return BudgetView(user_id, statuses, update_time)
