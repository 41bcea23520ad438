"""Vector stores: create, read, update, delete; their files; and hybrid search over them.

Search runs the vector ranking (pgvector, cosine; HNSW for large candidate sets, an exact
scan for small ones) and the full-text ranking (PostgreSQL text search) in one statement
and fuses them by weighted reciprocal rank fusion.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from services.files import chunking as chunking_rules
from services.files.embeddings import Embedder, ModelInfo
from services.files.files import attribute_violations, file_not_found
from services.files.filters import filter_violations
from services.files.models import (
    AttributeValue,
    Chunking,
    ChunkingType,
    EntryStatus,
    FileStatus,
    NewVectorStore,
    Page,
    RankingMode,
    SearchQuery,
    SearchResponse,
    SearchResult,
    StorePatch,
    StoreStatus,
    VectorStore,
    VectorStoreFile,
)
from services.files.repository import FileRepository
from services.runtime import errors
from services.runtime.audit import AuditLog, Kind
from services.runtime.db import Database
from services.runtime.errors import FieldViolation
from services.runtime.pagination import decode_time_and_id, encode_time_and_id, page_size
from services.runtime.validation import metadata_violations, parse_id, text_violations, update_mask_paths, uuid7

log = logging.getLogger("parley.files.stores")

DEFAULT_EMBEDDING_MODEL = chunking_rules.LOCAL_MINILM
# all-MiniLM-L6-v2 was trained on (and sentence-transformers cuts at) 256 word pieces,
# whatever window its BERT architecture could take.
KNOWN_WINDOWS = {chunking_rules.LOCAL_MINILM: 256}
NAME_MAX_CHARS = 256
QUERY_MAX_CHARS = 4096
MAX_FILES_AT_CREATION = 500
MAX_STORES_PER_SEARCH = 10
UPDATABLE_PATHS = ("name", "metadata", "expires_after")


@dataclass(frozen=True)
class SearchSettings:
    # Up to this many chunks in the searched entries, the vector ranking is exact (a scan is
    # fast and HNSW's post-filtering would lose recall); above it, HNSW.
    exact_search_max_chunks: int = 20_000
    # HNSW candidate list size (pgvector's hnsw.ef_search); raised to the candidate count.
    ef_search: int = 100
    # Candidates taken from each ranking before fusion.
    candidates: int = 50
    # At most this many chunks matching the text query are ranked (bounds frequent words).
    text_max_matches: int = 5000
    # PostgreSQL text search configuration for chunks and queries.
    text_search_config: str = "english"
    # Searches refresh a store's last_active_time at most this often.
    activity_throttle_seconds: float = 60.0


def store_not_found(store_id: object) -> errors.NotFound:
    return errors.NotFound(f"vector store {store_id} not found", reason="VECTOR_STORE_NOT_FOUND",
                           metadata={"vector_store_id": str(store_id)})


def entry_not_found(store_id: object, file_id: object) -> errors.NotFound:
    return errors.NotFound(f"file {file_id} is not in vector store {store_id}", reason="VECTOR_STORE_FILE_NOT_FOUND",
                           metadata={"vector_store_id": str(store_id), "file_id": str(file_id)})


def store_expired(store_id: object) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        f"vector store {store_id} has expired and its chunks were deleted; create a new store",
        reason="VECTOR_STORE_EXPIRED", metadata={"vector_store_id": str(store_id)},
    )


def resolve_chunking(requested: Chunking | None, window: int, field: str) -> Chunking:
    """Concrete sizes for a requested strategy (None or AUTO: sized to the model)."""
    if requested is None or requested.type == ChunkingType.AUTO:
        size, overlap = chunking_rules.auto_chunking(window)
        return Chunking(ChunkingType.AUTO, size, overlap)
    if requested.type != ChunkingType.STATIC:
        raise errors.InvalidArgument.for_field(f"{field}.type", "must be AUTO or STATIC")
    violations = []
    size, overlap = requested.max_tokens, requested.overlap_tokens
    upper = min(chunking_rules.MAX_CHUNK_TOKENS, window) if window > 0 else chunking_rules.MAX_CHUNK_TOKENS
    if not chunking_rules.MIN_CHUNK_TOKENS <= size <= upper:
        violations.append(FieldViolation(f"{field}.max_chunk_size_tokens",
                                         f"must be between {chunking_rules.MIN_CHUNK_TOKENS} and {upper} "
                                         f"(the embedding model reads {window} tokens)"))
    if overlap < 0 or overlap * 2 > size:
        violations.append(FieldViolation(f"{field}.chunk_overlap_tokens", "must be between 0 and half of max_chunk_size_tokens"))
    errors.collect(violations)
    return Chunking(ChunkingType.STATIC, size, overlap)


# A weight this much smaller than the other contributes less than a double can tell apart.
_NEGLIGIBLE_WEIGHT_RATIO = 1e-12


def fusion_weights(vector_weight: float, text_weight: float) -> tuple[float, float]:
    """The weights as the fusion SQL gets them: scaled so the larger is 1. Fused scores divide
    by the weights' sum, so scaling changes no score, and PostgreSQL never sees a weight that
    underflows (5e-324) or overflows (1e308 + 1e308) its float8 arithmetic."""
    largest = max(vector_weight, text_weight)
    scaled = [w / largest for w in (vector_weight, text_weight)]
    return tuple(w if w >= _NEGLIGIBLE_WEIGHT_RATIO else 0.0 for w in scaled)  # type: ignore[return-value]


class VectorStores:
    def __init__(self, db: Database, embedder: Embedder, settings: SearchSettings | None = None,
                 repository: FileRepository | None = None, on_added: Callable[[], None] | None = None,
                 audit: AuditLog | None = None) -> None:
        self._db = db
        self._embedder = embedder
        self._repo = repository or FileRepository()
        self.settings = settings or SearchSettings()
        self._on_added = on_added or (lambda: None)
        self._audit = audit or AuditLog.discarding()

    async def _model(self, user_id: str, model: str) -> ModelInfo:
        info = await self._embedder.model_info(user_id, model or DEFAULT_EMBEDDING_MODEL)
        window = KNOWN_WINDOWS.get(info.id, info.window)
        if info.window > 0:
            window = min(window, info.window)
        return ModelInfo(id=info.id, dimensions=info.dimensions, window=window)

    # -- stores -----------------------------------------------------------------------------

    async def create(self, user_id: str, new: NewVectorStore) -> VectorStore:
        violations = text_violations(new.name, "name", max_chars=NAME_MAX_CHARS, single_line=True)
        violations += metadata_violations(new.metadata)
        if new.expires_after_days is not None and not 1 <= new.expires_after_days <= 365:
            violations.append(FieldViolation("expires_after.days", "must be between 1 and 365"))
        if len(new.file_ids) > MAX_FILES_AT_CREATION:
            violations.append(FieldViolation("file_ids", f"must have at most {MAX_FILES_AT_CREATION} files"))
        file_ids = []
        for i, raw in enumerate(new.file_ids):
            try:
                file_ids.append(parse_id(raw, f"file_ids[{i}]"))
            except errors.InvalidArgument as exc:
                violations += exc.field_violations
        errors.collect(violations)
        model = await self._model(user_id, new.embedding_model)
        chunking = resolve_chunking(new.chunking, model.window, "chunking_strategy")
        store_id = uuid7()
        async with self._db.transaction(user_id) as conn:
            await self._repo.insert_store(conn, store_id=store_id, name=new.name, metadata=new.metadata,
                                          expires_after_days=new.expires_after_days, chunking=chunking,
                                          model=model.id, dimensions=model.dimensions, window=model.window)
            if file_ids:
                unique = list(dict.fromkeys(file_ids))
                files = {f.id: f for f in await self._repo.get_files(conn, unique)}
                for fid in unique:
                    if fid not in files:
                        raise file_not_found(fid)
                    if files[fid].status == FileStatus.ERROR:
                        raise self._file_failed(files[fid].id, files[fid].status_reason)
                await self._repo.insert_entries(conn, store_id, [(fid, files[fid].attributes) for fid in unique], chunking)
            store = await self._repo.get_store(conn, store_id)
        if file_ids:
            self._on_added()
        return store

    @staticmethod
    def _file_failed(file_id, reason: str) -> errors.FailedPrecondition:
        return errors.FailedPrecondition(f"file {file_id} failed processing and cannot be searched: {reason}",
                                         reason="FILE_FAILED", metadata={"file_id": str(file_id)})

    async def get(self, user_id: str, store_id: str) -> VectorStore:
        sid = parse_id(store_id, "vector_store_id")
        async with self._db.transaction(user_id, readonly=True) as conn:
            store = await self._repo.get_store(conn, sid)
        if store is None:
            raise store_not_found(sid)
        return store

    async def list(self, user_id: str, *, size: int, token: str) -> Page:
        limit = page_size(size, default=20, maximum=100)
        query_key = f"vector_stores|{user_id}"
        after = decode_time_and_id(token, query_key)
        async with self._db.transaction(user_id, readonly=True) as conn:
            rows = await self._repo.list_stores(conn, after=after, limit=limit + 1)
        items, more = rows[:limit], len(rows) > limit
        next_token = encode_time_and_id(query_key, items[-1].create_time, items[-1].id) if more else ""
        return Page(items=items, next_page_token=next_token)

    async def update(self, user_id: str, store_id: str, paths: list[str], values: StorePatch) -> VectorStore:
        sid = parse_id(store_id, "vector_store.id")
        paths, violations = update_mask_paths(paths, updatable=UPDATABLE_PATHS)  # a mask is required
        patch = StorePatch(
            name=(values.name or "") if "name" in paths else None,
            metadata=(values.metadata or {}) if "metadata" in paths else None,
            expires_after_days=values.expires_after_days if "expires_after" in paths else None,
            set_expiration="expires_after" in paths,
        )
        if patch.name is not None:
            violations += text_violations(patch.name, "vector_store.name", max_chars=NAME_MAX_CHARS, single_line=True)
        if patch.metadata is not None:
            violations += metadata_violations(patch.metadata, "vector_store.metadata")
        if patch.expires_after_days is not None and not 1 <= patch.expires_after_days <= 365:
            violations.append(FieldViolation("vector_store.expires_after.days", "must be between 1 and 365"))
        errors.collect(violations)
        async with self._db.transaction(user_id) as conn:
            store = await self._repo.get_store(conn, sid)
            if store is None:
                raise store_not_found(sid)
            if store.status == StoreStatus.EXPIRED:
                raise store_expired(sid)
            await self._repo.update_store(conn, sid, patch)
            return await self._repo.get_store(conn, sid)

    async def delete(self, user_id: str, store_id: str) -> None:
        sid = parse_id(store_id, "vector_store_id")
        async with self._db.transaction(user_id) as conn:
            if not await self._repo.delete_store(conn, sid):
                raise store_not_found(sid)
            await self._audit.write(conn, Kind.VECTOR_STORE_DELETED, subject=user_id, resource=str(sid))

    async def _usable_store(self, conn, sid: uuid.UUID) -> VectorStore:
        store = await self._repo.get_store(conn, sid)
        if store is None:
            raise store_not_found(sid)
        if store.status == StoreStatus.EXPIRED:
            raise store_expired(sid)
        return store

    # -- store files ------------------------------------------------------------------------

    async def add_file(self, user_id: str, store_id: str, file_id: str, requested: Chunking | None,
                       attributes: dict[str, AttributeValue]) -> VectorStoreFile:
        sid, fid = parse_id(store_id, "vector_store_id"), parse_id(file_id, "file_id")
        errors.collect(attribute_violations(attributes, "attributes"))
        async with self._db.transaction(user_id) as conn:
            store = await self._usable_store(conn, sid)
            chunking = store.chunking if requested is None else resolve_chunking(requested, store.embedding_window,
                                                                                 "chunking_strategy")
            file = await self._repo.get_file(conn, fid)
            if file is None:
                raise file_not_found(fid)
            if file.status == FileStatus.ERROR:
                raise self._file_failed(fid, file.status_reason)
            added = await self._repo.insert_entries(conn, sid, [(fid, attributes or file.attributes)], chunking)
            if not added:
                raise errors.AlreadyExists(f"file {fid} is already in vector store {sid}", reason="VECTOR_STORE_FILE_EXISTS",
                                           metadata={"vector_store_id": str(sid), "file_id": str(fid)})
            entry = await self._repo.get_entry(conn, sid, fid)
        self._on_added()
        return entry

    async def get_file(self, user_id: str, store_id: str, file_id: str) -> VectorStoreFile:
        sid, fid = parse_id(store_id, "vector_store_id"), parse_id(file_id, "file_id")
        async with self._db.transaction(user_id, readonly=True) as conn:
            entry = await self._repo.get_entry(conn, sid, fid)
        if entry is None:
            raise entry_not_found(sid, fid)
        return entry

    async def list_files(self, user_id: str, store_id: str, *, status: int, size: int, token: str) -> Page:
        sid = parse_id(store_id, "vector_store_id")
        if status and status not in EntryStatus._value2member_map_:
            raise errors.InvalidArgument.for_field("status", "is not a known status")
        limit = page_size(size, default=20, maximum=100)
        query_key = f"vector_store_files|{user_id}|{sid}|{status}"
        after = decode_time_and_id(token, query_key)
        async with self._db.transaction(user_id, readonly=True) as conn:
            if await self._repo.get_store(conn, sid) is None:
                raise store_not_found(sid)
            rows = await self._repo.list_entries(conn, sid, status=status, after=after, limit=limit + 1)
        items, more = rows[:limit], len(rows) > limit
        next_token = encode_time_and_id(query_key, items[-1].create_time, items[-1].file_id) if more else ""
        return Page(items=items, next_page_token=next_token)

    async def remove_file(self, user_id: str, store_id: str, file_id: str) -> None:
        sid, fid = parse_id(store_id, "vector_store_id"), parse_id(file_id, "file_id")
        async with self._db.transaction(user_id) as conn:
            if not await self._repo.delete_entry(conn, sid, fid):
                raise entry_not_found(sid, fid)

    # -- search -----------------------------------------------------------------------------

    def _check_query(self, query: SearchQuery) -> tuple[list[uuid.UUID], int]:
        violations: list[FieldViolation] = []
        ids: list[uuid.UUID] = []
        if not 1 <= len(query.vector_store_ids) <= MAX_STORES_PER_SEARCH:
            violations.append(FieldViolation("vector_store_ids", f"must name 1 to {MAX_STORES_PER_SEARCH} vector stores"))
        for i, raw in enumerate(query.vector_store_ids):
            try:
                ids.append(parse_id(raw, f"vector_store_ids[{i}]"))
            except errors.InvalidArgument as exc:
                violations += exc.field_violations
        if not query.query.strip():
            violations.append(FieldViolation("query", "must not be empty"))
        elif len(query.query) > QUERY_MAX_CHARS:
            violations.append(FieldViolation("query", f"must have at most {QUERY_MAX_CHARS} characters"))
        limit = query.max_num_results or 20
        if not 1 <= limit <= 50:
            violations.append(FieldViolation("max_num_results", "must be between 1 and 50 (0 for the default of 20)"))
        if query.score_threshold is not None and not (0.0 <= query.score_threshold <= 1.0):
            violations.append(FieldViolation("score_threshold", "must be between 0 and 1"))
        for name, weight in (("vector_weight", query.vector_weight), ("text_weight", query.text_weight)):
            if not math.isfinite(weight) or weight < 0:
                violations.append(FieldViolation(f"ranking_options.{name}", "must be a finite number, at least 0"))
        if query.vector_weight == 0 and query.text_weight == 0:
            violations.append(FieldViolation("ranking_options", "vector_weight and text_weight must not both be 0"))
        if query.rrf_k < 1:
            violations.append(FieldViolation("ranking_options.rrf_k", "must be at least 1"))
        violations += filter_violations(query.filter)
        errors.collect(violations)
        return list(dict.fromkeys(ids)), limit

    async def search(self, user_id: str, query: SearchQuery) -> SearchResponse:
        store_ids, limit = self._check_query(query)
        async with self._db.transaction(user_id, readonly=True) as conn:
            stores = {s.id: s for s in await self._repo.get_stores(conn, store_ids)}
        for sid in store_ids:
            if sid not in stores:
                raise store_not_found(sid)
            if stores[sid].status == StoreStatus.EXPIRED:
                raise store_expired(sid)
        # One query embedding per embedding model among the stores.
        groups: dict[tuple[str, int], list[uuid.UUID]] = {}
        for store in stores.values():
            groups.setdefault((store.embedding_model, store.embedding_dimensions), []).append(store.id)
        embed_seconds = retrieval_seconds = 0.0
        vectors: dict[str, list[float] | None] = {}
        for model, dims in groups:
            vectors[model] = None
            if query.mode != RankingMode.TEXT:
                started = time.perf_counter()
                vectors[model] = (await self._embedder.embed(user_id, model, [query.query], interactive=True,
                                                                  timeout=30.0))[0]
                embed_seconds += time.perf_counter() - started
                if len(vectors[model]) != dims:
                    raise errors.Internal("the query embedding has the wrong size", reason="EMBEDDING_SIZE_MISMATCH")
        results: list[SearchResult] = []
        started = time.perf_counter()
        async with self._db.transaction(user_id) as conn:
            for (model, dims), ids in groups.items():
                results += await self._search_group(conn, ids, dims, vectors[model], query, limit)
            # Activity is recorded at most once per throttle period (a write per search would
            # turn every search into row churn).
            now = datetime.now(tz=next(iter(stores.values())).last_active_time.tzinfo)
            stale = [s.id for s in stores.values()
                     if (now - s.last_active_time).total_seconds() >= self.settings.activity_throttle_seconds]
            if stale:
                await self._repo.touch_stores(conn, stale, throttle_seconds=self.settings.activity_throttle_seconds)
        retrieval_seconds = time.perf_counter() - started
        results.sort(key=lambda r: -r.score)
        return SearchResponse(results=results[:limit], embedding_seconds=embed_seconds, retrieval_seconds=retrieval_seconds)

    async def _search_group(self, conn, store_ids: list[uuid.UUID], dims: int, vector: list[float] | None,
                            query: SearchQuery, limit: int) -> list[SearchResult]:
        entries = await self._repo.searchable_entries(conn, store_ids, query.filter)
        if not entries:
            return []
        entry_ids = [e["entry_id"] for e in entries]
        total = sum(e["chunk_count"] for e in entries)
        candidates = max(self.settings.candidates, limit)
        exact = total <= self.settings.exact_search_max_chunks
        kwargs = dict(entry_ids=entry_ids, mode=query.mode, dims=dims, vector=vector,
                      ef_search=max(self.settings.ef_search, candidates), query=query.query,
                      ts_config=self.settings.text_search_config, candidates=candidates,
                      **dict(zip(("vector_weight", "text_weight"), fusion_weights(query.vector_weight, query.text_weight))),
                      rrf_k=query.rrf_k,
                      limit=limit, threshold=query.score_threshold,
                      text_max_matches=self.settings.text_max_matches)
        rows = await self._repo.search(conn, exact=exact, **kwargs)
        if not exact and query.mode != RankingMode.TEXT and len(rows) < limit and query.score_threshold is None and total > len(rows):
            # HNSW filters after its candidate list: a selective filter can leave too few.
            rows = await self._repo.search(conn, exact=True, **kwargs)
        return [
            SearchResult(file_id=r["file_id"], filename=r["filename"], vector_store_id=r["vector_store_id"],
                         text=r["text"], chunk_index=r["chunk_index"], page_number=r["page_number"],
                         score=min(1.0, max(0.0, float(r["score"]))), attributes=r["attributes"])
            for r in rows
        ]
