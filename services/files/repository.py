"""SQL for files, their text, vector stores, store entries and chunks. Every method runs
inside a transaction opened by `Database.transaction(user_id)`, so row-level security scopes
each statement to the caller; no query here filters on user_id itself, and none needs to.

pgvector lives in the `public` schema while the service's search_path is its own schema,
so its operator is spelled `OPERATOR(public.<=>)` and its type `public.vector`.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from services.files.chunking import Chunk
from services.files.filters import compile_filter
from services.files.models import (
    Chunking,
    ChunkingType,
    EntryStatus,
    ErrorCode,
    File,
    FileCounts,
    FilePurpose,
    FileStatus,
    RankingMode,
    StorePatch,
    StoreStatus,
    VectorStore,
    VectorStoreFile,
)
from services.runtime.telemetry import current_trace_parent

COSINE = "OPERATOR(public.<=>)"
_FILE_COLUMNS = (
    "id, user_id, filename, size_bytes, media_type, purpose, sha256, status, status_reason, error_code, attributes, "
    "create_time, update_time, page_count, text_chars, storage_key"
)


def _encode_vector(values: Sequence[float]) -> bytes:
    return struct.pack(f">HH{len(values)}f", len(values), 0, *values)


def _decode_vector(data: bytes) -> list[float]:
    dims, _ = struct.unpack_from(">HH", data)
    return list(struct.unpack_from(f">{dims}f", data, 4))


async def vector_codec(conn: asyncpg.Connection) -> None:
    """Pool hook: pgvector's `vector` in its binary format (jsonb comes from the runtime's)."""
    await conn.set_type_codec("vector", encoder=_encode_vector, decoder=_decode_vector, schema="public", format="binary")


def _file(row: asyncpg.Record) -> File:
    return File(
        id=row["id"], user_id=row["user_id"], filename=row["filename"], size_bytes=row["size_bytes"],
        media_type=row["media_type"], purpose=FilePurpose(row["purpose"]), sha256=row["sha256"],
        status=FileStatus(row["status"]), status_reason=row["status_reason"], error_code=ErrorCode(row["error_code"]),
        attributes=row["attributes"], create_time=row["create_time"], update_time=row["update_time"],
        page_count=row["page_count"], text_chars=row["text_chars"], storage_key=row["storage_key"],
    )


_STORE_SELECT = """
    SELECT s.id, s.user_id, s.name, s.metadata, s.expires_after_days, s.last_active_time, s.create_time, s.update_time,
           s.chunking_type, s.chunk_max_tokens, s.chunk_overlap_tokens, s.embedding_model, s.embedding_dimensions,
           s.embedding_window, (s.expired OR (s.expires_after_days IS NOT NULL
                          AND s.last_active_time + make_interval(days => s.expires_after_days) < now())) AS is_expired,
           coalesce(c.in_progress, 0) AS in_progress, coalesce(c.completed, 0) AS completed,
           coalesce(c.failed, 0) AS failed, coalesce(c.cancelled, 0) AS cancelled, coalesce(c.usage, 0) AS usage
    FROM vector_stores s
    LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE e.status = 1) AS in_progress, count(*) FILTER (WHERE e.status = 2) AS completed,
               count(*) FILTER (WHERE e.status = 3) AS failed, count(*) FILTER (WHERE e.status = 4) AS cancelled,
               sum(e.usage_bytes) AS usage
        FROM vector_store_files e WHERE e.vector_store_id = s.id
    ) c ON true
"""


def _store(row: asyncpg.Record) -> VectorStore:
    counts = FileCounts(in_progress=row["in_progress"], completed=row["completed"], failed=row["failed"],
                        cancelled=row["cancelled"])
    days = row["expires_after_days"]
    if row["is_expired"]:
        status = StoreStatus.EXPIRED
    else:
        status = StoreStatus.IN_PROGRESS if counts.in_progress else StoreStatus.COMPLETED
    from datetime import timedelta

    return VectorStore(
        id=row["id"], user_id=row["user_id"], name=row["name"], status=status, file_counts=counts,
        usage_bytes=int(row["usage"]), expires_after_days=days,
        expire_time=row["last_active_time"] + timedelta(days=days) if days else None,
        last_active_time=row["last_active_time"], metadata=row["metadata"], create_time=row["create_time"],
        update_time=row["update_time"], embedding_model=row["embedding_model"],
        embedding_dimensions=row["embedding_dimensions"], embedding_window=row["embedding_window"],
        chunking=Chunking(ChunkingType(row["chunking_type"]), row["chunk_max_tokens"], row["chunk_overlap_tokens"]),
    )


_ENTRY_SELECT = """
    SELECT e.entry_id, e.vector_store_id, e.file_id, f.filename, e.status, e.error_code, e.error_message,
           e.chunking_type, e.chunk_max_tokens, e.chunk_overlap_tokens, e.attributes, e.chunk_count, e.usage_bytes,
           e.create_time, e.update_time
    FROM vector_store_files e JOIN files f ON f.id = e.file_id
"""


def _entry(row: asyncpg.Record) -> VectorStoreFile:
    return VectorStoreFile(
        file_id=row["file_id"], vector_store_id=row["vector_store_id"], filename=row["filename"],
        status=EntryStatus(row["status"]), error_code=ErrorCode(row["error_code"]), error_message=row["error_message"],
        chunking=Chunking(ChunkingType(row["chunking_type"]), row["chunk_max_tokens"], row["chunk_overlap_tokens"]),
        usage_bytes=row["usage_bytes"], attributes=row["attributes"], chunk_count=row["chunk_count"],
        create_time=row["create_time"], update_time=row["update_time"],
    )


def _keyset(after: tuple[datetime, uuid.UUID] | None, args: list, time_col: str, id_col: str) -> str:
    if after is None:
        return ""
    args.extend(after)
    return f"({time_col}, {id_col}) < (${len(args) - 1}, ${len(args)})"


class FileRepository:
    """Stateless: every method takes the connection of the caller's transaction."""

    # -- files ------------------------------------------------------------------------------

    async def insert_file(self, conn, *, file_id: uuid.UUID, filename: str, size: int, media_type: str,
                          declared: str, purpose: int, sha256: str, status: FileStatus, attributes: dict,
                          storage_key: str) -> File:
        row = await conn.fetchrow(
            f"INSERT INTO files (id, filename, size_bytes, media_type, declared_media_type, purpose, sha256, status, "
            f"attributes, storage_key, trace_parent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
            f"RETURNING {_FILE_COLUMNS}",
            file_id, filename, size, media_type, declared, purpose, sha256, int(status), attributes, storage_key,
            current_trace_parent(),  # the processing continues the upload's trace
        )
        return _file(row)

    async def get_file(self, conn, file_id: uuid.UUID, *, for_update: bool = False) -> File | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await conn.fetchrow(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = $1{lock}", file_id)
        return _file(row) if row else None

    async def get_files(self, conn, file_ids: list[uuid.UUID]) -> list[File]:
        rows = await conn.fetch(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ANY($1::uuid[])", file_ids)
        return [_file(r) for r in rows]

    async def list_files(self, conn, *, purpose: int, after, limit: int) -> list[File]:
        args: list = []
        conditions = []
        if purpose:
            args.append(purpose)
            conditions.append(f"purpose = ${len(args)}")
        keyset = _keyset(after, args, "create_time", "id")
        if keyset:
            conditions.append(keyset)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        args.append(limit)
        rows = await conn.fetch(
            f"SELECT {_FILE_COLUMNS} FROM files {where} ORDER BY create_time DESC, id DESC LIMIT ${len(args)}", *args
        )
        return [_file(r) for r in rows]

    async def delete_file(self, conn, file_id: uuid.UUID) -> str | None:
        """Deletes the row (its text, store entries and chunks cascade); its storage key."""
        return await conn.fetchval("DELETE FROM files WHERE id = $1 RETURNING storage_key", file_id)

    async def start_processing(self, conn, file_id: uuid.UUID) -> File | None:
        row = await conn.fetchrow(
            f"UPDATE files SET status = {FileStatus.PROCESSING.value}, update_time = now() "
            f"WHERE id = $1 AND status IN (1, 2) RETURNING {_FILE_COLUMNS}",
            file_id,
        )
        return _file(row) if row else None

    async def finish_processing(self, conn, file_id: uuid.UUID, *, text: str | None, page_starts: Sequence[int],
                                error: tuple[ErrorCode, str] | None) -> bool:
        if error is not None:
            code, reason = error
            done = await conn.fetchval(
                "UPDATE files SET status = 4, error_code = $2, status_reason = $3, update_time = now(), "
                "lease_owner = NULL, lease_until = NULL WHERE id = $1 AND status = 2 RETURNING true",
                file_id, int(code), reason,
            )
            return bool(done)
        done = await conn.fetchval(
            "UPDATE files SET status = 3, status_reason = '', page_count = $2, text_chars = $3, update_time = now(), "
            "lease_owner = NULL, lease_until = NULL WHERE id = $1 AND status = 2 RETURNING true",
            file_id, len(page_starts), len(text or ""),
        )
        if done and text is not None:
            await conn.execute(
                "INSERT INTO file_texts (file_id, text, page_starts) VALUES ($1, $2, $3) "
                "ON CONFLICT (file_id) DO UPDATE SET text = EXCLUDED.text, page_starts = EXCLUDED.page_starts",
                file_id, text, list(page_starts),
            )
        return bool(done)

    async def get_file_text(self, conn, file_id: uuid.UUID) -> tuple[str, list[int]] | None:
        row = await conn.fetchrow("SELECT text, page_starts FROM file_texts WHERE file_id = $1", file_id)
        return (row["text"], list(row["page_starts"])) if row else None

    # -- vector stores ----------------------------------------------------------------------

    async def insert_store(self, conn, *, store_id: uuid.UUID, name: str, metadata: dict, expires_after_days,
                           chunking: Chunking, model: str, dimensions: int, window: int) -> None:
        await conn.execute(
            "INSERT INTO vector_stores (id, name, metadata, expires_after_days, chunking_type, chunk_max_tokens, "
            "chunk_overlap_tokens, embedding_model, embedding_dimensions, embedding_window) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            store_id, name, metadata, expires_after_days, int(chunking.type), chunking.max_tokens,
            chunking.overlap_tokens, model, dimensions, window,
        )

    async def get_store(self, conn, store_id: uuid.UUID) -> VectorStore | None:
        row = await conn.fetchrow(f"{_STORE_SELECT} WHERE s.id = $1", store_id)
        return _store(row) if row else None

    async def get_stores(self, conn, store_ids: list[uuid.UUID]) -> list[VectorStore]:
        rows = await conn.fetch(f"{_STORE_SELECT} WHERE s.id = ANY($1::uuid[])", store_ids)
        return [_store(r) for r in rows]

    async def list_stores(self, conn, *, after, limit: int) -> list[VectorStore]:
        args: list = []
        keyset = _keyset(after, args, "s.create_time", "s.id")
        where = f"WHERE {keyset}" if keyset else ""
        args.append(limit)
        rows = await conn.fetch(f"{_STORE_SELECT} {where} ORDER BY s.create_time DESC, s.id DESC LIMIT ${len(args)}",
                                *args)
        return [_store(r) for r in rows]

    async def update_store(self, conn, store_id: uuid.UUID, patch: StorePatch) -> bool:
        sets, args = ["update_time = now()", "last_active_time = now()"], [store_id]
        if patch.name is not None:
            args.append(patch.name)
            sets.append(f"name = ${len(args)}")
        if patch.metadata is not None:
            args.append(patch.metadata)
            sets.append(f"metadata = ${len(args)}")
        if patch.set_expiration:
            args.append(patch.expires_after_days)
            sets.append(f"expires_after_days = ${len(args)}")
        return bool(await conn.fetchval(f"UPDATE vector_stores SET {', '.join(sets)} WHERE id = $1 RETURNING true", *args))

    async def delete_store(self, conn, store_id: uuid.UUID) -> bool:
        return await conn.fetchval("DELETE FROM vector_stores WHERE id = $1 RETURNING true", store_id) is not None

    async def touch_stores(self, conn, store_ids: list[uuid.UUID], *, throttle_seconds: float = 0.0) -> None:
        await conn.execute(
            "UPDATE vector_stores SET last_active_time = now() WHERE id = ANY($1::uuid[]) AND NOT expired "
            "AND last_active_time < now() - make_interval(secs => $2)",
            store_ids, throttle_seconds,
        )

    async def expire_store(self, conn, store_id: uuid.UUID) -> None:
        """Marks a store that is past its expiration as expired and deletes its chunks."""
        await conn.execute("UPDATE vector_stores SET expired = true, update_time = now() WHERE id = $1 AND NOT expired",
                           store_id)
        await conn.execute(
            "DELETE FROM chunks c USING vector_store_files e WHERE c.entry_id = e.entry_id AND e.vector_store_id = $1",
            store_id,
        )

    # -- store entries ----------------------------------------------------------------------

    async def insert_entries(self, conn, store_id: uuid.UUID, entries: list[tuple[uuid.UUID, dict]],
                             chunking: Chunking) -> int:
        """Adds files to a store; the number actually added (existing ones are left alone)."""
        result = await conn.fetch(
            "INSERT INTO vector_store_files (vector_store_id, file_id, status, chunking_type, chunk_max_tokens, "
            "chunk_overlap_tokens, attributes, trace_parent) "
            "SELECT $1, f, 1, $2, $3, $4, a, $7 FROM unnest($5::uuid[], $6::jsonb[]) AS t(f, a) "
            "ON CONFLICT (vector_store_id, file_id) DO NOTHING RETURNING entry_id",
            store_id, int(chunking.type), chunking.max_tokens, chunking.overlap_tokens,
            [f for f, _ in entries], [a for _, a in entries],
            current_trace_parent(),  # chunking and embedding continue the adding call's trace
        )
        await conn.execute("UPDATE vector_stores SET last_active_time = now(), update_time = now() WHERE id = $1", store_id)
        return len(result)

    async def get_entry(self, conn, store_id: uuid.UUID, file_id: uuid.UUID) -> VectorStoreFile | None:
        row = await conn.fetchrow(f"{_ENTRY_SELECT} WHERE e.vector_store_id = $1 AND e.file_id = $2", store_id, file_id)
        return _entry(row) if row else None

    async def list_entries(self, conn, store_id: uuid.UUID, *, status: int, after, limit: int) -> list[VectorStoreFile]:
        args: list = [store_id]
        conditions = ["e.vector_store_id = $1"]
        if status:
            args.append(status)
            conditions.append(f"e.status = ${len(args)}")
        keyset = _keyset(after, args, "e.create_time", "e.file_id")
        if keyset:
            conditions.append(keyset)
        args.append(limit)
        rows = await conn.fetch(
            f"{_ENTRY_SELECT} WHERE {' AND '.join(conditions)} ORDER BY e.create_time DESC, e.file_id DESC "
            f"LIMIT ${len(args)}",
            *args,
        )
        return [_entry(r) for r in rows]

    async def delete_entry(self, conn, store_id: uuid.UUID, file_id: uuid.UUID) -> bool:
        deleted = await conn.fetchval(
            "DELETE FROM vector_store_files WHERE vector_store_id = $1 AND file_id = $2 RETURNING true", store_id, file_id
        )
        if deleted:
            await conn.execute("UPDATE vector_stores SET last_active_time = now(), update_time = now() WHERE id = $1",
                               store_id)
        return bool(deleted)

    async def entry_work(self, conn, store_id: uuid.UUID, file_id: uuid.UUID) -> asyncpg.Record | None:
        """What processing an entry needs: its key, sizes, the store's model, the file's state."""
        return await conn.fetchrow(
            "SELECT e.entry_id, e.status, e.chunk_max_tokens, e.chunk_overlap_tokens, s.embedding_model, "
            "s.embedding_dimensions, (s.expired OR (s.expires_after_days IS NOT NULL AND s.last_active_time "
            "  + make_interval(days => s.expires_after_days) < now())) AS is_expired, "
            "f.status AS file_status, f.error_code AS file_error_code, f.status_reason AS file_reason, f.media_type "
            "FROM vector_store_files e JOIN vector_stores s ON s.id = e.vector_store_id JOIN files f ON f.id = e.file_id "
            "WHERE e.vector_store_id = $1 AND e.file_id = $2",
            store_id, file_id,
        )

    async def fail_entry(self, conn, entry_id: int, code: ErrorCode, message: str) -> None:
        await conn.execute(
            "UPDATE vector_store_files SET status = 3, error_code = $2, error_message = $3, update_time = now(), "
            "lease_owner = NULL, lease_until = NULL WHERE entry_id = $1 AND status = 1",
            entry_id, int(code), message,
        )

    async def complete_entry(self, conn, entry_id: int, chunks: list[Chunk], vectors: list[list[float]],
                             ts_config: str) -> bool:
        """Replaces the entry's chunks and marks it completed, in the caller's transaction.
        False if the entry is gone or no longer in progress (removed meanwhile)."""
        status = await conn.fetchval("SELECT status FROM vector_store_files WHERE entry_id = $1 FOR UPDATE", entry_id)
        if status != EntryStatus.IN_PROGRESS:
            return False
        await conn.execute("DELETE FROM chunks WHERE entry_id = $1", entry_id)
        dims = len(vectors[0]) if vectors else 0
        if chunks:
            await conn.executemany(
                "INSERT INTO chunks (entry_id, chunk_index, page_number, text, ts_config, dims, embedding) "
                "VALUES ($1, $2, $3, $4, $5::text::regconfig, $6, $7::public.vector)",
                [(entry_id, c.index, c.page_number, c.text, ts_config, dims, v) for c, v in zip(chunks, vectors)],
            )
        usage = await conn.fetchval(
            "SELECT coalesce(sum(pg_column_size(text) + pg_column_size(tsv) + pg_column_size(embedding) + 64), 0) "
            "FROM chunks WHERE entry_id = $1",
            entry_id,
        )
        await conn.execute(
            "UPDATE vector_store_files SET status = 2, error_code = 0, error_message = '', chunk_count = $2, "
            "usage_bytes = $3, update_time = now(), lease_owner = NULL, lease_until = NULL WHERE entry_id = $1",
            entry_id, len(chunks), int(usage),
        )
        return True

    # -- search -----------------------------------------------------------------------------

    async def searchable_entries(self, conn, store_ids: list[uuid.UUID], filter_node) -> list[asyncpg.Record]:
        """Completed entries of the stores whose attributes pass the filter."""
        args: list = [store_ids]
        extra = f" AND {compile_filter(filter_node, 'e.attributes', args)}" if filter_node is not None else ""
        return await conn.fetch(
            f"SELECT e.entry_id, e.chunk_count FROM vector_store_files e "
            f"WHERE e.vector_store_id = ANY($1::uuid[]) AND e.status = 2{extra}",
            *args,
        )

    async def search(self, conn, *, entry_ids: list[int], mode: RankingMode, dims: int, vector: list[float] | None,
                     exact: bool, ef_search: int, query: str, ts_config: str, candidates: int, vector_weight: float,
                     text_weight: float, rrf_k: int, limit: int, threshold: float | None,
                     text_max_matches: int = 5000) -> list[asyncpg.Record]:
        """One statement: the vector and/or full-text candidates, fused by weighted reciprocal
        rank fusion, thresholded, with the chunks' text, file and attributes."""
        args: list = [entry_ids, candidates]
        ctes = []
        if mode in (RankingMode.HYBRID, RankingMode.VECTOR):
            if not exact:
                await conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
            args.append(vector)
            q = f"${len(args)}::public.vector({dims})"
            distance = f"(c.embedding::public.vector({dims}) {COSINE} {q})"
            # "+ 0" keeps the planner off the HNSW index: an exact scan of a small candidate set.
            order = f"{distance} + 0" if exact else distance
            ctes.append(
                f"v AS (SELECT c.id, {distance} AS dist FROM chunks c WHERE c.dims = {int(dims)} "
                f"AND c.entry_id = ANY($1::bigint[]) ORDER BY {order} LIMIT $2), "
                "vr AS (SELECT id, dist, row_number() OVER (ORDER BY dist, id) AS rank FROM v)"
            )
        else:
            ctes.append("vr AS (SELECT NULL::bigint AS id, NULL::float8 AS dist, NULL::bigint AS rank WHERE false)")
        if mode in (RankingMode.HYBRID, RankingMode.TEXT):
            # Strict, then relaxed, at most `text_max_matches` matching chunks ranked: see
            # migrations/002_text_candidates.sql (RLS would keep the GIN index unused).
            args.extend([ts_config, query, int(text_max_matches)])
            cfg, text, cap = f"${len(args) - 2}::regconfig", f"${len(args) - 1}::text", f"${len(args)}::integer"
            ctes.append(
                "tr AS (SELECT chunk_id AS id, rank::float8 AS trank, row_number() OVER (ORDER BY rank DESC, chunk_id) AS rank "
                f"       FROM text_candidates($1::bigint[], {cfg}, {text}, $2::integer, {cap}))"
            )
        else:
            ctes.append("tr AS (SELECT NULL::bigint AS id, NULL::float8 AS trank, NULL::bigint AS rank WHERE false)")
        if mode == RankingMode.HYBRID:
            args.extend([float(vector_weight), float(text_weight), int(rrf_k)])
            wv, wt, k = f"${len(args) - 2}::float8", f"${len(args) - 1}::float8", f"${len(args)}::float8"
            score = (f"(coalesce({wv} / ({k} + vr.rank), 0) + coalesce({wt} / ({k} + tr.rank), 0)) "
                     f"/ (({wv} + {wt}) / ({k} + 1))")
        elif mode == RankingMode.VECTOR:
            score = "greatest(0, 1 - vr.dist)"
        else:
            score = "tr.trank"
        args.append(limit)
        where = ""
        if threshold is not None:
            args.append(float(threshold))
            where = f"WHERE score >= ${len(args)}::float8"
        # The top results first, then their rows by primary key (`id = ANY(...)` keeps the
        # planner on the index).
        sql = (
            f"WITH {', '.join(ctes)}, "
            f"r AS (SELECT coalesce(vr.id, tr.id) AS id, ({score})::float8 AS score FROM vr FULL JOIN tr ON vr.id = tr.id), "
            f"top AS MATERIALIZED (SELECT id, score FROM r {where} ORDER BY score DESC, id LIMIT ${len(args) - (1 if threshold is not None else 0)}) "
            "SELECT top.score, c.chunk_index, c.page_number, c.text, e.vector_store_id, e.file_id, e.attributes, f.filename "
            "FROM chunks c JOIN top ON top.id = c.id JOIN vector_store_files e ON e.entry_id = c.entry_id "
            "JOIN files f ON f.id = e.file_id WHERE c.id = ANY(ARRAY(SELECT id FROM top)) ORDER BY top.score DESC, c.id"
        )
        return await conn.fetch(sql, *args)
