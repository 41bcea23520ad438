"""Everything the files service keeps of one user, deleted for the gateway's
AdminService.DeleteUserData (services/runtime/user_data.py): files with their extracted
text, vector stores, store entries (pending processing included) and chunks with their
vectors in one transaction, then the stored bytes on disk.

Races: an upload still streaming at the deletion is refused when it commits (it checks the
deletion mark) and its temporary bytes are removed; processing of a deleted file or entry
finds no row and writes nothing (`start_processing`, `finish_processing` and
`complete_entry` act on rows that exist). Bytes that cannot be removed now (a disk error)
have no row any more and go with the storage sweep at the next start."""

from __future__ import annotations

import asyncio
import logging

from services.files.storage import BlobStore
from services.runtime.audit import AuditLog, Kind
from services.runtime.db import Database
from services.runtime.user_data import Removed, delete_rows, deletion

log = logging.getLogger("parley.files.user_data")

# Every table with user rows in schema `files`, children before their parents;
# tests/files/test_user_data.py checks none is missing.
USER_TABLES = ("chunks", "vector_store_files", "file_texts", "vector_stores", "files")


async def delete_user_data(db: Database, audit: AuditLog, storage: BlobStore, user_id: str) -> list[Removed]:
    async with deletion(db, user_id) as conn:
        keys = [r["storage_key"] for r in await conn.fetch("SELECT storage_key FROM files")]
        counts = await delete_rows(conn, USER_TABLES)
        await audit.write(conn, Kind.USER_DATA_DELETED, subject=user_id, resource=user_id,
                          details={**counts, "stored_files": len(keys)})

    def remove() -> int:
        removed = 0
        for key in keys:
            try:
                path = storage.path_of(key)
                if path.exists():
                    path.unlink()
                    removed += 1
            except OSError:  # the row is gone: the next start's storage sweep removes it
                log.warning("could not remove the bytes of a deleted user's file; the storage sweep will")
        return removed

    return [Removed("files", {**counts, "stored_files": await asyncio.to_thread(remove)})]
