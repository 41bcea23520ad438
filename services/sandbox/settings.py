"""The sandbox service's settings, all from `PARLEY_SANDBOX_*` variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.config import env_bool, env_float, env_int, env_str, state_dir

MIB = 1024 * 1024
GIB = 1024 * MIB

# The project's checkout: `make install` puts the sandbox's Python environment beside .venv.
PROJECT_DIR = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Limits:
    """Per-sandbox resource limits (see parley.sandbox.v1.SandboxLimits)."""

    cpu_seconds: int = 30
    memory_bytes: int = 512 * MIB
    wall_time_seconds: int = 60
    disk_bytes: int = GIB
    max_processes: int = 128
    output_bytes: int = MIB


@dataclass(frozen=True)
class SandboxSettings:
    # Holds one directory per sandbox (its working directory and the kernel's sockets).
    root_dir: Path
    # The sandbox's Python environment (a venv with ipykernel, numpy, pandas, matplotlib),
    # mounted read-only inside every sandbox.
    runtime_dir: Path
    # The bubblewrap binary; None when it is not installed.
    bwrap: str | None
    # Run kernels without walls when bubblewrap is missing (development only; logged loudly).
    insecure: bool
    idle_timeout_seconds: float = 20 * 60
    max_idle_timeout_seconds: float = 24 * 3600
    defaults: Limits = field(default_factory=Limits)
    maximums: Limits = field(default_factory=lambda: Limits(
        cpu_seconds=600, memory_bytes=4 * GIB, wall_time_seconds=3600, disk_bytes=8 * GIB,
        max_processes=1024, output_bytes=16 * MIB,
    ))
    # Live sandboxes this process holds at once, and per user.
    max_sandboxes: int = 64
    max_sandboxes_per_user: int = 8
    # As root, sandbox N runs as host uid uid_base + N (its own RLIMIT_NPROC accounting and
    # file ownership); otherwise every sandbox runs as the service's own uid.
    uid_base: int = 200_000
    kernel_start_timeout_seconds: float = 60.0
    # After an interrupt (a limit, a cancelled call), how long the code gets to stop before
    # the kernel is killed.
    interrupt_grace_seconds: float = 3.0
    # How long GetSandbox still answers EXPIRED for an expired sandbox.
    expired_memory_seconds: float = 24 * 3600
    reap_interval_seconds: float = 30.0
    # Files of the working directory an execution scans for changes (beyond them, outputs
    # are not reported).
    max_scanned_files: int = 10_000
    cgroup_root: Path = Path("/sys/fs/cgroup")

    @classmethod
    def from_env(cls) -> SandboxSettings:
        from services.sandbox.walls import find_bwrap

        defaults = Limits(
            cpu_seconds=env_int("PARLEY_SANDBOX_CPU_SECONDS", 30, minimum=1),
            memory_bytes=env_int("PARLEY_SANDBOX_MEMORY_BYTES", 512 * MIB, minimum=64 * MIB),
            wall_time_seconds=env_int("PARLEY_SANDBOX_WALL_SECONDS", 60, minimum=1),
            disk_bytes=env_int("PARLEY_SANDBOX_DISK_BYTES", GIB, minimum=MIB),
            max_processes=env_int("PARLEY_SANDBOX_MAX_PROCESSES", 128, minimum=16),
            output_bytes=env_int("PARLEY_SANDBOX_OUTPUT_BYTES", MIB, minimum=1024),
        )
        return cls(
            root_dir=Path(env_str("PARLEY_SANDBOX_DIR") or str(state_dir() / "sandbox")).resolve(),
            runtime_dir=Path(env_str("PARLEY_SANDBOX_RUNTIME") or str(PROJECT_DIR / ".venv-sandbox")),
            bwrap=find_bwrap(env_str("PARLEY_SANDBOX_BWRAP")),
            insecure=env_bool("PARLEY_SANDBOX_INSECURE", False),
            idle_timeout_seconds=env_float("PARLEY_SANDBOX_IDLE_TIMEOUT_SECONDS", 20 * 60, minimum=1),
            defaults=defaults,
            max_sandboxes=env_int("PARLEY_SANDBOX_MAX_SANDBOXES", 64, minimum=1),
            max_sandboxes_per_user=env_int("PARLEY_SANDBOX_MAX_PER_USER", 8, minimum=1),
            uid_base=env_int("PARLEY_SANDBOX_UID_BASE", 200_000, minimum=1000),
            kernel_start_timeout_seconds=env_float("PARLEY_SANDBOX_KERNEL_START_SECONDS", 60.0, minimum=1),
            reap_interval_seconds=env_float("PARLEY_SANDBOX_REAP_SECONDS", 30.0, minimum=0.1),
        )
