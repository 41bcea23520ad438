"""File bytes on the local filesystem, written atomically.

Uploads stream into a temporary file under `<root>/tmp/`; `commit` fsyncs it and renames it
to `<root>/<xx>/<file id>` (a rename within one filesystem is atomic), then fsyncs the
directory. A crash mid-upload therefore leaves at most a temporary file, which the start-up
sweep removes; paths never contain anything the client sent.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from services.runtime import errors

log = logging.getLogger("parley.files.storage")

READ_CHUNK_BYTES = 1024 * 1024


@contextmanager
def _storage_errors() -> Iterator[None]:
    """A failing disk as a clear status: full (ENOSPC, EDQUOT) is RESOURCE_EXHAUSTED, any other
    error UNAVAILABLE. The caller's cleanup removes what was written."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("file storage is full: an upload was refused")
            raise errors.ResourceExhausted("the file storage is full; nothing was stored. Delete files or try again "
                                           "later", reason="STORAGE_FULL") from None
        log.error("file storage failed: %s", exc.strerror or type(exc).__name__)
        raise errors.Unavailable("the file storage failed; nothing was stored, try again later",
                                 reason="STORAGE_UNAVAILABLE") from None


async def _in_thread(function: Callable, *args) -> None:
    with _storage_errors():
        await asyncio.to_thread(function, *args)


class PendingBlob:
    """A temporary file being written, with its running size and SHA-256."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        with _storage_errors():
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._hash = hashlib.sha256()
        self.size = 0
        self.head = b""  # the first bytes, for content sniffing

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    async def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)
        if len(self.head) < 8192:
            self.head += data[: 8192 - len(self.head)]
        await _in_thread(self._write, data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def _flush(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1

    async def flush(self) -> None:
        await _in_thread(self._flush)

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def new_pending(self) -> PendingBlob:
        return PendingBlob(self.tmp / f"{uuid.uuid4().hex}.part")

    @staticmethod
    def key_for(file_id: uuid.UUID) -> str:
        return f"{file_id.hex[:2]}/{file_id}"

    def path_of(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError("storage key escapes the storage root")
        return path

    def _commit(self, pending: PendingBlob, key: str) -> None:
        target = self.path_of(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(pending.path, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def commit(self, pending: PendingBlob, key: str) -> None:
        """Makes the flushed pending blob durable under `key`."""
        await _in_thread(self._commit, pending, key)

    def read_bytes(self, key: str) -> bytes:
        return self.path_of(key).read_bytes()

    async def iter_bytes(self, key: str, chunk_size: int = READ_CHUNK_BYTES) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(open, self.path_of(key), "rb")
        try:
            while True:
                data = await asyncio.to_thread(handle.read, chunk_size)
                if not data:
                    return
                yield data
        finally:
            handle.close()

    def delete(self, key: str) -> None:
        self.path_of(key).unlink(missing_ok=True)

    def sweep_temporary(self, older_than_seconds: float) -> int:
        """Removes temporary files older than the given age (left by a crash)."""
        removed, cutoff = 0, time.time() - older_than_seconds
        for path in self.tmp.glob("*.part"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def stored_keys(self, older_than_seconds: float) -> Iterator[str]:
        """Keys of committed blobs older than the given age."""
        cutoff = time.time() - older_than_seconds
        for shard in self.root.iterdir():
            if shard.name == "tmp" or not shard.is_dir() or len(shard.name) != 2:
                continue
            for path in shard.iterdir():
                try:
                    if path.stat().st_mtime < cutoff:
                        yield f"{shard.name}/{path.name}"
                except FileNotFoundError:
                    pass
