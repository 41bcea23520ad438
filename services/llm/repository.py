"""SQL for the usage ledger and budgets, as the service role under forced row-level security.

Every statement runs in a transaction whose `app.user_id` is the user the rows belong to, so
RLS scopes it; the batched ledger writes one transaction per batch and switches the setting
per user inside it. Cross-user reports set `app.all_users` in a read-only transaction after
the caller's admin scope was checked.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from services.llm.usage import UsageRecord
from services.runtime import errors
from services.runtime.db import Database, quote_literal
from services.runtime.identity import USER_ID_PATTERN

SCHEMA = "llm"
ROLE = "parley_llm"
MIGRATIONS = Path(__file__).parent / "migrations"


_INSERT = """
INSERT INTO usage_records (id, user_id, create_time, kind, requested_model, model, provider, status, error_reason,
    input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, cost_usd, latency_ms, ttft_ms, queue_ms,
    cache_hit, streamed, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
ON CONFLICT (id) DO NOTHING
"""
# The same, unless the user's data was deleted after the call began (services/runtime/user_data.py):
# a record buffered, spooled or still in flight at the deletion must not bring the user back.
_INSERT_UNLESS_DELETED = """
INSERT INTO usage_records (id, user_id, create_time, kind, requested_model, model, provider, status, error_reason,
    input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, cost_usd, latency_ms, ttft_ms, queue_ms,
    cache_hit, streamed, metadata)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20::jsonb
WHERE NOT user_deleted_since($2, $3)
ON CONFLICT (id) DO NOTHING
"""


@dataclass
class UsageGroup:
    user_id: str | None
    model: str | None
    day: datetime | None
    request_count: int
    error_count: int
    cache_hit_count: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    reasoning_tokens: int
    cost_usd: float
    latency_ms: tuple[float | None, ...]  # mean, p50, p95, p99, max
    ttft_ms: tuple[float | None, ...]


_AGGREGATES = """
    count(*) AS request_count,
    count(*) FILTER (WHERE status = 'error') AS error_count,
    count(*) FILTER (WHERE cache_hit) AS cache_hit_count,
    coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
    coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
    coalesce(sum(cached_input_tokens), 0)::bigint AS cached_input_tokens,
    coalesce(sum(reasoning_tokens), 0)::bigint AS reasoning_tokens,
    coalesce(sum(cost_usd), 0) AS cost_usd,
    avg(latency_ms) AS l_mean,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS l_p50,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS l_p95,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS l_p99,
    max(latency_ms) AS l_max,
    avg(ttft_ms) FILTER (WHERE streamed) AS t_mean,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) FILTER (WHERE streamed) AS t_p50,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft_ms) FILTER (WHERE streamed) AS t_p95,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY ttft_ms) FILTER (WHERE streamed) AS t_p99,
    max(ttft_ms) FILTER (WHERE streamed) AS t_max
"""


def _group(row: asyncpg.Record, keys: list[str]) -> UsageGroup:
    return UsageGroup(
        user_id=row["user_id"] if "user_id" in keys else None,
        model=row["model"] if "model" in keys else None,
        day=row["day"] if "day" in keys else None,
        request_count=row["request_count"],
        error_count=row["error_count"],
        cache_hit_count=row["cache_hit_count"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cached_input_tokens=row["cached_input_tokens"],
        reasoning_tokens=row["reasoning_tokens"],
        cost_usd=row["cost_usd"],
        latency_ms=(row["l_mean"], row["l_p50"], row["l_p95"], row["l_p99"], row["l_max"]),
        ttft_ms=(row["t_mean"], row["t_p50"], row["t_p95"], row["t_p99"], row["t_max"]),
    )


class UsageRepository:
    def __init__(self, db: Database, *, keep_for_billing: bool = False) -> None:
        self.db = db
        # Usage outlives a deletion of its user's data (records keep arriving as they were).
        self._insert = _INSERT if keep_for_billing else _INSERT_UNLESS_DELETED

    async def write_batch(self, records: list[UsageRecord]) -> None:
        """One transaction for the whole batch, switching the RLS user per user."""
        by_user: dict[str, list[tuple]] = {}
        for r in records:
            if not USER_ID_PATTERN.match(r.user_id):
                continue  # cannot happen for verified identities; never poison the batch
            by_user.setdefault(r.user_id, []).append((
                uuid.UUID(r.id), r.user_id, r.create_time, r.kind, r.requested_model, r.model, r.provider, r.status,
                r.error_reason, r.input_tokens, r.output_tokens, r.cached_input_tokens, r.reasoning_tokens,
                r.cost_usd, r.latency_ms, r.time_to_first_token_ms, r.queue_ms, r.cache_hit, r.streamed, r.metadata,
            ))
        async with self.db.acquire() as conn:
            async with conn.transaction():
                for user_id, rows in by_user.items():
                    await conn.execute(f"SELECT set_config('app.user_id', {quote_literal(user_id)}, true)")
                    await conn.executemany(self._insert, rows)

    async def spending_by_period(self, user_id: str, starts: list[datetime],
                                 exclude_ids: list[str] = ()) -> list[tuple[float, int]]:
        """(USD, total tokens) since each of `starts`, leaving out the records `exclude_ids`
        (the caller counts those itself from the ledger's buffer)."""
        if not starts:
            return []
        async with self.db.transaction(user_id, readonly=True) as conn:
            rows = await conn.fetch(
                "SELECT s.i, coalesce(sum(u.cost_usd), 0) AS usd, "
                "coalesce(sum(u.input_tokens + u.output_tokens), 0)::bigint AS tokens "
                "FROM unnest($1::timestamptz[]) WITH ORDINALITY AS s(start, i) "
                "LEFT JOIN usage_records u ON u.create_time >= s.start AND u.create_time >= $2 "
                "AND u.id <> ALL($3::uuid[]) "
                "GROUP BY s.i ORDER BY s.i",
                starts, min(starts), [uuid.UUID(i) for i in exclude_ids],
            )
        return [(float(r["usd"]), int(r["tokens"])) for r in rows]

    async def get_budget(self, user_id: str) -> tuple[list[dict], datetime | None]:
        async with self.db.transaction(user_id, readonly=True) as conn:
            row = await conn.fetchrow("SELECT limits, update_time FROM budgets")
        return (row["limits"], row["update_time"]) if row else ([], None)

    async def put_budget(self, user_id: str, limits: list[dict], *, on_write=None) -> datetime:
        async with self.db.transaction(user_id) as conn:
            if not limits:
                await conn.execute("DELETE FROM budgets")
                update_time = await conn.fetchval("SELECT now()")
            else:
                update_time = await conn.fetchval(
                    "INSERT INTO budgets (limits) VALUES ($1) "
                    "ON CONFLICT (user_id) DO UPDATE SET limits = excluded.limits, update_time = now() "
                    "RETURNING update_time",
                    limits,
                )
            if on_write is not None:
                await on_write(conn)
            return update_time

    async def report(
        self,
        user_id: str,
        *,
        all_users: bool,
        start: datetime,
        end: datetime,
        group_by: list[str],
        models: list[str],
        limit: int,
        offset: int,
    ) -> tuple[list[UsageGroup], UsageGroup]:
        keys = [k for k in ("user_id", "model", "day") if k in group_by]
        select_keys = [("(date_trunc('day', create_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS day" if k == "day" else k)
                       for k in keys]
        where = "create_time >= $1 AND create_time < $2" + (" AND model = ANY($3)" if models else "")
        params: list = [start, end] + ([models] if models else [])
        try:
            async with self.db.transaction(user_id, readonly=True) as conn:
                if all_users:
                    await conn.execute("SELECT set_config('app.all_users', 'on', true)")
                total = _group(await conn.fetchrow(f"SELECT {_AGGREGATES} FROM usage_records WHERE {where}", *params), [])
                rows: list[asyncpg.Record] = []
                if keys:
                    n = len(params)
                    rows = await conn.fetch(
                        f"SELECT {', '.join(select_keys)}, {_AGGREGATES} FROM usage_records WHERE {where} "
                        f"GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))} "
                        f"ORDER BY {', '.join(str(i + 1) for i in range(len(keys)))} "
                        f"LIMIT ${n + 1} OFFSET ${n + 2}",
                        *params, limit, offset,
                    )
                elif total.request_count and offset == 0:
                    rows = []
        except asyncpg.exceptions.QueryCanceledError:
            raise errors.DeadlineExceeded("the usage report took too long", reason="DATABASE_TIMEOUT") from None
        groups = [_group(r, keys) for r in rows]
        if not keys and total.request_count and offset == 0:
            groups = [total]
        return groups, total
