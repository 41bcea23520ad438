"""SQL for assistants, runs, run steps and run events. Like SessionRepository, every method
runs inside a transaction opened by `Database.transaction(user_id)`: row-level security
scopes each statement to the caller, and no query filters on user_id itself."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.runtime.validation import uuid7
from services.sessions.models import SortOrder
from services.sessions.runstore.models import (
    ACTIVE_RUN_STATUSES,
    Assistant,
    BusySessionStrategy,
    Claim,
    ClaimReason,
    FunctionResult,
    Lease,
    ColumnWrites,
    NewRunEvent,
    Run,
    RunEvent,
    RunStatus,
    RunStep,
    RunStepStatus,
    RunStepType,
)

_ASSISTANT_COLUMNS = "id, user_id, body, create_time, update_time"
_RUN_COLUMNS = (
    "seq, id, user_id, session_id, assistant_id, status, busy_session_strategy, expire_time, last_sequence, body, "
    "create_time"
)
_RUN_STEP_COLUMNS = "seq, id, run_id, session_id, assistant_id, type, status, body, create_time"
# "status IN (1, 2, 3, 4)": written out so that the planner matches the partial index
# runs_active_by_session, whose predicate must list the same statuses.
_ACTIVE = f"status IN ({', '.join(str(int(s)) for s in ACTIVE_RUN_STATUSES)})"


def _assistant(row: asyncpg.Record) -> Assistant:
    return Assistant(id=row["id"], user_id=row["user_id"], body=row["body"], create_time=row["create_time"],
                     update_time=row["update_time"])


def _run(row: asyncpg.Record) -> Run:
    return Run(
        id=row["id"],
        user_id=row["user_id"],
        session_id=row["session_id"],
        assistant_id=row["assistant_id"],
        status=RunStatus(row["status"]),
        busy_session_strategy=BusySessionStrategy(row["busy_session_strategy"]),
        expire_time=row["expire_time"],
        last_sequence=row["last_sequence"],
        body=row["body"],
        create_time=row["create_time"],
    )


def _run_step(row: asyncpg.Record) -> RunStep:
    return RunStep(
        id=row["id"],
        run_id=row["run_id"],
        session_id=row["session_id"],
        assistant_id=row["assistant_id"],
        type=RunStepType(row["type"]),
        status=RunStepStatus(row["status"]),
        body=row["body"],
        create_time=row["create_time"],
    )


def _updates(writes: ColumnWrites, args: list[Any]) -> list[str]:
    """SET clauses for `writes`, appending their values to `args`. Column names come from the
    domain's fixed lists, never from requests."""
    sets = []
    for column, value in writes.columns.items():
        args.append(value)
        sets.append(f"{column} = ${len(args)}")
    if writes.set_body or writes.clear_body:
        args.extend([list(writes.clear_body), writes.set_body])
        sets.append(f"body = (body - ${len(args) - 1}::text[]) || ${len(args)}::jsonb")
    return sets


class RunStoreRepository:
    """Stateless: every method takes the connection of the caller's transaction."""

    # -- assistants -------------------------------------------------------------------------

    async def insert_assistant(self, conn: asyncpg.Connection, body: dict[str, Any]) -> Assistant:
        row = await conn.fetchrow(
            f"INSERT INTO assistants (id, body) VALUES ($1, $2) RETURNING {_ASSISTANT_COLUMNS}", uuid7(), body
        )
        return _assistant(row)

    async def get_assistant(self, conn: asyncpg.Connection, assistant_id: uuid.UUID) -> Assistant | None:
        row = await conn.fetchrow(f"SELECT {_ASSISTANT_COLUMNS} FROM assistants WHERE id = $1", assistant_id)
        return _assistant(row) if row else None

    async def assistant_exists(self, conn: asyncpg.Connection, assistant_id: uuid.UUID) -> bool:
        return await conn.fetchval("SELECT true FROM assistants WHERE id = $1", assistant_id) is not None

    async def list_assistants(
        self, conn: asyncpg.Connection, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Assistant]:
        if after is None:
            rows = await conn.fetch(
                f"SELECT {_ASSISTANT_COLUMNS} FROM assistants ORDER BY create_time DESC, id DESC LIMIT $1", limit
            )
        else:
            rows = await conn.fetch(
                f"SELECT {_ASSISTANT_COLUMNS} FROM assistants WHERE (create_time, id) < ($1, $2) "
                "ORDER BY create_time DESC, id DESC LIMIT $3",
                *after, limit,
            )
        return [_assistant(r) for r in rows]

    async def update_assistant(
        self, conn: asyncpg.Connection, assistant_id: uuid.UUID, writes: ColumnWrites
    ) -> Assistant | None:
        args: list[Any] = [assistant_id]
        sets = ["update_time = now()", *_updates(writes, args)]
        row = await conn.fetchrow(
            f"UPDATE assistants SET {', '.join(sets)} WHERE id = $1 RETURNING {_ASSISTANT_COLUMNS}", *args
        )
        return _assistant(row) if row else None

    async def delete_assistant(self, conn: asyncpg.Connection, assistant_id: uuid.UUID) -> bool:
        return await conn.fetchval("DELETE FROM assistants WHERE id = $1 RETURNING true", assistant_id) is not None

    # -- sessions, as runs see them ---------------------------------------------------------

    async def lock_session(self, conn: asyncpg.Connection, session_id: uuid.UUID) -> int | None:
        """Locks the session row until the transaction ends and returns its status (None if not
        visible). NO KEY UPDATE: it excludes other run creators and message appends, but not
        the key-share locks that foreign-key checks take."""
        return await conn.fetchval("SELECT status FROM sessions WHERE id = $1 FOR NO KEY UPDATE", session_id)

    async def session_exists(self, conn: asyncpg.Connection, session_id: uuid.UUID) -> bool:
        return await conn.fetchval("SELECT true FROM sessions WHERE id = $1", session_id) is not None

    # -- runs -------------------------------------------------------------------------------

    async def insert_run(
        self,
        conn: asyncpg.Connection,
        *,
        session_id: uuid.UUID,
        assistant_id: uuid.UUID,
        strategy: BusySessionStrategy,
        expire_time: datetime | None,
        body: dict[str, Any],
    ) -> Run:
        row = await conn.fetchrow(
            f"INSERT INTO runs (id, session_id, assistant_id, status, busy_session_strategy, expire_time, body) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_RUN_COLUMNS}",
            uuid7(), session_id, assistant_id, RunStatus.QUEUED, strategy, expire_time, body,
        )
        return _run(row)

    async def get_run(self, conn: asyncpg.Connection, run_id: uuid.UUID) -> Run | None:
        row = await conn.fetchrow(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = $1", run_id)
        return _run(row) if row else None

    async def run_exists(self, conn: asyncpg.Connection, run_id: uuid.UUID) -> bool:
        return await conn.fetchval("SELECT true FROM runs WHERE id = $1", run_id) is not None

    async def get_last_sequence(self, conn: asyncpg.Connection, run_id: uuid.UUID) -> int | None:
        return await conn.fetchval("SELECT last_sequence FROM runs WHERE id = $1", run_id)

    async def lock_run(self, conn: asyncpg.Connection, run_id: uuid.UUID) -> tuple[int, int] | None:
        """Locks the run row until the transaction ends; (status, last_sequence), or None if not
        visible. A concurrent writer waits here and then reads what the first one committed."""
        row = await conn.fetchrow("SELECT status, last_sequence FROM runs WHERE id = $1 FOR NO KEY UPDATE", run_id)
        return (row["status"], row["last_sequence"]) if row else None

    async def get_active_run(self, conn: asyncpg.Connection, session_id: uuid.UUID) -> Run | None:
        row = await conn.fetchrow(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE session_id = $1 AND {_ACTIVE} ORDER BY seq LIMIT 1", session_id
        )
        return _run(row) if row else None

    async def list_runs(
        self,
        conn: asyncpg.Connection,
        session_id: uuid.UUID,
        *,
        statuses: list[int],
        order: SortOrder,
        after_seq: int | None,
        limit: int,
    ) -> list[tuple[int, Run]]:
        comparison, direction = (">", "ASC") if order == SortOrder.ASCENDING else ("<", "DESC")
        args: list[Any] = [session_id, limit]
        conditions = ["session_id = $1"]
        if statuses:
            args.append(statuses)
            conditions.append(f"status = ANY(${len(args)}::smallint[])")
        if after_seq is not None:
            args.append(after_seq)
            conditions.append(f"seq {comparison} ${len(args)}")
        rows = await conn.fetch(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE {' AND '.join(conditions)} ORDER BY seq {direction} LIMIT $2", *args
        )
        return [(r["seq"], _run(r)) for r in rows]

    async def update_run(
        self, conn: asyncpg.Connection, run_id: uuid.UUID, writes: ColumnWrites, *, last_sequence: int,
        lease: Lease | None = None, events: Sequence[NewRunEvent] = (),
    ) -> Run:
        """`lease`: taken (with an owner) or released (without); `events` (already checked to
        follow the run's last_sequence, under its row lock) inserted — all in one statement."""
        args: list[Any] = [run_id, last_sequence]
        sets = ["update_time = now()", "last_sequence = $2", *_updates(writes, args)]
        if lease is not None and lease.owner:
            args += [lease.owner, timedelta(seconds=lease.seconds)]
            sets += [f"lease_owner = ${len(args) - 1}", f"lease_expire_time = now() + ${len(args)}"]
        elif lease is not None:
            sets += ["lease_owner = NULL", "lease_expire_time = NULL"]
        inserting = ""
        if events:
            args += [[e.sequence for e in events], [e.create_time for e in events], [json.dumps(e.body) for e in events]]
            n = len(args)
            inserting = f"""WITH inserted AS (
                INSERT INTO run_events (run_id, sequence, create_time, body)
                SELECT $1, e.sequence, coalesce(e.create_time, now()), e.body::jsonb
                FROM unnest(${n - 2}::bigint[], ${n - 1}::timestamptz[], ${n}::text[]) AS e(sequence, create_time, body)
            ) """
        row = await conn.fetchrow(
            f"{inserting}UPDATE runs SET {', '.join(sets)} WHERE id = $1 RETURNING {_RUN_COLUMNS}", *args)
        return _run(row)

    async def set_last_sequence(self, conn: asyncpg.Connection, run_id: uuid.UUID, last_sequence: int) -> None:
        await conn.execute(
            "UPDATE runs SET last_sequence = $2, update_time = now() WHERE id = $1", run_id, last_sequence
        )

    # -- run steps --------------------------------------------------------------------------

    async def insert_run_step(
        self,
        conn: asyncpg.Connection,
        run_id: uuid.UUID,
        *,
        step_type: RunStepType,
        status: RunStepStatus,
        body: dict[str, Any],
    ) -> RunStep | None:
        """None if the run is not visible. The run row lock orders a run's steps, so seq grows
        in commit order within a run."""
        row = await conn.fetchrow(
            f"""
            WITH r AS (SELECT id, session_id, assistant_id FROM runs WHERE id = $1 FOR NO KEY UPDATE)
            INSERT INTO run_steps (id, run_id, session_id, assistant_id, type, status, body)
            SELECT $2, r.id, r.session_id, r.assistant_id, $3, $4, $5 FROM r
            RETURNING {_RUN_STEP_COLUMNS}
            """,
            run_id, uuid7(), step_type, status, body,
        )
        return _run_step(row) if row else None

    async def update_run_step(
        self, conn: asyncpg.Connection, step_id: uuid.UUID, writes: ColumnWrites
    ) -> RunStep | None:
        args: list[Any] = [step_id]
        sets = _updates(writes, args)
        row = await conn.fetchrow(
            f"UPDATE run_steps SET {', '.join(sets)} WHERE id = $1 RETURNING {_RUN_STEP_COLUMNS}", *args
        )
        return _run_step(row) if row else None

    async def list_run_steps(
        self, conn: asyncpg.Connection, run_id: uuid.UUID, *, after_seq: int | None, limit: int
    ) -> list[tuple[int, RunStep]]:
        rows = await conn.fetch(
            f"SELECT {_RUN_STEP_COLUMNS} FROM run_steps WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            run_id, after_seq if after_seq is not None else 0, limit,
        )
        return [(r["seq"], _run_step(r)) for r in rows]

    # -- run events -------------------------------------------------------------------------

    async def insert_events(self, conn: asyncpg.Connection, run_id: uuid.UUID, events: list[NewRunEvent]) -> None:
        await conn.execute(
            """
            INSERT INTO run_events (run_id, sequence, create_time, body)
            SELECT $1, e.sequence, coalesce(e.create_time, now()), e.body::jsonb
            FROM unnest($2::bigint[], $3::timestamptz[], $4::text[]) AS e(sequence, create_time, body)
            """,
            run_id,
            [e.sequence for e in events],
            [e.create_time for e in events],
            [json.dumps(e.body) for e in events],
        )

    async def append_events(self, conn: asyncpg.Connection, run_id: uuid.UUID, events: list[NewRunEvent]) -> bool:
        """Inserts consecutive events and moves the run's last_sequence to the last of them, in
        one statement, if it is just before the first (compare-and-set: the UPDATE's row lock
        orders concurrent appenders, and the second re-checks against the first's commit).
        False, writing nothing, if it is not or the run is not visible."""
        moved = await conn.fetchval(
            """
            WITH moved AS (
                UPDATE runs SET last_sequence = $5, update_time = now()
                WHERE id = $1 AND last_sequence = $6
                RETURNING id
            ), inserted AS (
                INSERT INTO run_events (run_id, sequence, create_time, body)
                SELECT moved.id, e.sequence, coalesce(e.create_time, now()), e.body::jsonb
                FROM moved, unnest($2::bigint[], $3::timestamptz[], $4::text[]) AS e(sequence, create_time, body)
            )
            SELECT count(*) FROM moved
            """,
            run_id,
            [e.sequence for e in events],
            [e.create_time for e in events],
            [json.dumps(e.body) for e in events],
            events[-1].sequence,
            events[0].sequence - 1,
        )
        return moved == 1

    async def list_events(
        self, conn: asyncpg.Connection, run_id: uuid.UUID, *, after_sequence: int, limit: int
    ) -> list[RunEvent]:
        # A run's sequences have no gaps, so the page is exactly the next `limit` numbers: the
        # bounded range keeps the read O(page) whatever plan row-level security leads to.
        rows = await conn.fetch(
            "SELECT run_id, sequence, create_time, body FROM run_events "
            "WHERE run_id = $1 AND sequence > $2 AND sequence <= $2 + $3 ORDER BY sequence LIMIT $3",
            run_id, after_sequence, limit,
        )
        return [RunEvent(run_id=r["run_id"], sequence=r["sequence"], create_time=r["create_time"], body=r["body"])
                for r in rows]

    async def is_session_head(self, conn: asyncpg.Connection, run_id: uuid.UUID) -> bool:
        """No earlier run of the run's session is unended."""
        return await conn.fetchval(
            f"""
            SELECT NOT EXISTS (
                SELECT 1 FROM runs e JOIN runs r ON e.session_id = r.session_id
                WHERE r.id = $1 AND e.seq < r.seq AND e.{_ACTIVE})
            """, run_id)

    async def get_status(self, conn: asyncpg.Connection, run_id: uuid.UUID) -> tuple[int, int] | None:
        row = await conn.fetchrow("SELECT status, last_sequence FROM runs WHERE id = $1", run_id)
        return (row["status"], row["last_sequence"]) if row else None

    # -- the queue --------------------------------------------------------------------------

    async def claim_runs(self, conn: asyncpg.Connection, lease: Lease, limit: int) -> list[Claim]:
        rows = await conn.fetch(
            "SELECT * FROM claim_runs($1, $2, $3)", lease.owner, timedelta(seconds=lease.seconds), limit
        )
        claims = [Claim(reason=ClaimReason(r["reason"]), run=_run(r)) for r in rows]
        return sorted(claims, key=lambda c: c.run.create_time)

    async def renew_leases(self, conn: asyncpg.Connection, lease: Lease, run_ids: list[uuid.UUID]) -> list[uuid.UUID]:
        rows = await conn.fetch(
            "SELECT renew_run_leases AS id FROM renew_run_leases($1, $2, $3::uuid[])",
            lease.owner, timedelta(seconds=lease.seconds), run_ids,
        )
        return [r["id"] for r in rows]

    # -- function result cache --------------------------------------------------------------

    async def lookup_function_results(
        self, conn: asyncpg.Connection, keys: list[tuple[str, bytes]]
    ) -> list[FunctionResult]:
        rows = await conn.fetch(
            """
            SELECT f.name, f.arguments, f.output, f.expire_time
            FROM function_results f
            JOIN unnest($1::text[], $2::bytea[]) AS k(name, digest)
              ON f.name = k.name AND f.arguments_sha256 = k.digest
            WHERE f.expire_time > now()
            """,
            [k[0] for k in keys], [k[1] for k in keys],
        )
        return [FunctionResult(name=r["name"], arguments=r["arguments"], output=r["output"],
                               expire_time=r["expire_time"]) for r in rows]

    async def store_function_results(
        self, conn: asyncpg.Connection, rows: list[tuple[str, bytes, str, str, datetime]]
    ) -> None:
        await conn.executemany(
            """
            INSERT INTO function_results (name, arguments_sha256, arguments, output, expire_time)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (user_id, name, arguments_sha256)
            DO UPDATE SET arguments = EXCLUDED.arguments, output = EXCLUDED.output,
                          expire_time = EXCLUDED.expire_time, create_time = now()
            """,
            rows,
        )
        # Expired entries of this user go as new ones arrive: the table stays the size of
        # what is live.
        await conn.execute("DELETE FROM function_results WHERE expire_time < now() - interval '1 hour'")
