"""cgroup v1 memory, pids and cpuacct groups, one per sandbox, under `parley-sandbox/`.

The memory group bounds the kernel and everything it starts (the OOM killer acts inside it
alone), the pids group bounds processes and threads (a fork bomb stops there), and cpuacct
measures CPU time per execution. Where the controllers are missing or not writable the
sandbox falls back to rlimits (walls.resource_limits).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("parley.sandbox.cgroups")

PARENT = "parley-sandbox"
CONTROLLERS = ("memory", "pids", "cpuacct")
# Where the host has it: caps a sandbox at one core, whatever threads its code leaves
# running between executions.
OPTIONAL_CONTROLLERS = ("cpu",)
CPU_PERIOD_US = 100_000


def available(root: Path) -> bool:
    """Whether the v1 controllers exist and this process may create groups in them."""
    for controller in CONTROLLERS:
        base = root / controller
        if not (base / "cgroup.procs").exists():
            return False
        try:
            (base / PARENT).mkdir(exist_ok=True)
            probe = base / PARENT / f"probe-{os.getpid()}"
            probe.mkdir(exist_ok=True)
            probe.rmdir()
        except OSError:
            return False
    return True


def remove_stale(root: Path, is_sandbox_name) -> int:
    """Removes the empty groups a previous run of the service left behind (a group with a
    process in it, another service's, cannot be removed and is left alone)."""
    removed = 0
    for controller in (*CONTROLLERS, *OPTIONAL_CONTROLLERS):
        parent = root / controller / PARENT
        if not parent.is_dir():
            continue
        for group in parent.iterdir():
            if group.is_dir() and is_sandbox_name(group.name):
                try:
                    group.rmdir()
                    removed += 1
                except OSError:
                    pass
    return removed


@dataclass
class Cgroup:
    root: Path
    name: str

    def _dir(self, controller: str) -> Path:
        return self.root / controller / PARENT / self.name

    def _controllers(self) -> list[str]:
        return [*CONTROLLERS, *(c for c in OPTIONAL_CONTROLLERS if (self.root / c / PARENT).is_dir())]

    @classmethod
    def create(cls, root: Path, name: str, *, memory_bytes: int, max_processes: int) -> Cgroup:
        group = cls(root, name)
        for controller in OPTIONAL_CONTROLLERS:
            with contextlib.suppress(OSError):
                (root / controller / PARENT).mkdir(exist_ok=True)
        for controller in group._controllers():
            group._dir(controller).mkdir(exist_ok=True)
        memory = group._dir("memory")
        (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
        # Without this the kernel could dodge the limit through swap (where the host has any).
        with contextlib.suppress(OSError):
            (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
        (group._dir("pids") / "pids.max").write_text(str(max_processes))
        if "cpu" in group._controllers():
            with contextlib.suppress(OSError):
                (group._dir("cpu") / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                (group._dir("cpu") / "cpu.cfs_quota_us").write_text(str(CPU_PERIOD_US))
        return group

    def set_max_processes(self, count: int) -> None:
        (self._dir("pids") / "pids.max").write_text(str(count))

    def procs_files(self) -> list[str]:
        return [str(self._dir(c) / "cgroup.procs") for c in self._controllers()]

    def cpu_seconds(self) -> float:
        try:
            return int((self._dir("cpuacct") / "cpuacct.usage").read_text()) / 1e9
        except (OSError, ValueError):
            return 0.0

    def oom_kills(self) -> int:
        """How many times the memory limit was hit (OOM kills where the kernel reports them)."""
        try:
            text = (self._dir("memory") / "memory.oom_control").read_text()
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
            return int((self._dir("memory") / "memory.failcnt").read_text())
        except (OSError, ValueError):
            return 0

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self._dir("pids") / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def kill_all(self, keep: set[int] = frozenset()) -> int:
        """SIGKILLs every process of the group except `keep`; returns how many it signalled."""
        killed = 0
        for _ in range(50):  # processes may fork while we kill: repeat until none is left
            targets = [p for p in self.pids() if p not in keep]
            if not targets:
                break
            for pid in targets:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            time.sleep(0.01)
        return killed

    def destroy(self) -> None:
        self.kill_all()
        for controller in self._controllers():
            directory = self._dir(controller)
            for _ in range(100):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # the last processes are still exiting
            else:
                log.warning("could not remove cgroup %s", directory)
