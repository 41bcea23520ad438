"""GetUsage, SetBudget and GetBudget: protobuf in, ledger and budgets, protobuf out."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from parley.llm.v1 import llm_pb2 as pb
from parley.llm.v1 import llm_service_pb2 as api
from services.llm.budgets import Budgets, Limit
from services.llm.convert import duration, timestamp
from services.llm.repository import UsageGroup, UsageRepository
from services.runtime import errors
from services.runtime.pagination import decode_token, encode_token, page_size

_GROUP_KEYS = {pb.USAGE_GROUP_BY_USER: "user_id", pb.USAGE_GROUP_BY_MODEL: "model", pb.USAGE_GROUP_BY_DAY: "day"}
MAX_RANGE = timedelta(days=366)


def _latency(values: tuple) -> pb.LatencyStats:
    mean, p50, p95, p99, top = (v / 1000 if v is not None else 0.0 for v in values)
    return pb.LatencyStats(mean=duration(mean), p50=duration(p50), p95=duration(p95), p99=duration(p99), max=duration(top))


def _row(g: UsageGroup) -> pb.UsageRow:
    row = pb.UsageRow(
        user_id=g.user_id or "", model=g.model or "", request_count=g.request_count, error_count=g.error_count,
        cache_hit_count=g.cache_hit_count,
        usage=pb.Usage(input_tokens=g.input_tokens, output_tokens=g.output_tokens,
                       cached_input_tokens=g.cached_input_tokens, reasoning_tokens=g.reasoning_tokens,
                       total_tokens=g.input_tokens + g.output_tokens),
        cost_usd=g.cost_usd, latency=_latency(g.latency_ms), time_to_first_token=_latency(g.ttft_ms),
    )
    if g.day is not None:
        row.day_start_time.CopyFrom(timestamp(g.day.replace(tzinfo=timezone.utc) if g.day.tzinfo is None else g.day))
    return row


async def get_usage(repo: UsageRepository, user_id: str, request: api.GetUsageRequest, models: list[str]) -> api.GetUsageResponse:
    group_by = []
    for value in request.group_by:
        if value not in _GROUP_KEYS:
            raise errors.InvalidArgument.for_field("group_by", f"unknown grouping {value}", "INVALID_FIELD")
        if _GROUP_KEYS[value] not in group_by:
            group_by.append(_GROUP_KEYS[value])
    size = page_size(request.page_size, default=100, maximum=1000)
    raw_start = request.start_time.ToJsonString() if request.HasField("start_time") else ""
    raw_end = request.end_time.ToJsonString() if request.HasField("end_time") else ""
    query = f"{user_id}|{request.all_users}|{raw_start}|{raw_end}|{sorted(group_by)}|{sorted(models)}"
    position = decode_token(request.page_token, query)
    # A listing keeps the "now" of its first page, so later pages read the same range.
    if position:
        end = datetime.fromisoformat(position[1])
    elif request.HasField("end_time"):
        end = request.end_time.ToDatetime(tzinfo=timezone.utc)
    else:
        end = datetime.now(timezone.utc)
    start = request.start_time.ToDatetime(tzinfo=timezone.utc) if request.HasField("start_time") else end - timedelta(days=30)
    if start >= end:
        raise errors.InvalidArgument.for_field("start_time", "must be before end_time", "INVALID_RANGE")
    if end - start > MAX_RANGE:
        raise errors.InvalidArgument.for_field("start_time", "the range is at most 366 days", "INVALID_RANGE")
    offset = int(position[0]) if position else 0
    groups, total = await repo.report(user_id, all_users=request.all_users, start=start, end=end, group_by=group_by,
                                      models=models, limit=size + 1, offset=offset)
    more = len(groups) > size
    groups = groups[:size]
    return api.GetUsageResponse(
        rows=[_row(g) for g in groups], total=_row(total),
        next_page_token=encode_token(query, [offset + size, end.isoformat()]) if more else "",
    )


def limits_from_proto(limits) -> list[Limit]:
    found = []
    for i, limit in enumerate(limits):
        which = limit.WhichOneof("amount")
        if which is None:
            raise errors.InvalidArgument.for_field(f"limits[{i}]", "set limit_usd or limit_tokens", "FIELD_REQUIRED")
        found.append(Limit(period=limit.period,
                           limit_usd=limit.limit_usd if which == "limit_usd" else None,
                           limit_tokens=limit.limit_tokens if which == "limit_tokens" else None))
    return found


async def budget(budgets: Budgets, repo: UsageRepository, user_id: str) -> pb.Budget:
    statuses = await budgets.status(user_id)
    _, update_time = await repo.get_budget(user_id)
    result = pb.Budget(user_id=user_id)
    if update_time is not None:
        result.update_time.CopyFrom(timestamp(update_time))
    for s in statuses:
        limit = pb.BudgetLimit(period=s.limit.period, spent_usd=s.spent_usd, spent_tokens=s.spent_tokens,
                               admin_set=s.limit.admin_set)
        if s.limit.limit_usd is not None:
            limit.limit_usd = s.limit.limit_usd
        else:
            limit.limit_tokens = int(s.limit.limit_tokens or 0)
        limit.period_start_time.CopyFrom(timestamp(s.start))
        limit.reset_time.CopyFrom(timestamp(s.reset))
        result.limits.append(limit)
    return result
