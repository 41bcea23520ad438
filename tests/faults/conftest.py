"""The fault tests' stack, started once for the package: every gRPC service as its own process
(tests/processes.py), a PostgreSQL and a Redis of their own that the tests stop and start
(servers.py), fake OpenAI, Anthropic and Mistral servers in this process behind the llm
service's real SDKs, the real sandbox (bubblewrap), and the files service's storage on a
4 MiB tmpfs of its own.

The tiny filesystem: the files service runs under `unshare -rm` (a user and mount namespace
of its own, which needs no privilege where the kernel allows unprivileged user namespaces, as
Debian's does) whose shell mounts a tmpfs on the storage directory, then execs the service.
Only that process sees the mount; the tests look into it through /proc/<pid>/root.

Each test leaves the stack as it found it: a test that kills a service starts it again, and
`healthy_stack` (autouse) checks before each test that every process still serves.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.conftest import private_temp_dir, rich_error
from tests.faults.servers import PostgresServer, RedisServer
from tests.llm.conftest import fakes  # noqa: F401 - fake vendors speaking the vendors' wire formats
from tests.processes import Suite

STORAGE_BYTES = 4 * 1024 * 1024
# The statuses a fault may answer with; never INTERNAL or UNKNOWN (a bug, or a stack trace).
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


@dataclass
class FaultStack:
    suite: Suite
    postgres: PostgresServer
    redis: RedisServer
    fakes: dict
    storage_dir: Path
    key: str  # an admin API key (user "fault-admin")

    def channel(self, service: str = "gateway") -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.suite.target(service))

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),)

    def storage(self) -> Path:
        """The files service's storage directory as that process sees it (its own tmpfs)."""
        return Path(f"/proc/{self.suite['files'].pid}/root") / self.storage_dir.relative_to("/")

    def model(self, vendor: str) -> str:
        """A fresh model name of a vendor, so that a test's scripted steps are its own."""
        return f"{vendor}/fault-{uuid.uuid4().hex[:8]}"


def _storage_wrapper(storage_dir: Path) -> tuple[str, ...]:
    unshare = shutil.which("unshare")
    assert unshare, "the disk-full fault test needs util-linux's unshare (Debian: util-linux)"
    script = f'mount -t tmpfs -o size={STORAGE_BYTES},mode=0700 tmpfs "$0" && exec "$@"'
    return (unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script, str(storage_dir))


@pytest.fixture(scope="session")
def fault_dir() -> Path:
    directory = private_temp_dir("parley-faults-")
    directory.chmod(0o711)  # PostgreSQL's user and the sandbox's uids reach their directories under it
    return directory


@pytest.fixture(scope="session")
def fault_postgres(fault_dir) -> PostgresServer:
    (fault_dir / "pg").mkdir()
    server = PostgresServer(fault_dir / "pg").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fault_redis(fault_dir) -> RedisServer:
    (fault_dir / "redis").mkdir()
    server = RedisServer(fault_dir / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def fault_stack(fault_dir, fault_postgres, fault_redis, fakes) -> FaultStack:  # noqa: F811
    storage_dir = fault_dir / "files-storage"
    storage_dir.mkdir()
    keep = os.environ.get("PARLEY_FAULTS_LOG_DIR")  # to read the processes' logs after the run
    suite = Suite(fault_dir / "suite", fault_postgres.url, wrappers={"files": _storage_wrapper(storage_dir)},
                  metrics=False, log_dir=Path(keep) if keep else None, extra_env={
                      "PARLEY_REDIS_URL": fault_redis.url,
                      # The load of the PostgreSQL test is far over the default 3,000 calls a
                      # minute; the Redis test gives its key a limit of its own.
                      "PARLEY_GATEWAY_KEY_REQUESTS_PER_MINUTE": "10000000",
                      "PARLEY_GATEWAY_USER_REQUESTS_PER_MINUTE": "10000000",
                      "PARLEY_FILES_STORAGE_DIR": str(storage_dir),
                      "PARLEY_LLM_WARM_EMBEDDINGS": "false",
                      "PARLEY_LLM_BACKOFF_BASE_SECONDS": "0.05",
                      "PARLEY_LLM_BACKOFF_MAX_SECONDS": "0.2",
                      "PARLEY_LLM_COOLDOWN_FAILURES": "0",
                      "PARLEY_GATEWAY_HEALTH_INTERVAL_SECONDS": "0.5",
                      "PARLEY_ASSISTANTS_LEASE_SECONDS": "3",
                      "PARLEY_ASSISTANTS_CLAIM_INTERVAL_SECONDS": "0.3",
                      # The sandbox's uids: a range no other sandbox on this machine uses at once.
                      "PARLEY_SANDBOX_UID_BASE": str(600_000 + (os.getpid() % 300) * 1000),
                      "PARLEY_SANDBOX_MEMORY_BYTES": str(256 * 1024 * 1024),
                      "PARLEY_SANDBOX_DISK_BYTES": str(32 * 1024 * 1024),
                      "PARLEY_SANDBOX_WALL_SECONDS": "60",
                      "OPENAI_API_KEY": "sk-fault-openai-0123456789abcdef",
                      "OPENAI_BASE_URL": fakes["openai"].base_url + "/v1",
                      "ANTHROPIC_API_KEY": "sk-ant-fault-0123456789abcdef",
                      "ANTHROPIC_BASE_URL": fakes["anthropic"].base_url,
                      "MISTRAL_API_KEY": "mistral-fault-0123456789abcdef",
                      "MISTRAL_BASE_URL": fakes["mistral"].base_url,
                  })
    (fault_dir / "suite").mkdir()
    (fault_dir / "suite").chmod(0o711)
    await asyncio.to_thread(suite.start)
    try:
        key = await asyncio.to_thread(suite.admin_key, "fault-admin")
        yield FaultStack(suite, fault_postgres, fault_redis, fakes, storage_dir, key)
    finally:
        await asyncio.to_thread(suite.stop)


@pytest.fixture(autouse=True)
async def healthy_stack(request):
    """Before each test: every process of the stack is running (a failed test may have left one dead)."""
    if "fault_stack" not in request.fixturenames:
        yield
        return
    stack: FaultStack = request.getfixturevalue("fault_stack")
    for process in stack.suite.processes.values():
        if not process.alive():
            await asyncio.to_thread(process.start().wait_serving)
    if stack.postgres.process is None or stack.postgres.process.poll() is not None:
        await asyncio.to_thread(stack.postgres.start)
    if stack.redis.process is None or stack.redis.process.poll() is not None:
        await asyncio.to_thread(stack.redis.start)
    yield


def assert_clear(error: grpc.aio.AioRpcError, *codes: grpc.StatusCode) -> str:
    """The call failed with one of `codes` and an ErrorInfo reason (never INTERNAL/UNKNOWN); returns the reason."""
    code, reason, _ = rich_error(error)
    assert code not in NEVER, f"{code.name}: {error.details()}"
    assert code in codes, f"expected one of {[c.name for c in codes]}, got {code.name}: {error.details()}"
    assert reason, f"{code.name} without an ErrorInfo reason: {error.details()}"
    return reason
