"""Protobuf ⇄ domain conversions for the files service, and nothing else."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from parley.files.v1 import files_pb2 as pb
from parley.files.v1 import files_service_pb2 as api
from services.runtime.errors import InvalidArgument
from services.files.models import (
    AttributeValue,
    Chunking,
    ChunkingType,
    Comparison,
    Compound,
    File,
    Filter,
    NewVectorStore,
    RankingMode,
    SearchQuery,
    SearchResponse,
    StorePatch,
    UploadMetadata,
    VectorStore,
    VectorStoreFile,
)

_COMPARISON_OPS = {
    pb.COMPARISON_OPERATOR_EQ: "eq", pb.COMPARISON_OPERATOR_NE: "ne", pb.COMPARISON_OPERATOR_GT: "gt",
    pb.COMPARISON_OPERATOR_GTE: "gte", pb.COMPARISON_OPERATOR_LT: "lt", pb.COMPARISON_OPERATOR_LTE: "lte",
    pb.COMPARISON_OPERATOR_IN: "in", pb.COMPARISON_OPERATOR_NIN: "nin",
}
_COMPOUND_OPS = {pb.COMPOUND_OPERATOR_AND: "and", pb.COMPOUND_OPERATOR_OR: "or"}


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def attribute_from_proto(value: pb.AttributeValue) -> AttributeValue | None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    return None


def attribute_to_proto(value: AttributeValue) -> pb.AttributeValue:
    if isinstance(value, bool):
        return pb.AttributeValue(bool_value=value)
    if isinstance(value, (int, float)):
        return pb.AttributeValue(number_value=float(value))
    return pb.AttributeValue(string_value=str(value))


def attributes_from_proto(values) -> dict[str, AttributeValue]:
    return {key: attribute_from_proto(value) for key, value in values.items()}


def attributes_to_proto(values: dict[str, AttributeValue]) -> dict[str, pb.AttributeValue]:
    return {key: attribute_to_proto(value) for key, value in values.items()}


def upload_metadata(metadata: api.UploadFileMetadata) -> UploadMetadata:
    return UploadMetadata(
        filename=metadata.filename,
        declared_media_type=metadata.media_type,
        purpose=int(metadata.purpose),
        attributes=attributes_from_proto(metadata.attributes),
        expected_size=metadata.size_bytes,
        expected_sha256=metadata.sha256,
    )


def file_to_proto(file: File) -> pb.File:
    return pb.File(
        id=str(file.id), user_id=file.user_id, filename=file.filename, size_bytes=file.size_bytes,
        media_type=file.media_type, purpose=int(file.purpose), sha256=file.sha256, status=int(file.status),
        status_reason=file.status_reason, attributes=attributes_to_proto(file.attributes),
        create_time=timestamp(file.create_time), update_time=timestamp(file.update_time),
        page_count=file.page_count, text_chars=file.text_chars,
    )


def chunking_from_proto(message: pb.ChunkingStrategy, present: bool) -> Chunking | None:
    """None means AUTO (sized to the store's embedding model)."""
    if not present or message.type in (pb.CHUNKING_STRATEGY_TYPE_UNSPECIFIED, pb.CHUNKING_STRATEGY_TYPE_AUTO):
        return None
    if message.type != pb.CHUNKING_STRATEGY_TYPE_STATIC:
        raise InvalidArgument.for_field("chunking_strategy.type", "must be AUTO or STATIC")
    return Chunking(ChunkingType.STATIC, message.max_chunk_size_tokens, message.chunk_overlap_tokens)


def chunking_to_proto(chunking: Chunking) -> pb.ChunkingStrategy:
    return pb.ChunkingStrategy(type=int(chunking.type), max_chunk_size_tokens=chunking.max_tokens,
                               chunk_overlap_tokens=chunking.overlap_tokens)


def new_vector_store(request: api.CreateVectorStoreRequest) -> NewVectorStore:
    return NewVectorStore(
        name=request.name,
        file_ids=tuple(request.file_ids),
        chunking=chunking_from_proto(request.chunking_strategy, request.HasField("chunking_strategy")),
        expires_after_days=request.expires_after.days if request.HasField("expires_after") else None,
        metadata=dict(request.metadata),
        embedding_model=request.embedding_model,
    )


def store_patch(store: pb.VectorStore) -> StorePatch:
    return StorePatch(
        name=store.name, metadata=dict(store.metadata),
        expires_after_days=store.expires_after.days if store.HasField("expires_after") else None,
    )


def vector_store_to_proto(store: VectorStore) -> pb.VectorStore:
    counts = store.file_counts
    message = pb.VectorStore(
        id=str(store.id), user_id=store.user_id, name=store.name, status=int(store.status),
        file_counts=pb.FileCounts(in_progress=counts.in_progress, completed=counts.completed, failed=counts.failed,
                                  cancelled=counts.cancelled, total=counts.total),
        usage_bytes=store.usage_bytes, last_active_time=timestamp(store.last_active_time),
        metadata=store.metadata, create_time=timestamp(store.create_time), update_time=timestamp(store.update_time),
        embedding_model=store.embedding_model,
    )
    if store.expires_after_days:
        message.expires_after.CopyFrom(pb.ExpirationPolicy(anchor=pb.EXPIRATION_ANCHOR_LAST_ACTIVE_TIME,
                                                           days=store.expires_after_days))
    if store.expire_time is not None:
        message.expire_time.CopyFrom(timestamp(store.expire_time))
    return message


def vector_store_file_to_proto(entry: VectorStoreFile) -> pb.VectorStoreFile:
    message = pb.VectorStoreFile(
        id=str(entry.file_id), vector_store_id=str(entry.vector_store_id), filename=entry.filename,
        status=int(entry.status), chunking_strategy=chunking_to_proto(entry.chunking), usage_bytes=entry.usage_bytes,
        attributes=attributes_to_proto(entry.attributes), chunk_count=entry.chunk_count,
        create_time=timestamp(entry.create_time), update_time=timestamp(entry.update_time),
    )
    if entry.error_code:
        message.last_error.CopyFrom(pb.VectorStoreFileError(code=int(entry.error_code), message=entry.error_message))
    return message


def filter_from_proto(message: pb.Filter) -> Filter | None:
    kind = message.WhichOneof("filter")
    if kind == "comparison":
        c = message.comparison
        value = attribute_from_proto(c.value) if c.HasField("value") else None
        return Comparison(key=c.key, op=_COMPARISON_OPS.get(c.op, "unspecified"), value=value,
                          values=tuple(v for v in (attribute_from_proto(x) for x in c.values) if v is not None))
    if kind == "compound":
        children = tuple(filter_from_proto(f) for f in message.compound.filters)
        return Compound(op=_COMPOUND_OPS.get(message.compound.op, "unspecified"),
                        filters=tuple(c if c is not None else Compound("unspecified", ()) for c in children))
    return None


def search_query(request: api.SearchVectorStoreRequest) -> SearchQuery:
    ranking = request.ranking_options
    mode = RankingMode(ranking.mode) if ranking.mode in (1, 2, 3) else RankingMode.HYBRID
    return SearchQuery(
        vector_store_ids=tuple(request.vector_store_ids),
        query=request.query,
        max_num_results=request.max_num_results,
        score_threshold=request.score_threshold if request.HasField("score_threshold") else None,
        filter=filter_from_proto(request.filters) if request.HasField("filters") else None,
        mode=mode,
        vector_weight=ranking.vector_weight if ranking.HasField("vector_weight") else 1.0,
        text_weight=ranking.text_weight if ranking.HasField("text_weight") else 1.0,
        rrf_k=ranking.rrf_k if ranking.HasField("rrf_k") else 60,
    )


def search_response(response: SearchResponse) -> api.SearchVectorStoreResponse:
    return api.SearchVectorStoreResponse(
        results=[
            pb.SearchResult(
                file_id=str(r.file_id), filename=r.filename, vector_store_id=str(r.vector_store_id), text=r.text,
                chunk_index=r.chunk_index, page_number=r.page_number, score=r.score,
                attributes=attributes_to_proto(r.attributes),
            )
            for r in response.results
        ],
        embedding_time=duration(response.embedding_seconds),
        retrieval_time=duration(response.retrieval_seconds),
    )
