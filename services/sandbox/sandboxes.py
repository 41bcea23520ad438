"""Sandboxes: one per user and session, a working directory and a kernel each, deleted
after an idle timeout. The domain of the sandbox service; it never imports grpc.

Sandboxes live in this process (their kernels are its children), so a sandbox belongs to
the replica that created it; docs/sandbox.md says what that means past one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime import metrics
from services.runtime.errors import (
    Aborted, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable, collect,
)
from services.runtime.validation import metadata_violations
from services.sandbox import walls
from services.sandbox import cgroups
from services.sandbox.cgroups import Cgroup
from services.sandbox.kernel import Kernel, KernelPaths, KernelStartError, Outcome, Stream
from services.sandbox.output import OutputLimiter
from services.sandbox.settings import Limits, SandboxSettings
from services.sandbox.workdir import Entry, WorkDir, check_path, media_type

log = logging.getLogger("parley.sandbox")

MAX_CODE_BYTES = 1024 * 1024
DEFAULT_INLINE_BYTES = 1024 * 1024
MAX_INLINE_BYTES = 3 * 1024 * 1024
# Inline files and displays together, so a result fits in gRPC's default 4 MiB message.
MAX_INLINE_TOTAL_BYTES = 3 * 1024 * 1024
MAX_SESSION_ID_CHARS = 128

READY, BUSY, EXPIRED = "ready", "busy", "expired"


@dataclass
class OutputFile:
    path: str
    media_type: str
    size_bytes: int
    data: bytes = b""
    inlined: bool = False


@dataclass
class ExecutionResult:
    outcome: Outcome
    kernel_restarted: bool = False
    output_files: list[OutputFile] = field(default_factory=list)
    note: str = ""


@dataclass
class SandboxFile:
    path: str
    size_bytes: int
    media_type: str
    mtime_ns: int
    source_file_id: str = ""


@dataclass
class Sandbox:
    id: str
    user_id: str
    session_id: str
    limits: Limits
    idle_timeout: float
    metadata: dict[str, str]
    create_time: float
    last_active_time: float
    directory: Path
    uid: int | None
    slot: int
    status: str = READY
    kernel: Kernel | None = None
    # The previous kernel died: the next execution says state was lost.
    kernel_lost: bool = False
    cgroup: Cgroup | None = None
    sources: dict[str, str] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def expire_time(self) -> float:
        return self.last_active_time + self.idle_timeout

    @property
    def work_dir(self) -> Path:
        return self.directory / "data"

    def touch(self) -> None:
        self.last_active_time = time.time()


class Sandboxes:
    def __init__(self, settings: SandboxSettings, sandbox_walls: walls.Walls) -> None:
        self.settings = settings
        self.walls = sandbox_walls
        self._live: dict[str, Sandbox] = {}
        # Expired sandboxes GetSandbox still reports: id -> (snapshot, forget-after time).
        self._expired: OrderedDict[str, tuple[Sandbox, float]] = OrderedDict()
        self._free_slots = list(range(settings.max_sandboxes - 1, -1, -1))
        self._reaper: asyncio.Task | None = None
        self._creating = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.settings.root_dir.mkdir(parents=True, exist_ok=True)
        # Sandbox uids must traverse the root to reach their own directory, and list nothing.
        self.settings.root_dir.chmod(0o711)
        blocked = walls.unreachable(self.settings.root_dir) if self.walls.per_sandbox_uid else None
        if blocked is not None:
            problem = (f"the sandboxes' uids cannot reach {self.settings.root_dir}: {blocked} is not searchable by "
                       f"others (chmod o+x {blocked}, or set PARLEY_SANDBOX_DIR elsewhere)")
            log.error("sandbox: %s", problem)
            self.walls = self.walls.blocked(problem)
        for stale in self.settings.root_dir.iterdir():
            # Sandboxes of a previous run of this service (their kernels died with it); only
            # what has a sandbox's name and layout, whatever else the directory holds.
            if _is_sandbox_id(stale.name) and (stale / "data").is_dir() and (stale / "host").is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        if self.walls.cgroups:
            cgroups.remove_stale(self.settings.cgroup_root, _is_sandbox_id)
        self._reaper = asyncio.create_task(self._reap_forever())

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for sandbox in list(self._live.values()):
            await self._destroy(sandbox)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval_seconds)
            try:
                await self.reap()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.warning("sandbox reaper failed", exc_info=True)

    async def reap(self) -> int:
        """Deletes the sandboxes idle past their timeout; returns how many."""
        now = time.time()
        reaped = 0
        for sandbox in list(self._live.values()):
            if sandbox.status != BUSY and sandbox.expire_time <= now:
                await self._destroy(sandbox, expired=True)
                reaped += 1
        while self._expired and next(iter(self._expired.values()))[1] <= now:
            self._expired.popitem(last=False)
        return reaped

    # -- create, get, delete ---------------------------------------------------------------

    def resolve_limits(self, requested: Limits | None) -> Limits:
        defaults, maximums = self.settings.defaults, self.settings.maximums
        if requested is None:
            return defaults
        violations = []
        values = {}
        for name in Limits.__dataclass_fields__:
            value = getattr(requested, name)
            if value < 0:
                violations.append(InvalidArgument.for_field(f"limits.{name}", "must not be negative").field_violations[0])
            elif value > getattr(maximums, name):
                violations.append(InvalidArgument.for_field(
                    f"limits.{name}", f"must be at most {getattr(maximums, name)}").field_violations[0])
            values[name] = value or getattr(defaults, name)
        collect(violations)
        if values["memory_bytes"] < 64 * 1024 * 1024:
            raise InvalidArgument.for_field("limits.memory_bytes", "must be at least 64 MiB (the kernel needs it)")
        if values["max_processes"] < 16:
            raise InvalidArgument.for_field("limits.max_processes", "must be at least 16 (the kernel's own threads)")
        return Limits(**values)

    async def create(self, user_id: str, *, limits: Limits | None = None, idle_timeout: float | None = None,
                     metadata: dict[str, str] | None = None, session_id: str = "") -> Sandbox:
        metadata = dict(metadata or {})
        violations = metadata_violations(metadata)
        if len(session_id) > MAX_SESSION_ID_CHARS:
            violations.append(InvalidArgument.for_field(
                "session_id", f"must be at most {MAX_SESSION_ID_CHARS} characters").field_violations[0])
        if idle_timeout is not None and not (0 < idle_timeout <= self.settings.max_idle_timeout_seconds):
            violations.append(InvalidArgument.for_field(
                "idle_timeout", f"must be positive and at most {self.settings.max_idle_timeout_seconds:.0f}s"
            ).field_violations[0])
        collect(violations)
        resolved = self.resolve_limits(limits)
        async with self._creating:
            if session_id:
                for sandbox in self._live.values():
                    if sandbox.user_id == user_id and sandbox.session_id == session_id:
                        sandbox.touch()
                        return sandbox
            if sum(1 for s in self._live.values() if s.user_id == user_id) >= self.settings.max_sandboxes_per_user:
                raise ResourceExhausted(
                    f"at most {self.settings.max_sandboxes_per_user} live sandboxes per user: delete one first",
                    reason="SANDBOX_QUOTA")
            if not self._free_slots:
                raise ResourceExhausted("this sandbox server is full; try again later", reason="SANDBOX_CAPACITY",
                                        retry_after=30.0)
            slot = self._free_slots.pop()
            sandbox_id = str(uuid.uuid4())
            uid = self.settings.uid_base + slot if self.walls.per_sandbox_uid else None
            now = time.time()
            sandbox = Sandbox(
                id=sandbox_id, user_id=user_id, session_id=session_id, limits=resolved,
                idle_timeout=idle_timeout or self.settings.idle_timeout_seconds, metadata=metadata,
                create_time=now, last_active_time=now, directory=self.settings.root_dir / sandbox_id, uid=uid,
                slot=slot,
            )
            try:
                await asyncio.to_thread(self._make_directories, sandbox)
            except BaseException:
                self._free_slots.append(slot)
                shutil.rmtree(sandbox.directory, ignore_errors=True)
                raise
            self._live[sandbox_id] = sandbox
            return sandbox

    def _make_directories(self, sandbox: Sandbox) -> None:
        # <root>/<id>/        0711 root: traversable, not listable
        #   data/             0700 sandbox uid: the working directory (/mnt/data inside)
        #   kernel/           0700 sandbox uid: the kernel's sockets (/run/kernel inside)
        #   host/             0700 service: the kernel's log; never mounted
        sandbox.directory.mkdir(mode=0o711)
        for name in ("data", "kernel"):
            path = sandbox.directory / name
            path.mkdir(mode=0o700)
            if sandbox.uid is not None:
                os.chown(path, sandbox.uid, sandbox.uid)
        (sandbox.directory / "host").mkdir(mode=0o700)

    def get(self, user_id: str, sandbox_id: str, *, allow_expired: bool = False) -> Sandbox:
        sandbox = self._live.get(sandbox_id)
        if sandbox is not None and sandbox.user_id == user_id:
            return sandbox
        expired = self._expired.get(sandbox_id)
        if expired is not None and expired[0].user_id == user_id:
            if allow_expired:
                return expired[0]
            raise FailedPrecondition(
                f"sandbox {sandbox_id} expired after {expired[0].idle_timeout:.0f}s without use and its files were "
                "deleted: create a new one", reason="SANDBOX_EXPIRED")
        raise NotFound(f"sandbox {sandbox_id} not found", reason="SANDBOX_NOT_FOUND")

    async def delete(self, user_id: str, sandbox_id: str) -> None:
        sandbox = self.get(user_id, sandbox_id)
        await self._destroy(sandbox)

    async def delete_for_session(self, user_id: str, session_id: str) -> None:
        """Deletes the user's live sandbox of the session (its session was deleted)."""
        async with self._creating:  # not while a CreateSandbox for the session is deciding
            found = [s for s in self._live.values() if s.user_id == user_id and s.session_id == session_id]
        if not found:
            raise NotFound(f"no live sandbox for session {session_id}", reason="SANDBOX_NOT_FOUND")
        for sandbox in found:
            await self._destroy(sandbox)

    async def delete_for_user(self, user_id: str) -> int:
        """Deletes every sandbox of the user (their data was deleted), with its kernel and
        files, and forgets their expired ones; returns how many were live."""
        async with self._creating:  # not while a CreateSandbox of theirs is deciding
            found = [s for s in self._live.values() if s.user_id == user_id]
            for sandbox_id in [i for i, (s, _) in self._expired.items() if s.user_id == user_id]:
                del self._expired[sandbox_id]
        for sandbox in found:
            await self._destroy(sandbox)
        return len(found)

    async def _destroy(self, sandbox: Sandbox, *, expired: bool = False) -> None:
        if self._live.pop(sandbox.id, None) is None:
            return
        if expired:
            # Before the cleanup's awaits: GetSandbox must never see it missing meanwhile.
            sandbox.status = EXPIRED
            self._expired[sandbox.id] = (sandbox, time.time() + self.settings.expired_memory_seconds)
            while len(self._expired) > 10_000:
                self._expired.popitem(last=False)
            log.info("sandbox %s expired", sandbox.id)
        if sandbox.kernel is not None:
            await sandbox.kernel.stop()
            sandbox.kernel = None
        if sandbox.cgroup is not None:
            await asyncio.to_thread(sandbox.cgroup.destroy)
            sandbox.cgroup = None
        await asyncio.to_thread(shutil.rmtree, sandbox.directory, True)
        self._free_slots.append(sandbox.slot)

    # -- execution -------------------------------------------------------------------------

    def check_code(self, code: str) -> None:
        if not code.strip():
            raise InvalidArgument.for_field("code", "must not be empty")
        if len(code.encode("utf-8", "replace")) > MAX_CODE_BYTES:
            raise InvalidArgument.for_field("code", f"must be at most {MAX_CODE_BYTES} bytes (1 MiB)",
                                            reason="CODE_TOO_LARGE")

    async def execute(self, user_id: str, sandbox_id: str, code: str, *, timeout: float | None = None,
                      max_inline_file_bytes: int = 0) -> AsyncIterator[Stream | ExecutionResult]:
        """Streams the execution's output, then its ExecutionResult."""
        self.check_code(code)
        if max_inline_file_bytes < 0 or max_inline_file_bytes > MAX_INLINE_BYTES:
            raise InvalidArgument.for_field("max_inline_file_bytes", f"must be between 0 and {MAX_INLINE_BYTES}")
        if timeout is not None and timeout <= 0:
            raise InvalidArgument.for_field("timeout", "must be positive")
        sandbox = self.get(user_id, sandbox_id)
        if not self.walls.can_execute:
            raise FailedPrecondition(self.walls.refusal(), reason="SANDBOX_UNAVAILABLE")
        if sandbox.lock.locked():
            raise Aborted(f"sandbox {sandbox_id} is already executing code; one execution at a time",
                          reason="SANDBOX_BUSY")
        async with sandbox.lock:
            sandbox.status = BUSY
            sandbox.touch()
            try:
                async for event in self._execute_locked(sandbox, code, timeout, max_inline_file_bytes):
                    yield event
            finally:
                sandbox.touch()
                if sandbox.id in self._live:
                    sandbox.status = READY

    async def _ensure_kernel(self, sandbox: Sandbox) -> bool:
        """Starts the kernel if it is not running; True if one had died (state lost)."""
        if sandbox.kernel is not None and sandbox.kernel.alive:
            return False
        restarted = sandbox.kernel_lost or sandbox.kernel is not None
        if sandbox.kernel is not None:
            await sandbox.kernel.stop()
        if self.walls.cgroups and sandbox.cgroup is None:
            sandbox.cgroup = await asyncio.to_thread(
                Cgroup.create, self.settings.cgroup_root, sandbox.id,
                memory_bytes=sandbox.limits.memory_bytes, max_processes=sandbox.limits.max_processes)
        kernel = Kernel(
            sandbox_id=sandbox.id,
            paths=KernelPaths(work_dir=sandbox.work_dir, kernel_dir=sandbox.directory / "kernel",
                              log_file=sandbox.directory / "host" / "kernel.log"),
            limits=sandbox.limits, sandbox_walls=self.walls, runtime_dir=self.settings.runtime_dir,
            uid=sandbox.uid, cgroup=sandbox.cgroup, start_timeout=self.settings.kernel_start_timeout_seconds,
            interrupt_grace=self.settings.interrupt_grace_seconds,
        )
        try:
            await kernel.start()
        except KernelStartError:
            raise Unavailable("the sandbox's Python kernel could not start; the service log has the details",
                              reason="KERNEL_START_FAILED", retry_after=5.0) from None
        sandbox.kernel = kernel
        sandbox.kernel_lost = False
        return restarted

    async def _execute_locked(self, sandbox: Sandbox, code: str, timeout: float | None,
                              max_inline: int) -> AsyncIterator[Stream | ExecutionResult]:
        restarted = await self._ensure_kernel(sandbox)
        kernel = sandbox.kernel
        assert kernel is not None
        workdir = WorkDir(sandbox.work_dir, sandbox.uid)
        limits = sandbox.limits
        scan_limit = self.settings.max_scanned_files
        before = {e.path: e for e in await asyncio.to_thread(workdir.walk, scan_limit)}
        wall = min(float(limits.wall_time_seconds), timeout or float("inf"))
        output = OutputLimiter(limits.output_bytes)
        outcome = Outcome()
        finished = False
        try:
            async for stream in kernel.execute(
                code, wall_seconds=wall, output=output, outcome=outcome,
                disk_over=lambda: workdir.usage(scan_limit) > limits.disk_bytes,
            ):
                yield stream
            finished = True
        finally:
            if not finished:
                # The caller went away mid-execution: stop the code before the next one.
                await self._abandon(sandbox)
        if outcome.kernel_died:
            sandbox.kernel_lost = True
        after = await asyncio.to_thread(workdir.walk, scan_limit)
        if not outcome.disk_exceeded and sum(e.disk_bytes for e in after) > limits.disk_bytes:
            outcome.disk_exceeded = True
        changed = [e for e in after if before.get(e.path) is None
                   or (before[e.path].mtime_ns, before[e.path].size_bytes) != (e.mtime_ns, e.size_bytes)]
        inline_budget = MAX_INLINE_TOTAL_BYTES - sum(len(d.data) for d in outcome.displays)
        files = await asyncio.to_thread(self._output_files, workdir, changed, max_inline or DEFAULT_INLINE_BYTES,
                                        inline_budget)
        metrics.sandbox_executed(outcome)
        yield ExecutionResult(outcome=outcome, kernel_restarted=restarted, output_files=files,
                              note=describe(outcome, restarted, limits, wall))

    async def _abandon(self, sandbox: Sandbox) -> None:
        kernel = sandbox.kernel
        if kernel is None or not kernel.alive:
            return
        kernel.interrupt()
        # Whatever the code does with the interrupt, the next execution must find the kernel
        # idle: if it is not within the grace, it goes (and its state with it).
        if not await kernel.settle(self.settings.interrupt_grace_seconds):
            await kernel.stop()
            sandbox.kernel_lost = True

    @staticmethod
    def _output_files(workdir: WorkDir, changed: list[Entry], max_inline: int, budget: int) -> list[OutputFile]:
        files: list[OutputFile] = []
        inline_total = 0
        for entry in changed:
            try:
                fd, info = workdir.open_file(entry.path)
            except NotFound:
                continue
            try:
                head = os.pread(fd, 16, 0)
                file = OutputFile(entry.path, media_type(entry.path, head), info.st_size)
                if info.st_size <= max_inline and inline_total + info.st_size <= budget:
                    data = os.pread(fd, info.st_size + 1, 0)
                    if len(data) == info.st_size:
                        file.data, file.inlined = data, True
                        inline_total += len(data)
            finally:
                os.close(fd)
            files.append(file)
        return files

    # -- files -----------------------------------------------------------------------------

    async def upload(self, user_id: str, sandbox_id: str, path: str, chunks: AsyncIterator[bytes],
                     source_file_id: str = "") -> SandboxFile:
        check_path(path, "metadata.path")
        sandbox = self.get(user_id, sandbox_id)
        workdir = WorkDir(sandbox.work_dir, sandbox.uid)
        used = await asyncio.to_thread(workdir.usage, self.settings.max_scanned_files)
        try:
            existing = workdir.read_head(path, 0)[1].st_blocks * 512
        except NotFound:
            existing = 0
        room = sandbox.limits.disk_bytes - used + existing
        try:
            pending = workdir.create(path)
        except NotFound:
            raise InvalidArgument.for_field("metadata.path", "a parent of this path is not a directory") from None
        try:
            async for chunk in chunks:
                if pending.size + len(chunk) > room:
                    raise ResourceExhausted(
                        f"the file does not fit in the sandbox's working directory ({sandbox.limits.disk_bytes} "
                        "bytes in all)", reason="SANDBOX_DISK_FULL")
                pending.write(chunk)
            size = pending.size
            pending.commit()
        finally:
            pending.discard()
        if source_file_id:
            sandbox.sources[path] = source_file_id
        else:
            sandbox.sources.pop(path, None)
        sandbox.touch()
        head, info = workdir.read_head(path, 16)
        return SandboxFile(path, size, media_type(path, head), info.st_mtime_ns, source_file_id)

    async def list_files(self, user_id: str, sandbox_id: str, directory: str = "") -> list[SandboxFile]:
        parts = check_path(directory, "directory", allow_empty=True)
        sandbox = self.get(user_id, sandbox_id)
        workdir = WorkDir(sandbox.work_dir, sandbox.uid)
        try:
            entries = await asyncio.to_thread(workdir.walk, self.settings.max_scanned_files, parts or None)
        except NotFound:
            return []
        return [SandboxFile(e.path, e.size_bytes, media_type(e.path), e.mtime_ns, sandbox.sources.get(e.path, ""))
                for e in entries]

    def open_file(self, user_id: str, sandbox_id: str, path: str) -> tuple[int, SandboxFile]:
        check_path(path)
        sandbox = self.get(user_id, sandbox_id)
        workdir = WorkDir(sandbox.work_dir, sandbox.uid)
        fd, info = workdir.open_file(path)
        head = os.pread(fd, 16, 0)
        sandbox.touch()
        return fd, SandboxFile(path, info.st_size, media_type(path, head), info.st_mtime_ns,
                               sandbox.sources.get(path, ""))


def _is_sandbox_id(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


def describe(outcome: Outcome, restarted: bool, limits: Limits, wall: float) -> str:
    """The note for the model: what happened, when it was not a plain run."""
    notes = []
    if restarted:
        notes.append("The Python kernel had died since the previous execution and was restarted: variables, "
                     "imports and definitions from earlier executions are lost (files in /mnt/data remain).")
    if outcome.memory_exceeded and outcome.kernel_died:
        notes.append(f"The code exceeded the memory limit ({limits.memory_bytes // (1024 * 1024)} MiB) and the "
                     "kernel was killed; the next execution starts a fresh kernel.")
    elif outcome.memory_exceeded:
        notes.append(f"The code ran out of memory (limit {limits.memory_bytes // (1024 * 1024)} MiB).")
    if outcome.timed_out and outcome.time_limit == "cpu":
        notes.append(f"The execution exceeded its CPU time limit ({limits.cpu_seconds}s) and was interrupted.")
    elif outcome.timed_out:
        notes.append(f"The execution exceeded its time limit ({wall:.0f}s wall clock) and was interrupted.")
    if outcome.disk_exceeded:
        notes.append(f"The working directory exceeded its disk limit ({limits.disk_bytes} bytes): delete files "
                     "before writing more.")
    if outcome.output_flooded:
        notes.append("The execution was interrupted because it kept printing far past the output limit.")
    elif outcome.output_truncated:
        notes.append(f"The output exceeded {limits.output_bytes} bytes and was truncated.")
    if outcome.kernel_died and not outcome.memory_exceeded:
        notes.append("The kernel died during this execution; the next execution starts a fresh kernel "
                     "(variables are lost, files remain).")
    if outcome.displays_dropped:
        notes.append(f"{outcome.displays_dropped} displayed images were dropped (too many or too large).")
    return " ".join(notes)


__all__ = ["Sandboxes", "Sandbox", "ExecutionResult", "OutputFile", "SandboxFile", "Stream", "describe"]
