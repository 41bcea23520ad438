"""A sandbox's long-lived Python kernel: IPython's `ipykernel` inside bubblewrap, spoken to
with `jupyter_client` over ZeroMQ `ipc://` sockets in a directory bound into the sandbox
(the sandbox has no network, so no TCP; Unix sockets in a shared directory cross network
namespaces). The kernel protocol gives us stdout/stderr streams, exceptions with their
traceback and display messages carrying matplotlib's PNGs, and keeps variables between
executions, without a hand-written REPL.

One execution at a time; the caller (sandboxes.Sandbox) enforces that.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import queue
import re
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_client.asynchronous import AsyncKernelClient

from services.sandbox import walls
from services.sandbox.cgroups import Cgroup
from services.sandbox.output import OutputLimiter
from services.sandbox.settings import Limits

log = logging.getLogger("parley.sandbox.kernel")

_PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
DISPLAY_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
MAX_DISPLAYS = 16
MAX_DISPLAY_BYTES = 2 * 1024 * 1024
# An output this many times the limit stops the execution: it is only burning CPU.
FLOOD_FACTOR = 16


# Waits (at most 2 s) for the kernel's killed children, so none stays a zombie holding a pid.
REAP_CODE = (
    "import os as _parley_os, time as _parley_time\n"
    "_parley_until = _parley_time.monotonic() + 2\n"
    "try:\n"
    "    while _parley_time.monotonic() < _parley_until:\n"
    "        if _parley_os.waitpid(-1, _parley_os.WNOHANG)[0] == 0:\n"
    "            _parley_time.sleep(0.01)\n"
    "except ChildProcessError:\n"
    "    pass\n"
    "del _parley_os, _parley_time, _parley_until\n"
)


class KernelStartError(Exception):
    """The kernel did not come up (the runtime is missing or broken)."""


@dataclass
class Stream:
    name: str  # "stdout" or "stderr"
    text: str


@dataclass
class Display:
    media_type: str
    data: bytes
    text: str = ""


@dataclass
class Outcome:
    """How one execution ended (see parley.sandbox.v1.ExecutionResult)."""

    exit_code: int = 0
    timed_out: bool = False
    # Which time limit: "wall" or "cpu".
    time_limit: str = ""
    memory_exceeded: bool = False
    kernel_died: bool = False
    disk_exceeded: bool = False
    output_truncated: bool = False
    output_flooded: bool = False
    interrupted: bool = False
    error_name: str = ""
    error_value: str = ""
    traceback: str = ""
    displays: list[Display] = field(default_factory=list)
    displays_dropped: int = 0
    duration_seconds: float = 0.0


@dataclass
class KernelPaths:
    work_dir: Path    # the working directory (host side)
    kernel_dir: Path  # the kernel's sockets and connection file (host side, bound into the sandbox)
    log_file: Path    # the kernel process's own stderr (start-up failures), never shown to callers


def tree_cpu_seconds(root_pid: int) -> float:
    """CPU time of a process and its descendants, from /proc (when there is no cpuacct group)."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        times[pid] = (int(fields[11]) + int(fields[12])) / ticks
    total, stack = 0.0, [root_pid]
    while stack:
        pid = stack.pop()
        total += times.get(pid, 0.0)
        stack.extend(children.get(pid, ()))
    return total


class Kernel:
    def __init__(self, *, sandbox_id: str, paths: KernelPaths, limits: Limits, sandbox_walls: walls.Walls,
                 runtime_dir: Path, uid: int | None, cgroup: Cgroup | None, start_timeout: float,
                 interrupt_grace: float) -> None:
        self.sandbox_id = sandbox_id
        self.paths = paths
        self.limits = limits
        self.walls = sandbox_walls
        self.runtime_dir = runtime_dir
        # Host uid to run as (root only); None means this process's own.
        self.uid = uid
        self.cgroup = cgroup
        self.start_timeout = start_timeout
        self.interrupt_grace = interrupt_grace
        self.process: asyncio.subprocess.Process | None = None
        self.client: AsyncKernelClient | None = None
        # The message id of an execution whose caller went away before it ended.
        self._running: str | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    # -- start and stop --------------------------------------------------------------------

    def _connection(self, ip: str, key: str) -> dict:
        return {"transport": "ipc", "ip": ip, **_PORTS, "key": key, "signature_scheme": "hmac-sha256",
                "kernel_name": "python3"}

    async def start(self) -> None:
        key = secrets.token_hex(32)
        kernel_dir = self.paths.kernel_dir
        for port in _PORTS.values():
            with contextlib.suppress(FileNotFoundError):
                (kernel_dir / f"k-{port}").unlink()
        inside_ip = f"{walls.KERNEL_DIR}/k" if self.walls.isolated else str(kernel_dir / "k")
        if self.uid is not None:
            # The kernel creates its sockets here; once it has, the directory goes back to
            # the service (see below).
            os.chown(kernel_dir, self.uid, self.uid)
            kernel_dir.chmod(0o700)
        connection_file = kernel_dir / "connection.json"
        connection_file.write_text(json.dumps(self._connection(inside_ip, key)))
        run_uid = self.uid if self.uid is not None else os.getuid()
        if self.uid is not None:
            os.chown(connection_file, self.uid, self.uid)
        connection_file.chmod(0o400)

        startup_code = startup_script(self.limits.output_bytes)
        startup_inside = f"{walls.STARTUP_FILE}" if self.walls.isolated else str(kernel_dir / "startup.py")
        if not self.walls.isolated:
            (kernel_dir / "startup.py").write_bytes(startup_code)
        kernel_args = ["-m", "ipykernel_launcher", "--HistoryManager.enabled=False", "--IPKernelApp.quiet=True",
                       f"--IPKernelApp.exec_files={startup_inside}"]
        cgroup_procs = self.cgroup.procs_files() if self.cgroup else []
        rlimits = walls.resource_limits(
            self.limits.disk_bytes,
            memory_bytes=None if self.cgroup else self.limits.memory_bytes,
            # Without a pids group and without a uid of its own, RLIMIT_NPROC would count the
            # service's own threads too; it still bounds a fork bomb.
            nproc=None if self.cgroup else self.limits.max_processes + (0 if self.uid is not None else 512),
        )
        pass_fds: list[int] = []
        log_fd = os.open(self.paths.log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if self.walls.isolated:
                seccomp_fd = _data_pipe(self.walls.seccomp or b"")
                passwd_fd = _data_pipe(walls.passwd_entry(run_uid))
                group_fd = _data_pipe(walls.group_entry(run_uid))
                startup_fd = _data_pipe(startup_code)
                pass_fds = [seccomp_fd, passwd_fd, group_fd, startup_fd]
                argv = walls.bwrap_command(
                    self.walls.bwrap or "bwrap",
                    directories=walls.sandbox_directories(self.runtime_dir, self.paths.work_dir, kernel_dir),
                    uid=run_uid, seccomp_fd=seccomp_fd, passwd_fd=passwd_fd,
                    group_fd=group_fd, startup_fd=startup_fd,
                    command=[f"{walls.RUNTIME_DIR}/bin/python", *kernel_args, "-f", f"{walls.KERNEL_DIR}/connection.json"],
                )
                env = {"PATH": "/usr/bin:/bin"}
                cwd = "/"
            else:
                argv = [str(self.runtime_dir / "bin" / "python"), *kernel_args, "-f", str(connection_file)]
                env = walls.sandbox_environment(run_uid)
                env.update(HOME=str(self.paths.work_dir), PATH=f"{self.runtime_dir}/bin:/usr/bin:/bin",
                           MPLCONFIGDIR=str(kernel_dir / "matplotlib"), IPYTHONDIR=str(kernel_dir / "ipython"),
                           JUPYTER_RUNTIME_DIR=str(kernel_dir / "jupyter"))
                cwd = str(self.paths.work_dir)
            argv = walls.launcher_command(cgroup_procs=cgroup_procs, rlimits=rlimits, uid=self.uid, command=argv)
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, env=env, cwd=cwd,
                pass_fds=pass_fds, start_new_session=True,
            )
        finally:
            os.close(log_fd)
            for fd in pass_fds:
                os.close(fd)

        client = AsyncKernelClient()
        client.load_connection_info(self._connection(str(kernel_dir / "k"), key))
        client.session.key = key.encode()
        client.start_channels(hb=False)
        self.client = client
        ready = asyncio.ensure_future(client.wait_for_ready(timeout=self.start_timeout))
        died = asyncio.ensure_future(self.process.wait())
        try:
            done, _ = await asyncio.wait({ready, died}, timeout=self.start_timeout + 1,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            died.cancel()
        if ready in done and ready.exception() is None:
            if self.uid is not None:
                # The code must not swap a socket for a symlink to some other Unix socket of
                # the host: the service reconnects to these paths, as root. The sockets stay
                # usable; the directory is no longer the sandbox's to change.
                os.chown(kernel_dir, os.getuid(), os.getgid())
                kernel_dir.chmod(0o755)
            return
        why = (f"exit code {self.process.returncode}" if self.process.returncode is not None
               else repr(ready.exception()) if ready.done() else "timed out")
        ready.cancel()
        with contextlib.suppress(BaseException):
            await ready
        await self.stop()
        log.error("sandbox %s: the kernel did not start (%s); its log: %s", self.sandbox_id, why, self._log_tail())
        raise KernelStartError("the sandbox's Python kernel did not start")

    def _log_tail(self) -> str:
        try:
            with open(self.paths.log_file, "rb") as handle:
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - 2000))
                return handle.read().decode(errors="replace").strip()
        except OSError:
            return "(no log)"

    async def stop(self) -> None:
        """Kills the kernel and everything it started."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.stop_channels()
            self.client = None
        if self.process is not None:
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
            if self.cgroup is not None:
                await asyncio.to_thread(self.cgroup.kill_all)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.process.wait(), 10)

    def _kernel_pids(self) -> set[int]:
        """Host pids of bubblewrap and the kernel itself (what survives between executions)."""
        keep: set[int] = set()
        if self.process is None:
            return keep
        keep.add(self.process.pid)
        frontier = [self.process.pid]
        # bwrap → bwrap (pid 1 of the sandbox) → python: three levels, no further.
        for _ in range(2):
            found = []
            for pid in frontier:
                with contextlib.suppress(OSError):
                    found += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            keep.update(found)
            frontier = found
        return keep

    def kill_strays(self) -> int:
        """Processes the last execution left behind (a fork bomb's children, say) are killed:
        nothing but the kernel runs between executions."""
        if self.cgroup is None or not self.alive:
            return 0
        return self.cgroup.kill_all(keep=self._kernel_pids())

    # -- execution -------------------------------------------------------------------------

    def interrupt(self) -> None:
        """KeyboardInterrupt in the running code (ipykernel's control-channel interrupt)."""
        if self.client is None:
            return
        message = self.client.session.msg("interrupt_request", content={})
        self.client.control_channel.send(message)

    def cpu_seconds(self) -> float:
        if self.cgroup is not None:
            return self.cgroup.cpu_seconds()
        return tree_cpu_seconds(self.process.pid) if self.process else 0.0

    async def execute(
        self,
        code: str,
        *,
        wall_seconds: float,
        output: OutputLimiter,
        disk_over: Callable[[], bool],
        outcome: Outcome,
    ) -> AsyncIterator[Stream]:
        """Runs `code`, yielding its output as it comes; fills `outcome` as it ends."""
        assert self.client is not None and self.process is not None
        client, started = self.client, time.monotonic()
        cpu_start = self.cpu_seconds()
        oom_start = self.cgroup.oom_kills() if self.cgroup else 0
        message_id = client.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
        self._running = message_id
        interrupted_at: float | None = None
        next_check = started + 0.25
        next_disk_check = started + 1.0
        try:
            while True:
                if self.process.returncode is not None:
                    outcome.kernel_died = True
                    break
                try:
                    message = await client.get_iopub_msg(timeout=0.1)
                except queue.Empty:
                    message = None
                if message is not None and message.get("parent_header", {}).get("msg_id") == message_id:
                    kind, content = message["msg_type"], message["content"]
                    if kind == "stream":
                        kept = output.add(content.get("text", ""))
                        if kept:
                            yield Stream("stderr" if content.get("name") == "stderr" else "stdout", kept)
                    elif kind in ("display_data", "execute_result"):
                        data = content.get("data", {})
                        self._collect_display(data, outcome)
                        if kind == "execute_result" and "text/plain" in data and not _has_image(data):
                            kept = output.add(str(data["text/plain"]) + "\n")
                            if kept:
                                yield Stream("stdout", kept)
                    elif kind == "error":
                        outcome.error_name = str(content.get("ename", ""))
                        outcome.output_flooded = outcome.error_name == "OutputLimitExceeded"
                        outcome.error_value = str(content.get("evalue", ""))
                        outcome.traceback = _ANSI.sub("", "\n".join(content.get("traceback", [])))[:64 * 1024]
                    elif kind == "status" and content.get("execution_state") == "idle":
                        break
                now = time.monotonic()
                if now < next_check:
                    continue
                next_check = now + 0.25
                if interrupted_at is None:
                    reason = None
                    if now - started > wall_seconds:
                        reason = "wall"
                    elif self.cpu_seconds() - cpu_start > self.limits.cpu_seconds:
                        reason = "cpu"
                    elif output.produced > FLOOD_FACTOR * output.limit:
                        reason = "output"
                    elif now >= next_disk_check:
                        next_disk_check = now + 1.0
                        if await asyncio.to_thread(disk_over):
                            reason = "disk"
                    if reason is not None:
                        outcome.timed_out = reason in ("wall", "cpu")
                        outcome.time_limit = reason if outcome.timed_out else ""
                        outcome.output_flooded = reason == "output"
                        outcome.disk_exceeded = reason == "disk"
                        outcome.interrupted = True
                        interrupted_at = now
                        self.interrupt()
                elif now - interrupted_at > self.interrupt_grace:
                    log.info("sandbox %s: the code ignored the interrupt; killing the kernel", self.sandbox_id)
                    await self.stop()
                    outcome.kernel_died = True
                    break
        finally:
            outcome.duration_seconds = time.monotonic() - started
            outcome.output_truncated = output.truncated
        if outcome.kernel_died:
            if self.process.returncode is None:
                await self.stop()
            code_ = self.process.returncode or 0
            outcome.exit_code = -9 if code_ in (0, 1) else (-(code_ - 128) if code_ > 128 else code_)
            if self.cgroup is not None and self.cgroup.oom_kills() > oom_start:
                outcome.memory_exceeded = True
            await self.stop()
            return
        self._running = None
        await self._drain_shell_reply(message_id)
        if outcome.error_name:
            outcome.exit_code = 1
            if outcome.error_name == "MemoryError":
                outcome.memory_exceeded = True
        await self.clean_up_strays()

    async def clean_up_strays(self) -> None:
        """Kills what the last execution left running and reaps it."""
        if not await asyncio.to_thread(self.kill_strays):
            return
        # The killed strays are zombies, holding pids of the limit, until the kernel reaps
        # them; the kernel may need a thread or two to do it, so it gets room meanwhile.
        if self.cgroup is not None:
            self.cgroup.set_max_processes(self.limits.max_processes + 32)
        try:
            await self._reap_children()
        finally:
            if self.cgroup is not None:
                self.cgroup.set_max_processes(self.limits.max_processes)

    async def _reap_children(self) -> None:
        """Killed strays stay zombies (holding pids of the sandbox's limit) until their parent,
        the kernel, waits for them: a silent execution does."""
        assert self.client is not None
        message_id = self.client.execute(REAP_CODE, silent=True, store_history=False, allow_stdin=False)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and self.alive:
            try:
                message = await self.client.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            if (message.get("parent_header", {}).get("msg_id") == message_id and message["msg_type"] == "status"
                    and message["content"].get("execution_state") == "idle"):
                break
        await self._drain_shell_reply(message_id)

    async def settle(self, grace: float) -> bool:
        """After an interrupt of an abandoned execution: whether the kernel finished it within
        `grace` seconds (its output is dropped; nobody is listening any more). Either the
        idle status or the execute reply will do: the cancelled read may have taken the one."""
        if self._running is None or self.client is None:
            return self.alive
        running, deadline = self._running, time.monotonic() + grace
        while time.monotonic() < deadline and self.alive:
            finished = False
            try:
                message = await self.client.get_iopub_msg(timeout=0.05)
                finished = (message.get("parent_header", {}).get("msg_id") == running
                            and message["msg_type"] == "status"
                            and message["content"].get("execution_state") == "idle")
            except queue.Empty:
                pass
            try:
                reply = await self.client.get_shell_msg(timeout=0.05)
                finished = finished or reply.get("parent_header", {}).get("msg_id") == running
            except queue.Empty:
                pass
            if finished:
                self._running = None
                await self.clean_up_strays()
                return True
        return False

    def _collect_display(self, data: dict, outcome: Outcome) -> None:
        for media_type in DISPLAY_TYPES:
            if media_type not in data:
                continue
            raw = data[media_type]
            payload = raw.encode() if media_type == "image/svg+xml" else base64.b64decode(raw)
            used = sum(len(d.data) for d in outcome.displays)
            if len(outcome.displays) >= MAX_DISPLAYS or used + len(payload) > MAX_DISPLAY_BYTES:
                outcome.displays_dropped += 1
            else:
                outcome.displays.append(Display(media_type, payload, str(data.get("text/plain", ""))[:500]))
            return

    async def _drain_shell_reply(self, message_id: str) -> None:
        assert self.client is not None
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                reply = await self.client.get_shell_msg(timeout=0.2)
            except queue.Empty:
                continue
            if reply.get("parent_header", {}).get("msg_id") == message_id:
                return


STARTUP_TEMPLATE = Path(__file__).with_name("kernel_startup.py")


def startup_script(output_bytes: int) -> bytes:
    """kernel_startup.py with this sandbox's output bounds: a little more than the service
    keeps (so the service's own truncation marker shows), and the flood point."""
    text = STARTUP_TEMPLATE.read_text()
    return (text.replace("__KEPT__", str(output_bytes + 1024))
            .replace("__STOP__", str(FLOOD_FACTOR * output_bytes)).encode())


def _has_image(data: dict) -> bool:
    return any(t in data for t in DISPLAY_TYPES)


def _data_pipe(data: bytes) -> int:
    """A pipe's read end already holding `data` (bubblewrap reads its --seccomp and
    --ro-bind-data inputs from file descriptors)."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
    finally:
        os.close(write_fd)
    return read_fd
