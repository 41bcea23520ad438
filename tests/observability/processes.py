"""The real Parley processes, each `python -m services.<name>`, on free ports with their
metrics ports, started in dependency order and stopped with SIGTERM: what the observability
tests and the tracing benchmark measure. Their logs go to files (`Suite.log(service)`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.identity import generate_private_key_pem, public_key_pem

ROOT = Path(__file__).resolve().parents[2]
ORDER = ("llm", "sessions", "files", "sandbox", "assistants", "gateway")
CALLS = {"gateway": ("llm", "sessions", "files", "assistants"), "assistants": ("llm", "sessions", "files", "sandbox"),
         "files": ("llm",)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Suite:
    directory: Path
    database_url: str
    services: tuple[str, ...] = ORDER
    extra_env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def log(self, service: str) -> str:
        return (self.directory / f"{service}.log").read_text(errors="replace")

    def start(self, timeout: float = 240.0) -> Suite:
        self.directory.mkdir(parents=True, exist_ok=True)
        private = generate_private_key_pem()
        (self.directory / "identity.pem").write_bytes(private)
        (self.directory / "identity.pub.pem").write_bytes(public_key_pem(private))
        self.ports = {s: free_port() for s in self.services}
        self.metrics_ports = {s: free_port() for s in self.services}
        env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "PARLEY_"))}
        env.update(
            PARLEY_STATE_DIR=str(self.directory / "state"),
            PARLEY_DATABASE_URL=self.database_url,
            PARLEY_IDENTITY_PUBLIC_KEY_FILE=str(self.directory / "identity.pub.pem"),
            PARLEY_IDENTITY_PRIVATE_KEY_FILE=str(self.directory / "identity.pem"),
            PARLEY_PAGE_TOKEN_SECRET=os.environ.get("PARLEY_PAGE_TOKEN_SECRET", "observability-test-secret-0123456789"),
            PARLEY_SHUTDOWN_GRACE_SECONDS="2",
            PARLEY_LOG_LEVEL="INFO",
            PARLEY_FILES_POLL_SECONDS="0.2",
            PARLEY_LLM_USAGE_FLUSH_SECONDS="0.2",
            PYTHONPATH=str(ROOT),
        )
        for service in ORDER:
            if service in self.ports:
                env[f"PARLEY_{service.upper()}_PORT"] = str(self.ports[service])
                env[f"PARLEY_{service.upper()}_METRICS_PORT"] = str(self.metrics_ports[service])
                env[f"PARLEY_{service.upper()}_TARGET"] = self.target(service)
            else:
                env[f"PARLEY_{service.upper()}_TARGET"] = "none"
        env.update(self.extra_env)
        self.env = env
        try:
            for service in ORDER:
                if service not in self.ports:
                    continue
                log = open(self.directory / f"{service}.log", "wb")  # noqa: SIM115 - the child's for its life
                self.processes[service] = subprocess.Popen(
                    [sys.executable, "-m", f"services.{service}"], cwd=ROOT, env=env,
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                self._wait_serving(service, time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_serving(self, service: str, deadline: float) -> None:
        with grpc.insecure_channel(self.target(service)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.processes[service].poll() is not None:
                    raise RuntimeError(f"{service} exited while starting:\n{self.log(service)[-4000:]}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"{service} did not become healthy:\n{self.log(service)[-4000:]}")

    def admin_key(self, user: str = "observer") -> str:
        result = subprocess.run([sys.executable, "-m", "services.gateway", "create-admin-key", "--user", user],
                                cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"create-admin-key failed: {result.stderr[-2000:]}")
        return result.stdout.strip()

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
