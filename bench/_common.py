"""Helpers shared by the benchmarks: percentiles, a service subprocess, the pieces of a stack
(identity keys, the fake OpenAI upstream and its models file, a Redis, an admin API key,
PostgreSQL's postmaster), report lines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.identity import generate_private_key_pem, public_key_pem

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(latencies: list[float]) -> str:
    return (f"p50 {percentile(latencies, 0.5) * 1e3:.2f} ms, p99 {percentile(latencies, 0.99) * 1e3:.2f} ms, "
            f"mean {statistics.fmean(latencies) * 1e3:.2f} ms")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def run_concurrently(operation, clients: int, total: int) -> tuple[float, list[float]]:
    """Runs `operation()` `total` times over `clients` concurrent workers; returns
    (wall seconds, per-call latencies)."""
    latencies: list[float] = []
    remaining = total

    async def worker():
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await operation()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - started, latencies


class ServiceProcess:
    """`python -m services.<name>` on a free port, for as long as the `async with` lasts."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        # Its metrics port free too: the default (the gRPC port + 1000) may be taken.
        self._env = dict(os.environ, **{f"PARLEY_{name.upper()}_METRICS_PORT": str(free_port())}, **env,
                         **{f"PARLEY_{name.upper()}_PORT": str(self.port), "PARLEY_LOG_LEVEL": "WARNING"})
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def __aenter__(self) -> ServiceProcess:
        self._process = subprocess.Popen([sys.executable, "-m", f"services.{self.name}"], env=self._env,
                                         cwd=ROOT)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(600):
                if self._process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited while starting")
                try:
                    if (await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)).status == 1:
                        return self
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    async def __aexit__(self, *exc) -> None:
        assert self._process is not None
        self._process.terminate()
        await asyncio.to_thread(self._process.wait, 30)


# ---- the pieces of a stack -------------------------------------------------------------------


def identity_env(directory: Path) -> dict[str, str]:
    """A new internal identity key pair written to `directory`, as the services' environment."""
    private_key = generate_private_key_pem()
    (directory / "id.pem").write_bytes(private_key)
    (directory / "id.pub.pem").write_bytes(public_key_pem(private_key))
    return {"PARLEY_IDENTITY_PUBLIC_KEY_FILE": str(directory / "id.pub.pem"),
            "PARLEY_IDENTITY_PRIVATE_KEY_FILE": str(directory / "id.pem")}


# The gateway's per-key and per-user limits, off: a benchmark's client is one key.
UNLIMITED_GATEWAY = {"PARLEY_GATEWAY_KEY_REQUESTS_PER_MINUTE": "0", "PARLEY_GATEWAY_USER_REQUESTS_PER_MINUTE": "0",
                     "PARLEY_GATEWAY_KEY_CONCURRENT_STREAMS": "0", "PARLEY_GATEWAY_USER_CONCURRENT_STREAMS": "0"}


def admin_api_key(env: dict[str, str], user: str = "bench") -> str:
    """A new admin API key for `user`, made by the gateway's CLI against the stack's database."""
    made = subprocess.run([sys.executable, "-m", "services.gateway", "create-admin-key", "--user", user],
                          env={**os.environ, **env}, capture_output=True, text=True, check=True, cwd=ROOT)
    return made.stdout.strip()


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def fake_openai(directory: Path):
    """bench/_fake_openai.py on a free port, and a models file naming it provider `bench`
    (models `bench/fake-<tokens>`): yields (process, models file path)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench._fake_openai", str(port)], cwd=ROOT)
    models = directory / "models.yaml"
    models.write_text(f"providers:\n  bench:\n    type: openai_compatible\n    base_url: http://127.0.0.1:{port}/v1\n")
    try:
        yield process, models
    finally:
        stop_process(process)


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(directory: Path):
    """A `redis-server` of our own on a free loopback port, without persistence: yields
    (process, URL). Stopped (only this one) when the block ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian's 'redis-server' package; `make install` as root)")
    for _ in range(3):  # another process may take the free port first
        port = free_port()
        with open(directory / f"redis-{port}.log", "wb") as log:
            process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                        "--appendonly", "no", "--dir", str(directory), "--daemonize", "no"],
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for _ in range(200):
            if process.poll() is not None or _redis_answers(port):
                break
            time.sleep(0.05)
        if process.poll() is None and _redis_answers(port):
            try:
                yield process, f"redis://127.0.0.1:{port}/0"
            finally:
                stop_process(process)
            return
        process.kill()
        process.wait()
    raise RuntimeError(f"redis-server did not start; see the logs in {directory}")


def proc_stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (Linux): [0] state, [1] parent pid,
    [11] user CPU ticks, [12] system CPU ticks."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


async def postgres_pid(admin_url: str) -> int | None:
    """The postmaster's pid (the parent of a backend), or None when it is not on this machine."""
    conn = await asyncpg.connect(admin_url)
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        return int(proc_stat(backend)[1])  # read while the backend lives
    except OSError:
        return None
    finally:
        await conn.close()
