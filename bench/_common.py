"""Helpers shared by the benchmarks: percentiles, a service subprocess, report lines."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


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
        self._env = dict(os.environ, **env, **{f"PARLEY_{name.upper()}_PORT": str(self.port), "PARLEY_LOG_LEVEL": "WARNING"})
        self._process: subprocess.Popen | None = None

    async def __aenter__(self) -> ServiceProcess:
        self._process = subprocess.Popen([sys.executable, "-m", f"services.{self.name}"], env=self._env,
                                         cwd=Path(__file__).resolve().parent.parent)
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
