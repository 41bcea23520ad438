"""A sandbox's working directory as the service sees it from the host.

The code inside may plant symlinks, FIFOs or deep trees there, so the service never follows
a symlink (every component is opened with O_NOFOLLOW beneath the directory's own file
descriptor), opens nothing that is not a regular file, and bounds every walk.
"""

from __future__ import annotations

import mimetypes
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from services.runtime.errors import InvalidArgument, NotFound

MAX_PATH_CHARS = 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    path: str
    size_bytes: int
    disk_bytes: int
    mtime_ns: int


def check_path(path: str, field: str = "path", *, allow_empty: bool = False) -> list[str]:
    """The components of a relative "/"-separated path; INVALID_ARGUMENT for absolute paths,
    "..", ".", empty components or NUL."""
    if not path:
        if allow_empty:
            return []
        raise InvalidArgument.for_field(field, "must not be empty")
    if len(path) > MAX_PATH_CHARS:
        raise InvalidArgument.for_field(field, f"must be at most {MAX_PATH_CHARS} characters")
    if "\x00" in path:
        raise InvalidArgument.for_field(field, "must not contain NUL")
    if path.startswith("/"):
        raise InvalidArgument.for_field(field, "must be relative to the working directory (no leading '/')")
    parts = path.rstrip("/").split("/") if allow_empty else path.split("/")
    if any(part == ".." for part in parts):
        raise InvalidArgument.for_field(field, "must not contain '..'", reason="PATH_TRAVERSAL")
    if any(part in ("", ".") for part in parts):
        raise InvalidArgument.for_field(field, "must not contain empty or '.' components")
    return parts


def media_type(path: str, head: bytes = b"") -> str:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    guessed, _ = mimetypes.guess_type(path)
    return guessed or "application/octet-stream"


class WorkDir:
    def __init__(self, root: Path, uid: int | None) -> None:
        self.root = root
        # Files the service writes are given to the sandbox's uid (root only).
        self.uid = uid

    def _open_parent(self, parts: list[str], *, create: bool) -> int:
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts[:-1]:
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        if self.uid is not None:
                            os.chown(part, self.uid, self.uid, dir_fd=fd, follow_symlinks=False)
                    except FileExistsError:
                        pass
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError, OSError) as exc:
                    raise NotFound(f"no such file in the sandbox: {'/'.join(parts)}", reason="FILE_NOT_FOUND") from exc
                os.close(fd)
                fd = next_fd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def open_file(self, path: str) -> tuple[int, os.stat_result]:
        """A read-only fd of a regular file at `path` (never through a symlink)."""
        parts = check_path(path)
        parent = self._open_parent(parts, create=False)
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        except OSError:
            raise NotFound(f"no such file in the sandbox: {path}", reason="FILE_NOT_FOUND") from None
        finally:
            os.close(parent)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise NotFound(f"not a regular file in the sandbox: {path}", reason="FILE_NOT_FOUND")
        return fd, info

    def create(self, path: str) -> PendingFile:
        """A new file for `path`, written under a temporary name and renamed into place by
        commit(), so a failed upload leaves the old file (or nothing) behind."""
        parts = check_path(path, "metadata.path")
        parent = self._open_parent(parts, create=True)
        try:
            existing = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(existing.st_mode):
                raise InvalidArgument.for_field("metadata.path", "names a directory in the sandbox")
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(parent)
            raise
        temporary = f".upload-{uuid.uuid4().hex}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=parent)
        except BaseException:
            os.close(parent)
            raise
        return PendingFile(parent, fd, temporary, parts[-1], self.uid)

    def walk(self, limit: int, directory: list[str] | None = None) -> list[Entry]:
        """Regular files under the directory (or a subdirectory), symlinks not followed, at
        most `limit` of them, in path order. Each directory is opened beneath its parent's
        descriptor with O_NOFOLLOW, so code swapping a directory for a symlink mid-walk
        cannot make the service list anything outside."""
        found: list[Entry] = []
        prefix = "/".join(directory or [])
        if directory:
            parent = self._open_parent([*directory, "x"], create=False)  # refuses symlinked components
        else:
            parent = os.open(self.root, _DIR_FLAGS)
        stack = [(parent, prefix)]
        try:
            while stack:
                fd, relative = stack.pop()
                try:
                    if len(found) >= limit:
                        continue
                    with os.scandir(fd) as entries:
                        listed = list(entries)
                    for entry in listed:
                        name = f"{relative}/{entry.name}" if relative else entry.name
                        try:
                            info = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
                            if stat.S_ISDIR(info.st_mode):
                                stack.append((os.open(entry.name, _DIR_FLAGS, dir_fd=fd), name))
                            elif stat.S_ISREG(info.st_mode):
                                found.append(Entry(name, info.st_size, info.st_blocks * 512, info.st_mtime_ns))
                                if len(found) >= limit:
                                    break
                        except OSError:
                            continue
                except OSError:
                    continue
                finally:
                    os.close(fd)
        finally:
            for fd, _ in stack:
                os.close(fd)
        found.sort(key=lambda e: e.path)
        return found

    def usage(self, limit: int) -> int:
        """Bytes the directory uses on disk (allocated blocks, so sparse files count as used)."""
        return sum(entry.disk_bytes for entry in self.walk(limit))

    def read_head(self, path: str, size: int) -> tuple[bytes, os.stat_result]:
        fd, info = self.open_file(path)
        try:
            return os.read(fd, size), info
        finally:
            os.close(fd)


class PendingFile:
    def __init__(self, parent_fd: int, fd: int, temporary: str, name: str, uid: int | None) -> None:
        self._parent, self._fd, self._temporary, self._name, self._uid = parent_fd, fd, temporary, name, uid
        self.size = 0

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view):]
        self.size += len(chunk)

    def commit(self) -> None:
        try:
            if self._uid is not None:
                os.fchown(self._fd, self._uid, self._uid)
            os.close(self._fd)
            self._fd = -1
            os.rename(self._temporary, self._name, src_dir_fd=self._parent, dst_dir_fd=self._parent)
        finally:
            self.discard()

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            try:
                os.unlink(self._temporary, dir_fd=self._parent)
            except OSError:
                pass
        if self._parent >= 0:
            os.close(self._parent)
            self._parent = -1
