"""SQL for API keys. User-scoped methods run inside `Database.transaction(user_id)`, so
row-level security confines them to the caller's keys; `find_by_hash` and `touch` go
through the SECURITY DEFINER functions of the migration, the only way across users."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import asyncpg

from services.gateway.models import ApiKey, NewApiKey, RateLimits, StoredKey

_COLUMNS = (
    "id, user_id, name, prefix, scopes, create_time, expire_time, last_used_time, revoke_time, rotate_time, "
    "previous_secret_expire_time, requests_per_minute, concurrent_streams, tokens_per_minute, redact_prompt_pii"
)


def _aware(value: datetime | None) -> datetime | None:
    """asyncpg decodes timestamptz `infinity`/`-infinity` as naive datetime.max/min: rows
    written before expiries were range-checked hold them, and they must still compare."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        prefix=row["prefix"],
        scopes=tuple(row["scopes"]),
        create_time=_aware(row["create_time"]),
        expire_time=_aware(row["expire_time"]),
        last_used_time=_aware(row["last_used_time"]),
        revoke_time=_aware(row["revoke_time"]),
        rotate_time=_aware(row["rotate_time"]),
        previous_secret_expire_time=_aware(row["previous_secret_expire_time"]),
        rate_limits=RateLimits(row["requests_per_minute"], row["concurrent_streams"], row["tokens_per_minute"]),
        redact_prompt_pii=row["redact_prompt_pii"],
    )


class ApiKeyRepository:
    async def insert(self, conn: asyncpg.Connection, key_id: uuid.UUID, new: NewApiKey, prefix: str,
                     secret_hash: bytes) -> ApiKey:
        row = await conn.fetchrow(
            f"""INSERT INTO api_keys (id, name, prefix, secret_hash, scopes, expire_time, requests_per_minute,
                                      concurrent_streams, tokens_per_minute, redact_prompt_pii)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {_COLUMNS}""",
            key_id, new.name, prefix, secret_hash, list(new.scopes), new.expire_time,
            new.rate_limits.requests_per_minute, new.rate_limits.concurrent_streams,
            new.rate_limits.tokens_per_minute, new.redact_prompt_pii,
        )
        return _key(row)

    async def get(self, conn: asyncpg.Connection, key_id: uuid.UUID, *, for_update: bool = False) -> ApiKey | None:
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1" + (" FOR UPDATE" if for_update else ""), key_id
        )
        return _key(row) if row else None

    async def list(self, conn: asyncpg.Connection, *, state: int, now: datetime,
                   after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[ApiKey]:
        conditions, args = [], []
        if state == 1:
            args.append(now)
            conditions.append(f"revoke_time IS NULL AND (expire_time IS NULL OR expire_time > ${len(args)})")
        elif state == 2:
            conditions.append("revoke_time IS NOT NULL")
        elif state == 3:
            args.append(now)
            conditions.append(f"revoke_time IS NULL AND expire_time <= ${len(args)}")
        if after is not None:
            args.extend(after)
            conditions.append(f"(create_time, id) < (${len(args) - 1}, ${len(args)})")
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
        args.append(limit)
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM api_keys {where} ORDER BY create_time DESC, id DESC LIMIT ${len(args)}", *args
        )
        return [_key(r) for r in rows]

    async def revoke(self, conn: asyncpg.Connection, key_id: uuid.UUID) -> ApiKey | None:
        row = await conn.fetchrow(
            f"""UPDATE api_keys SET revoke_time = coalesce(revoke_time, now()),
                       previous_secret_expire_time = least(previous_secret_expire_time, coalesce(revoke_time, now()))
                WHERE id = $1 RETURNING {_COLUMNS}""",
            key_id,
        )
        return _key(row) if row else None

    async def revoke_all(self, conn: asyncpg.Connection) -> list[uuid.UUID]:
        """Revokes every key of the transaction's user that is not revoked yet; their ids."""
        rows = await conn.fetch(
            "UPDATE api_keys SET revoke_time = now(), previous_secret_expire_time = "
            "least(previous_secret_expire_time, now()) WHERE revoke_time IS NULL RETURNING id")
        return [r["id"] for r in rows]

    async def rotate(self, conn: asyncpg.Connection, key_id: uuid.UUID, prefix: str, secret_hash: bytes,
                     previous_expire_time: datetime) -> ApiKey | None:
        row = await conn.fetchrow(
            f"""UPDATE api_keys SET previous_secret_hash = secret_hash, previous_secret_expire_time = $4,
                       secret_hash = $3, prefix = $2, rotate_time = now()
                WHERE id = $1 RETURNING {_COLUMNS}""",
            key_id, prefix, secret_hash, previous_expire_time,
        )
        return _key(row) if row else None

    async def find_by_hash(self, conn: asyncpg.Connection, secret_hash: bytes) -> StoredKey | None:
        row = await conn.fetchrow(f"SELECT {_COLUMNS}, secret_hash, previous_secret_hash FROM find_api_key($1)",
                                  secret_hash)
        if row is None:
            return None
        return StoredKey(_key(row), bytes(row["secret_hash"]),
                         bytes(row["previous_secret_hash"]) if row["previous_secret_hash"] else None)

    async def touch(self, conn: asyncpg.Connection, used: dict[uuid.UUID, datetime]) -> None:
        await conn.execute("SELECT touch_api_keys($1, $2)", list(used), list(used.values()))
