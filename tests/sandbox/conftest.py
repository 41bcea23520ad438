"""Fixtures for the sandbox service: the real service on a loopback port with real
bubblewrap, seccomp, cgroups and ipykernel, and small limits so resource bombs stay small on
a shared machine (256 MiB memory, 10 s of CPU and 20 s of wall time per execution — a first
matplotlib import builds its font cache, slow on a loaded machine — 32 MiB of disk, 64 KiB of
output); the time-limit tests set their own, shorter limits."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import grpc
import pytest

from parley.sandbox.v1 import sandbox_pb2, sandbox_service_pb2, sandbox_service_pb2_grpc
from services.sandbox.app import build_app
from services.sandbox.settings import MIB, PROJECT_DIR, Limits, SandboxSettings
from services.sandbox.walls import find_bwrap
from tests.conftest import channel_to, private_temp_dir, serve_app

RUNTIME = PROJECT_DIR / ".venv-sandbox"
TEST_LIMITS = Limits(cpu_seconds=10, memory_bytes=256 * MIB, wall_time_seconds=20, disk_bytes=32 * MIB,
                     max_processes=64, output_bytes=64 * 1024)


_uid_ranges = itertools.count()


def sandbox_settings(root: Path, **overrides) -> SandboxSettings:
    # Each service of the test run gets its own uid range, as two services on a host must.
    values = dict(root_dir=root, runtime_dir=RUNTIME, bwrap=find_bwrap(), insecure=False, defaults=TEST_LIMITS,
                  uid_base=300_000 + 1000 * next(_uid_ranges),
                  max_sandboxes=32, max_sandboxes_per_user=16, interrupt_grace_seconds=2.0,
                  kernel_start_timeout_seconds=60.0, reap_interval_seconds=0.5)
    values.update(overrides)
    return SandboxSettings(**values)


def sandbox_root() -> Path:
    # Outside pytest's 0700 temp tree: the sandboxes' own uids must reach their directories.
    parent = private_temp_dir("parley-test-sandbox-")
    parent.chmod(0o711)
    return parent / "sandboxes"


@pytest.fixture(scope="session")
def bwrap_installed() -> str:
    path = find_bwrap()
    assert path, "bubblewrap is required for the sandbox tests: `make install` installs it (apt-get install bubblewrap)"
    assert (RUNTIME / "bin" / "python").exists(), "the sandbox runtime is missing: run `make install`"
    return path


@pytest.fixture(scope="session")
async def sandbox_server(identity_public_key, bwrap_installed):
    app = await build_app(sandbox_settings(sandbox_root()))
    running = await serve_app(app, "sandbox", identity_public_key)
    yield running
    await running.stop(0.5)


@pytest.fixture(scope="session")
async def sandbox_channel(sandbox_server):
    async with channel_to(sandbox_server) as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(sandbox_channel) -> sandbox_service_pb2_grpc.SandboxServiceStub:
    return sandbox_service_pb2_grpc.SandboxServiceStub(sandbox_channel)


@dataclasses.dataclass
class Ran:
    stdout: str
    stderr: str
    result: sandbox_pb2.ExecutionResult


async def execute(stub, metadata, sandbox_id: str, code: str, **request) -> Ran:
    stdout, stderr, result = [], [], None
    call = stub.ExecuteCode(sandbox_service_pb2.ExecuteCodeRequest(sandbox_id=sandbox_id, code=code, **request),
                            metadata=metadata, timeout=120)
    async for event in call:
        kind = event.WhichOneof("event")
        if kind == "stdout":
            stdout.append(event.stdout)
        elif kind == "stderr":
            stderr.append(event.stderr)
        else:
            result = event.result
    assert result is not None, "the stream ended without an ExecutionResult"
    return Ran("".join(stdout), "".join(stderr), result)


async def new_sandbox(stub, metadata, **request) -> sandbox_pb2.Sandbox:
    return await stub.CreateSandbox(sandbox_service_pb2.CreateSandboxRequest(**request), metadata=metadata)


async def upload(stub, metadata, sandbox_id: str, path: str, data: bytes, source_file_id: str = ""):
    async def requests():
        yield sandbox_service_pb2.UploadSandboxFileRequest(metadata=sandbox_service_pb2.UploadSandboxFileMetadata(
            sandbox_id=sandbox_id, path=path, source_file_id=source_file_id))
        for start in range(0, len(data), 256 * 1024):
            yield sandbox_service_pb2.UploadSandboxFileRequest(chunk=data[start:start + 256 * 1024])

    return await stub.UploadSandboxFile(requests(), metadata=metadata)


async def download(stub, metadata, sandbox_id: str, path: str) -> tuple[sandbox_pb2.SandboxFile, bytes]:
    file, chunks = None, []
    async for message in stub.DownloadSandboxFile(
            sandbox_service_pb2.DownloadSandboxFileRequest(sandbox_id=sandbox_id, path=path), metadata=metadata):
        if message.WhichOneof("data") == "file":
            file = message.file
        else:
            chunks.append(message.chunk)
    return file, b"".join(chunks)


async def healthy(stub, metadata) -> bool:
    """The service still serves: a fresh sandbox runs code."""
    sandbox = await new_sandbox(stub, metadata)
    try:
        ran = await execute(stub, metadata, sandbox.id, "print(6 * 7)")
        return ran.stdout == "42\n" and ran.result.exit_code == 0
    finally:
        await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=sandbox.id), metadata=metadata)


__all__ = ["grpc", "execute", "new_sandbox", "upload", "download", "healthy", "sandbox_settings", "sandbox_root"]
