"""The walls around a sandbox's kernel: bubblewrap namespaces and mounts, a seccomp filter,
resource limits, an unprivileged uid and a cleared environment.

Each wall is here in one place so docs/sandbox.md and tests/sandbox/test_walls.py can name
them one by one. Nothing here imports grpc.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import resource
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("parley.sandbox.walls")

# Where things appear inside the sandbox.
WORK_DIR = "/mnt/data"
KERNEL_DIR = "/run/kernel"
RUNTIME_DIR = "/opt/python"
STARTUP_FILE = "/opt/parley/kernel_startup.py"

# Read-only system paths mounted into every sandbox (those that exist). /etc is NOT mounted
# whole: only what the interpreter and matplotlib need, never /etc/shadow and friends.
SYSTEM_PATHS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
ETC_PATHS = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/fonts",
             "/etc/mime.types", "/etc/alternatives")

INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`, Fedora: `dnf install bubblewrap`; "
                "`make install` does it as root), or set PARLEY_SANDBOX_INSECURE=1 to run code WITHOUT isolation "
                "(development only)")

# Syscalls the sandboxed code never needs and an escape would: debugging other processes,
# mounting, kernel modules and kexec, the kernel keyring, eBPF, perf events, new namespaces,
# and a few more that only root-like code uses.
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsmount", "fsconfig", "fspick", "move_mount",
    "open_tree", "mount_setattr",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd",
    "unshare", "setns",
    "open_by_handle_at", "name_to_handle_at",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "syslog", "lookup_dcookie", "iopl", "ioperm",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
)
_SOCK_RAW = 3
_SOCK_PACKET = 10
_AF_PACKET = 17
_AF_INET = 2
_AF_INET6 = 10
# CLONE_NEWUSER, NEWPID, NEWNET, NEWUTS, NEWIPC, NEWNS, NEWCGROUP
_CLONE_NAMESPACE_FLAGS = (0x10000000, 0x20000000, 0x40000000, 0x04000000, 0x08000000, 0x00020000, 0x02000000)


@functools.lru_cache(maxsize=8)
def supports(bwrap: str, option: str) -> bool:
    """Whether this bubblewrap knows `option` (from its --help)."""
    try:
        result = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return option in result.stdout + result.stderr


def find_bwrap(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("bwrap")


def seccomp_filter() -> bytes:
    """The BPF program bubblewrap installs before it starts the kernel (`--seccomp FD`).

    Denied calls fail with EPERM (so code sees an ordinary error, not a crash); clone3 fails
    with ENOSYS so the C library falls back to clone, whose namespace flags can be checked."""
    import tempfile

    import pyseccomp as seccomp

    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    eperm = seccomp.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        try:
            rules.add_rule(eperm, name)
        except (OSError, ValueError, RuntimeError):
            pass  # not a syscall on this architecture
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    # clone with any namespace flag: one rule per flag, as a masked comparison matches exact bits.
    for flag in _CLONE_NAMESPACE_FLAGS:
        rules.add_rule(eperm, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    # Raw IP sockets and packet sockets (the type may carry SOCK_NONBLOCK/CLOEXEC). Netlink's
    # SOCK_RAW stays: the C library's getifaddrs needs it, and it sees only the sandbox's
    # own empty network namespace.
    for family in (_AF_INET, _AF_INET6):
        for kind in (_SOCK_RAW, _SOCK_PACKET):
            rules.add_rule(eperm, "socket", seccomp.Arg(0, seccomp.EQ, family), seccomp.Arg(1, seccomp.MASKED_EQ, 0xF, kind))
    rules.add_rule(eperm, "socket", seccomp.Arg(0, seccomp.EQ, _AF_PACKET))
    with tempfile.TemporaryFile() as out:
        rules.export_bpf(out)
        out.seek(0)
        return out.read()


@dataclass(frozen=True)
class Walls:
    """What this machine offers; decided once at start-up."""

    bwrap: str | None
    seccomp: bytes | None = field(repr=False)
    # Running as root: each sandbox gets its own unprivileged host uid.
    per_sandbox_uid: bool
    cgroups: bool
    insecure: bool
    # The sandbox's Python environment (ipykernel and the data packages) is installed and
    # reachable by the sandboxes' uids.
    runtime_ready: bool = True
    # What stops executions (each names its fix), then what only weakens a wall.
    blockers: tuple[str, ...] = field(default_factory=tuple)
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def can_execute(self) -> bool:
        return self.runtime_ready and (self.isolated or self.insecure)

    @property
    def isolated(self) -> bool:
        return self.bwrap is not None and self.seccomp is not None

    def refusal(self) -> str:
        missing = "; ".join(self.blockers) or "the sandbox's isolation is not available"
        hint = f". To fix: {INSTALL_HINT}" if self.bwrap is None and not self.insecure else ""
        return f"code execution is unavailable on this server: {missing}{hint}"

    def blocked(self, problem: str) -> Walls:
        """These walls with one more reason executions are refused."""
        return dataclasses.replace(self, runtime_ready=False, blockers=(*self.blockers, problem),
                                   problems=(*self.problems, problem))


def probe(bwrap: str | None, insecure: bool, cgroups_ok: bool, runtime_dir: Path) -> Walls:
    blockers: list[str] = []
    warnings: list[str] = []
    seccomp: bytes | None = None
    runtime_ready = (runtime_dir / "bin" / "python").exists()
    if not runtime_ready:
        blockers.append(f"the sandbox's Python environment is missing at {runtime_dir} (`make install` creates it)")
    if bwrap is None:
        (warnings if insecure else blockers).append("bubblewrap (`bwrap`) is not installed")
    try:
        seccomp = seccomp_filter()
    except Exception as exc:  # noqa: BLE001 - libseccomp missing or unusable
        (warnings if insecure else blockers).append(
            f"the seccomp filter cannot be built (libseccomp: {type(exc).__name__}; install libseccomp2)")
    if os.geteuid() == 0 and runtime_ready and bwrap is not None:
        for directory in (runtime_dir, *(d for d in [python_home(runtime_dir)] if d is not None)):
            blocked = unreachable(directory)
            if blocked is not None:
                blockers.append(f"the sandboxes' uids cannot reach {directory}: {blocked} is not searchable by "
                                f"others (chmod o+x {blocked}, or set PARLEY_SANDBOX_RUNTIME to a reachable copy)")
                runtime_ready = False
                break
    if not cgroups_ok:
        warnings.append("no writable cgroup v1 memory/pids controllers: memory falls back to RLIMIT_AS and "
                        "processes to RLIMIT_NPROC")
    return Walls(bwrap=bwrap, seccomp=seccomp, per_sandbox_uid=os.geteuid() == 0, cgroups=cgroups_ok,
                 insecure=insecure, runtime_ready=runtime_ready, blockers=tuple(blockers),
                 problems=tuple(blockers + warnings))


def sandbox_environment(uid: int) -> dict[str, str]:
    """The whole environment the code sees: nothing of the service's own (no secrets)."""
    return {
        "PATH": f"{RUNTIME_DIR}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": WORK_DIR,
        "USER": "sandbox",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": "/tmp",
        "MPLCONFIGDIR": "/tmp/matplotlib",
        "XDG_CACHE_HOME": "/tmp/cache",
        "IPYTHONDIR": "/tmp/ipython",
        "JUPYTER_RUNTIME_DIR": "/tmp/jupyter",
        "JUPYTER_PLATFORM_DIRS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # One thread per numeric library: the process limit counts threads.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
        # glibc reserves 64 MiB of address space per thread arena: with RLIMIT_AS as the memory
        # limit (no cgroups), that alone would use it up.
        "MALLOC_ARENA_MAX": "2",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }


def passwd_entry(uid: int) -> bytes:
    return (f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
            f"sandbox:x:{uid}:{uid}:sandbox:{WORK_DIR}:/usr/sbin/nologin\n"
            f"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n").encode()


def group_entry(uid: int) -> bytes:
    return f"root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n".encode()


def bwrap_command(
    bwrap: str,
    *,
    directories: dict[str, Path],
    uid: int,
    seccomp_fd: int,
    passwd_fd: int,
    group_fd: int,
    startup_fd: int,
    command: Sequence[str],
) -> list[str]:
    """bubblewrap's arguments: new user, pid, network, ipc, uts and cgroup namespaces; a
    read-only system; a fresh /tmp, /dev and /proc; only the working directory (and the
    kernel's socket directory) writable; every capability dropped; no further user
    namespaces; killed with its parent; a cleared environment; the seccomp filter.

    `directories` are the host directories to bind, by mount point (sandbox_directories).
    bubblewrap runs as the sandbox's uid, so it must be able to walk to each of them
    (unreachable() says which one it cannot)."""
    args = [
        bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        # bubblewrap 0.8+; the seccomp filter denies new namespaces on older ones too.
        *(["--disable-userns"] if supports(bwrap, "--disable-userns") else []),
        "--uid", str(uid), "--gid", str(uid),
        "--hostname", "sandbox",
        "--die-with-parent",
        "--new-session",
        "--cap-drop", "ALL",
        "--clearenv",
    ]
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            args += ["--ro-bind", path, path]
    for path in ETC_PATHS:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    for mount_point, path in directories.items():
        if mount_point not in (WORK_DIR, KERNEL_DIR, RUNTIME_DIR):
            args += ["--ro-bind", str(path), mount_point]
    args += [
        "--ro-bind-data", str(passwd_fd), "/etc/passwd",
        "--ro-bind-data", str(group_fd), "/etc/group",
        "--ro-bind-data", str(startup_fd), STARTUP_FILE,
        "--ro-bind", str(directories[RUNTIME_DIR]), RUNTIME_DIR,
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        "--bind", str(directories[WORK_DIR]), WORK_DIR,
        "--bind", str(directories[KERNEL_DIR]), KERNEL_DIR,
        "--remount-ro", "/",
        "--chdir", WORK_DIR,
        "--seccomp", str(seccomp_fd),
    ]
    for key, value in sandbox_environment(uid).items():
        args += ["--setenv", key, value]
    return [*args, "--", *command]


def sandbox_directories(runtime_dir: Path, work_dir: Path, kernel_dir: Path) -> dict[str, Path]:
    """Host directories bound into the sandbox, by mount point: the runtime, the working and
    kernel directories, and the runtime's base interpreter when it lives outside /usr."""
    directories = {RUNTIME_DIR: runtime_dir, WORK_DIR: work_dir, KERNEL_DIR: kernel_dir}
    base = python_home(runtime_dir)
    if base is not None and not any(str(base).startswith(p + "/") for p in SYSTEM_PATHS):
        directories[str(base)] = base
    return directories


def unreachable(path: Path) -> Path | None:
    """The first ancestor of `path` that other users cannot search (bubblewrap, running as a
    sandbox's own uid, could not bind `path`), or None."""
    for ancestor in reversed(path.resolve().parents):
        try:
            if not ancestor.stat().st_mode & 0o001:
                return ancestor
        except OSError:
            return ancestor
    return None


def python_home(runtime_dir: Path) -> Path | None:
    """The base installation a venv's interpreter comes from (pyvenv.cfg's `home`'s parent)."""
    try:
        for line in (runtime_dir / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                home = Path(value.strip()).resolve()
                return home.parent if home.name == "bin" else home
    except OSError:
        return None
    return None


ADDRESS_SPACE_SLACK = 512 * 1024 * 1024


def resource_limits(disk_bytes: int, memory_bytes: int | None, nproc: int | None) -> list[tuple[int, int]]:
    """setrlimit values for the kernel process: file size, core dumps, open files, and the
    fallbacks for what cgroups would otherwise bound (address space, processes)."""
    limits = [
        (resource.RLIMIT_FSIZE, disk_bytes),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, 1024),
    ]
    if memory_bytes is not None:
        # Address space, not memory: the kernel reserves far more than it touches (thread
        # stacks, malloc arenas, mapped libraries: about 370 MiB with numpy, pandas and
        # matplotlib imported), so the slack keeps the limit about what the code allocates.
        limits.append((resource.RLIMIT_AS, memory_bytes + ADDRESS_SPACE_SLACK))
    if nproc is not None:
        limits.append((resource.RLIMIT_NPROC, nproc))
    return limits


LAUNCHER = Path(__file__).with_name("launch.py")


def launcher_command(*, cgroup_procs: Sequence[str], rlimits: Sequence[tuple[int, int]], uid: int | None,
                     command: Sequence[str]) -> list[str]:
    """The command that joins the sandbox's cgroups, sets the limits and, as root, becomes the
    sandbox's own unprivileged uid before it execs `command` (bubblewrap then needs no
    privilege: it builds its namespaces as that user). See launch.py for why a program."""
    import json
    import sys

    config = json.dumps({"procs": list(cgroup_procs), "rlimits": [list(r) for r in rlimits], "uid": uid})
    return [sys.executable, "-I", "-S", str(LAUNCHER), config, "--", *command]
