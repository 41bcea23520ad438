"""The whole suite as `make run` starts it: every service of the launcher's SUITE as its own
process on a free port, one fresh database, identity keys, fake vendors behind the llm
service's real SDKs, and a log file per process for the traceback check.

Calls are made from an event loop on a thread of its own (`Loop`), so the synchronous
hypothesis loop can send a batch of cases concurrently and wait for it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 150.0
MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
INFRA_SERVICES = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                  "grpc.reflection.v1.ServerReflection"}


class Loop:
    """An asyncio loop on a daemon thread; `run(coro)` waits for its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 600.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    name: str
    port: int
    popen: subprocess.Popen
    log_path: Path
    services: list[str] = field(default_factory=list)  # from its reflection
    log_offset: int = 0

    def new_log(self) -> str:
        """Log text written since the last call."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        self.log_offset += len(data)
        return data.decode("utf-8", "replace")


def suite_services() -> list[str]:
    """The launcher's gRPC services in start order (each service issue adds its entry there).
    HTTP services (the REST edge) serve no RPC of the contracts: they have tests of their own."""
    import services.__main__ as launcher

    table = getattr(launcher, "SERVICES", None)
    if table is None:  # the launcher before its service table
        return list(launcher.SUITE)
    return [service.name for service in table if not getattr(service, "http_health", None)]


def gateway_backends() -> list[str]:
    from services.gateway.routes import BACKENDS

    return list(BACKENDS)


def stack_env(database_url: str, state_dir: Path, private_key: Path, public_key: Path, ports: dict[str, int],
              vendors: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OTEL_", "OPENAI_", "ANTHROPIC_",
                                                                      "MISTRAL_", "OLLAMA_"))}
    env.update({
        "PYTHONPATH": str(REPO),
        "PARLEY_DATABASE_URL": database_url,
        "PARLEY_STATE_DIR": str(state_dir),
        "PARLEY_IDENTITY_PRIVATE_KEY_FILE": str(private_key),
        "PARLEY_IDENTITY_PUBLIC_KEY_FILE": str(public_key),
        "PARLEY_LOG_LEVEL": "INFO",
        "PARLEY_SHUTDOWN_GRACE_SECONDS": "1",
        # The fuzz cases come fast from two users: limits are not what is under test here.
        "PARLEY_GATEWAY_KEY_REQUESTS_PER_MINUTE": "10000000",
        "PARLEY_GATEWAY_USER_REQUESTS_PER_MINUTE": "10000000",
        "PARLEY_GATEWAY_KEY_CONCURRENT_STREAMS": "10000",
        "PARLEY_GATEWAY_USER_CONCURRENT_STREAMS": "10000",
        "PARLEY_GATEWAY_HEALTH_INTERVAL_SECONDS": "1",
        "PARLEY_GATEWAY_KEY_CACHE_SECONDS": "1",
        "PARLEY_LLM_WARM_EMBEDDINGS": "false",
        "PARLEY_LLM_BACKOFF_BASE_SECONDS": "0.01",
        "PARLEY_LLM_BACKOFF_MAX_SECONDS": "0.05",
        "PARLEY_LLM_QUEUE_TIMEOUT_SECONDS": "5",
        "PARLEY_LLM_USAGE_FLUSH_SECONDS": "0.2",
        "PARLEY_FILES_POLL_SECONDS": "0.5",
        "OPENAI_API_KEY": "sk-fuzz-openai-0123456789abcdef",
        "OPENAI_BASE_URL": vendors["openai"] + "/v1",
        "ANTHROPIC_API_KEY": "sk-ant-fuzz-0123456789abcdef",
        "ANTHROPIC_BASE_URL": vendors["anthropic"],
        "MISTRAL_API_KEY": "mistral-fuzz-0123456789abcdef",
        "MISTRAL_BASE_URL": vendors["mistral"],
        "OLLAMA_BASE_URL": vendors["openai"] + "/v1",
    })
    for name, port in ports.items():
        env[f"PARLEY_{name.upper()}_PORT"] = str(port)
        env[f"PARLEY_{name.upper()}_METRICS_PORT"] = "off"  # port + 1000 could be anyone's
        if name != "gateway":
            env[f"PARLEY_{name.upper()}_TARGET"] = f"127.0.0.1:{port}"
    for name in gateway_backends():
        env.setdefault(f"PARLEY_{name.upper()}_TARGET", "none")  # a backend this suite does not run
    return env


def spawn(name: str, env: dict[str, str], log_dir: Path, port: int) -> Process:
    log_path = log_dir / f"{name}.log"
    out = open(log_path, "wb")  # noqa: SIM115 - the child owns it; closed when the stack stops
    popen = subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env, cwd=REPO, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    popen.log_file = out  # type: ignore[attr-defined]
    return Process(name, port, popen, log_path)


async def health_status(channel: grpc.aio.Channel, service: str = "") -> str:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                 timeout=5)
    except grpc.aio.AioRpcError as exc:
        return f"error {exc.code().name}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def wait_serving(process: Process) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    async with grpc.aio.insecure_channel(f"127.0.0.1:{process.port}") as channel:
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited with {process.popen.returncode} while starting; "
                                   f"log:\n{process.log_path.read_text(errors='replace')[-3000:]}")
            if await health_status(channel) == "SERVING":
                return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{process.name} did not become SERVING in {STARTUP_SECONDS:.0f}s")


async def reflected_services(channel: grpc.aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for reply in stub.ServerReflectionInfo(requests(), timeout=10):
        return sorted(s.name for s in reply.list_services_response.service if s.name not in INFRA_SERVICES)
    return []


def stop(process: Process) -> None:
    if process.popen.poll() is None:
        process.popen.send_signal(signal.SIGTERM)
        try:
            process.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()
    process.popen.log_file.close()  # type: ignore[attr-defined]


def issue_admin_keys(env: dict[str, str], users: list[str]) -> dict[str, str]:
    """An admin key per user, issued the way an operator does (`create-admin-key`), in parallel."""
    runs = {user: subprocess.Popen([sys.executable, "-m", "services.gateway", "create-admin-key", "--user", user,
                                    "--name", "fuzz"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for user in users}
    secrets = {}
    for user, run in runs.items():
        out, err = run.communicate(timeout=120)
        if run.returncode != 0:
            raise RuntimeError(f"create-admin-key --user {user} failed: {err[-2000:]}")
        secrets[user] = out.strip().splitlines()[-1]
    return secrets
