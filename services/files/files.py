"""Files: upload (streamed to disk atomically, checksummed, sniffed), get, list, delete,
download. Every operation acts as one user; the metadata row commits only with the bytes."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from services.files import sniff
from services.files.models import AttributeValue, File, FilePurpose, FileStatus, Page, UploadMetadata
from services.files.repository import FileRepository
from services.files.storage import BlobStore
from services.runtime import errors
from services.runtime.audit import AuditLog, Kind
from services.runtime.db import Database
from services.runtime.errors import FieldViolation
from services.runtime.pagination import decode_time_and_id, encode_time_and_id, page_size
from services.runtime.user_data import deleted_since, stale_write
from services.runtime.validation import has_control_characters, parse_id, uuid7

log = logging.getLogger("parley.files")

MAX_UPLOAD_CHUNK_BYTES = 1024 * 1024
ATTRIBUTES_MAX = 16
ATTRIBUTE_KEY_MAX = 64
ATTRIBUTE_VALUE_MAX = 512
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int = 512 * 1024 * 1024


def file_not_found(file_id: object) -> errors.NotFound:
    return errors.NotFound(f"file {file_id} not found", reason="FILE_NOT_FOUND", metadata={"file_id": str(file_id)})


def attribute_violations(attributes: dict[str, AttributeValue], field: str) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if len(attributes) > ATTRIBUTES_MAX:
        found.append(FieldViolation(field, f"has {len(attributes)} attributes; at most {ATTRIBUTES_MAX} are allowed"))
    for key, value in attributes.items():
        if not key or len(key) > ATTRIBUTE_KEY_MAX or has_control_characters(key, allow_newlines=False):
            found.append(FieldViolation(f"{field}[{key[:64]!r}]", f"keys must have 1 to {ATTRIBUTE_KEY_MAX} characters, no control characters"))
        if value is None:
            found.append(FieldViolation(f"{field}[{key[:64]!r}]", "must set a string, number or bool value"))
        elif isinstance(value, str) and len(value) > ATTRIBUTE_VALUE_MAX:
            found.append(FieldViolation(f"{field}[{key[:64]!r}]", f"string values must have at most {ATTRIBUTE_VALUE_MAX} characters"))
        elif isinstance(value, float) and not math.isfinite(value):
            found.append(FieldViolation(f"{field}[{key[:64]!r}]", "numbers must be finite"))
    return found


class Files:
    def __init__(self, db: Database, storage: BlobStore, limits: UploadLimits | None = None,
                 repository: FileRepository | None = None, on_uploaded: Callable[[], None] | None = None,
                 audit: AuditLog | None = None) -> None:
        self._db = db
        self._storage = storage
        self._repo = repository or FileRepository()
        self.limits = limits or UploadLimits()
        # Called after a file commits, to wake the background processor.
        self._on_uploaded = on_uploaded or (lambda: None)
        self._audit = audit or AuditLog.discarding()

    def _check_metadata(self, metadata: UploadMetadata) -> str:
        violations: list[FieldViolation] = []
        filename = ""
        filename_error: errors.InvalidArgument | None = None
        try:
            filename = sniff.sanitize_filename(metadata.filename)
        except errors.InvalidArgument as exc:
            filename_error = exc
        if metadata.purpose not in FilePurpose._value2member_map_:
            violations.append(FieldViolation("metadata.purpose", "is required: ASSISTANTS, ASSISTANTS_OUTPUT, VISION or USER_DATA"))
        violations += attribute_violations(metadata.attributes, "metadata.attributes")
        if metadata.expected_size < 0:
            violations.append(FieldViolation("metadata.size_bytes", "must not be negative"))
        elif metadata.expected_size > self.limits.max_file_bytes:
            violations.append(FieldViolation("metadata.size_bytes", f"is over the limit of {self.limits.max_file_bytes} bytes"))
        if metadata.expected_sha256 and not _SHA256.match(metadata.expected_sha256):
            violations.append(FieldViolation("metadata.sha256", "must be 64 lowercase hex digits"))
        if len(metadata.declared_media_type) > 255:
            violations.append(FieldViolation("metadata.media_type", "must have at most 255 characters"))
        if filename_error is not None:
            if not violations:
                raise filename_error
            violations = filename_error.field_violations + violations
        errors.collect(violations)
        return filename

    async def upload(self, user_id: str, metadata: UploadMetadata, chunks: AsyncIterator[bytes]) -> File:
        """Streams the bytes into a temporary file, checks them, and commits the row together
        with the rename into place. Any failure or cancellation (a client that goes away)
        removes the temporary file: nothing is left behind."""
        filename = self._check_metadata(metadata)
        started = datetime.now(timezone.utc)
        limit = self.limits.max_file_bytes
        pending = self._storage.new_pending()
        committed_key: str | None = None
        try:
            async for data in chunks:
                if len(data) > MAX_UPLOAD_CHUNK_BYTES:
                    raise errors.InvalidArgument.for_field("chunk", f"must be at most {MAX_UPLOAD_CHUNK_BYTES} bytes per message",
                                                           reason="CHUNK_TOO_LARGE")
                if pending.size + len(data) > limit:
                    raise errors.InvalidArgument(
                        f"the file is larger than the limit of {limit} bytes; nothing was stored",
                        reason="FILE_TOO_LARGE", metadata={"limit_bytes": str(limit)},
                    )
                await pending.write(data)
            if pending.size == 0:
                raise errors.InvalidArgument("the file is empty; nothing was stored", reason="FILE_EMPTY")
            if metadata.expected_size and pending.size != metadata.expected_size:
                raise errors.InvalidArgument.for_field(
                    "metadata.size_bytes", f"announced {metadata.expected_size} bytes but {pending.size} arrived",
                    reason="SIZE_MISMATCH",
                )
            if metadata.expected_sha256 and pending.sha256 != metadata.expected_sha256:
                raise errors.DataLoss(
                    "the content's SHA-256 differs from metadata.sha256; nothing was stored", reason="CHECKSUM_MISMATCH",
                    metadata={"sha256": pending.sha256},
                )
            await pending.flush()
            # Sniffing may open the file as a zip (docx) and read its directory: off the loop.
            media_type = await asyncio.to_thread(sniff.detect_media_type, pending.head, pending.path, filename,
                                                 metadata.declared_media_type)
            if metadata.purpose == FilePurpose.VISION and media_type not in sniff.IMAGE_TYPES:
                raise errors.InvalidArgument.for_field(
                    "metadata.purpose", f"VISION needs a PNG, JPEG, GIF or WEBP image; the content is {sniff.describe(media_type)}",
                    reason="NOT_AN_IMAGE",
                )
            file_id = uuid7()
            key = self._storage.key_for(file_id)
            async with self._db.transaction(user_id) as conn:
                # An upload still streaming when the user's data was deleted stores nothing.
                if await deleted_since(conn, user_id, started):
                    raise stale_write()
                created = await self._repo.insert_file(
                    conn, file_id=file_id, filename=filename, size=pending.size, media_type=media_type,
                    declared=sniff.normalize_declared(metadata.declared_media_type), purpose=metadata.purpose,
                    sha256=pending.sha256, status=FileStatus.UPLOADED, attributes=dict(metadata.attributes),
                    storage_key=key,
                )
                # The bytes become durable in place before the row commits; if the commit then
                # fails, the except below removes them again.
                await self._storage.commit(pending, key)
                committed_key = key
            committed_key = None
        except BaseException:
            # Unlinks run in a thread; cancelled while awaiting, the thread still finishes.
            await asyncio.to_thread(pending.discard)
            if committed_key is not None:
                await asyncio.to_thread(self._storage.delete, committed_key)
            raise
        self._on_uploaded()
        return created

    async def get(self, user_id: str, file_id: str) -> File:
        fid = parse_id(file_id, "file_id")
        async with self._db.transaction(user_id, readonly=True) as conn:
            found = await self._repo.get_file(conn, fid)
        if found is None:
            raise file_not_found(fid)
        return found

    async def list(self, user_id: str, *, purpose: int, size: int, token: str) -> Page:
        if purpose and purpose not in FilePurpose._value2member_map_:
            raise errors.InvalidArgument.for_field("purpose", "is not a known purpose")
        limit = page_size(size, default=20, maximum=100)
        query_key = f"files|{user_id}|{purpose}"
        after = decode_time_and_id(token, query_key)
        async with self._db.transaction(user_id, readonly=True) as conn:
            rows = await self._repo.list_files(conn, purpose=purpose, after=after, limit=limit + 1)
        items, more = rows[:limit], len(rows) > limit
        next_token = encode_time_and_id(query_key, items[-1].create_time, items[-1].id) if more else ""
        return Page(items=items, next_page_token=next_token)

    async def delete(self, user_id: str, file_id: str) -> None:
        """Deletes the row with its text, store entries and chunks, then the bytes."""
        fid = parse_id(file_id, "file_id")
        async with self._db.transaction(user_id) as conn:
            key = await self._repo.delete_file(conn, fid)
            if key is not None:
                await self._audit.write(conn, Kind.FILE_DELETED, subject=user_id, resource=str(fid))
        if key is None:
            raise file_not_found(fid)
        try:
            await asyncio.to_thread(self._storage.delete, key)
        except OSError:  # the row is gone; the start-up sweep removes orphaned bytes
            log.warning("could not delete the bytes of file %s", fid, exc_info=True)

    async def download(self, user_id: str, file_id: str) -> tuple[File, AsyncIterator[bytes]]:
        found = await self.get(user_id, file_id)
        if not await asyncio.to_thread(self._storage.path_of(found.storage_key).exists):
            raise errors.DataLoss(f"the bytes of file {found.id} are missing from storage", reason="FILE_BYTES_MISSING")
        return found, self._storage.iter_bytes(found.storage_key)
