"""The files domain's types. Enum values equal their protobuf numbers, so conversion at the
edge is a plain cast, but nothing here depends on protobuf or grpc."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Union

# An attribute value: str, float or bool (ints arrive as floats from protobuf's double).
AttributeValue = Union[str, float, bool]


class FilePurpose(enum.IntEnum):
    ASSISTANTS = 1
    ASSISTANTS_OUTPUT = 2
    VISION = 3
    USER_DATA = 4


class FileStatus(enum.IntEnum):
    UPLOADED = 1
    PROCESSING = 2
    PROCESSED = 3
    ERROR = 4


class StoreStatus(enum.IntEnum):
    IN_PROGRESS = 1
    COMPLETED = 2
    EXPIRED = 3


class EntryStatus(enum.IntEnum):
    IN_PROGRESS = 1
    COMPLETED = 2
    FAILED = 3
    CANCELLED = 4


class ErrorCode(enum.IntEnum):
    """Why a file or a store entry failed (VectorStoreFileErrorCode)."""

    NONE = 0
    SERVER_ERROR = 1
    UNSUPPORTED_FILE = 2
    INVALID_FILE = 3


class ChunkingType(enum.IntEnum):
    AUTO = 1
    STATIC = 2


class RankingMode(enum.IntEnum):
    HYBRID = 1
    VECTOR = 2
    TEXT = 3


@dataclass(frozen=True)
class UploadMetadata:
    filename: str
    declared_media_type: str
    purpose: int
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    # 0: not given.
    expected_size: int = 0
    # Empty: not given.
    expected_sha256: str = ""


@dataclass(frozen=True)
class File:
    id: uuid.UUID
    user_id: str
    filename: str
    size_bytes: int
    media_type: str
    purpose: FilePurpose
    sha256: str
    status: FileStatus
    status_reason: str
    attributes: dict[str, AttributeValue]
    create_time: datetime
    update_time: datetime
    page_count: int
    text_chars: int
    storage_key: str
    error_code: ErrorCode = ErrorCode.NONE


@dataclass(frozen=True)
class Chunking:
    type: ChunkingType
    max_tokens: int
    overlap_tokens: int


@dataclass(frozen=True)
class FileCounts:
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.in_progress + self.completed + self.failed + self.cancelled


@dataclass(frozen=True)
class VectorStore:
    id: uuid.UUID
    user_id: str
    name: str
    status: StoreStatus
    file_counts: FileCounts
    usage_bytes: int
    expires_after_days: int | None
    expire_time: datetime | None
    last_active_time: datetime
    metadata: dict[str, str]
    create_time: datetime
    update_time: datetime
    embedding_model: str
    embedding_dimensions: int
    embedding_window: int
    chunking: Chunking


@dataclass(frozen=True)
class VectorStoreFile:
    file_id: uuid.UUID
    vector_store_id: uuid.UUID
    filename: str
    status: EntryStatus
    error_code: ErrorCode
    error_message: str
    chunking: Chunking
    usage_bytes: int
    attributes: dict[str, AttributeValue]
    chunk_count: int
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class NewVectorStore:
    name: str = ""
    file_ids: tuple[str, ...] = ()
    # None: AUTO.
    chunking: Chunking | None = None
    expires_after_days: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    embedding_model: str = ""


@dataclass(frozen=True)
class StorePatch:
    name: str | None = None
    metadata: dict[str, str] | None = None
    # Only read when `set_expiration` is true; None there removes the expiration.
    expires_after_days: int | None = None
    set_expiration: bool = False


@dataclass(frozen=True)
class Comparison:
    key: str
    op: str  # eq ne gt gte lt lte in nin
    value: AttributeValue | None = None
    values: tuple[AttributeValue, ...] = ()


@dataclass(frozen=True)
class Compound:
    op: str  # and | or
    filters: tuple[Union[Comparison, "Compound"], ...]


Filter = Union[Comparison, Compound]


@dataclass(frozen=True)
class SearchQuery:
    vector_store_ids: tuple[str, ...]
    query: str
    max_num_results: int = 0
    score_threshold: float | None = None
    filter: Filter | None = None
    mode: RankingMode = RankingMode.HYBRID
    vector_weight: float = 1.0
    text_weight: float = 1.0
    rrf_k: int = 60


@dataclass(frozen=True)
class SearchResult:
    file_id: uuid.UUID
    filename: str
    vector_store_id: uuid.UUID
    text: str
    chunk_index: int
    page_number: int
    score: float
    attributes: dict[str, AttributeValue]


@dataclass(frozen=True)
class SearchResponse:
    results: list[SearchResult]
    embedding_seconds: float
    retrieval_seconds: float


@dataclass(frozen=True)
class Page:
    items: list
    next_page_token: str
