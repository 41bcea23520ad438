"""The real Parley processes for the tests that need them as processes: each service as
`python -m services.<name>` (as `make run` starts it) on a free port, with identity keys, a
state directory and a log file of its own, started in dependency order, and each one
killable (SIGKILL), stoppable (SIGTERM) and restartable on its own port.

Used by the observability suites (and the tracing benchmark), the fuzz stack and the fault
tests. `Suite(...).start()` waits until every service reports SERVING; `suite["llm"]` is one
`ServiceProcess`.
"""

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

ROOT = Path(__file__).resolve().parents[1]
# The gRPC services of `make run`, dependencies first (the REST edge is HTTP: tests of its own).
ORDER = ("llm", "sessions", "files", "sandbox", "assistants", "gateway")
STARTUP_SECONDS = 240.0
# Variables of the calling environment a suite never inherits: its own settings come from here.
FOREIGN_PREFIXES = ("OTEL_", "PARLEY_", "OPENAI_", "ANTHROPIC_", "MISTRAL_", "OLLAMA_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` different free ports. They must differ: gRPC servers bind with SO_REUSEPORT, so
    two services handed the same port would both listen on it and share its calls."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class ServiceProcess:
    """One service process. `wrapper` is a command prefix (e.g. `unshare ...`) it runs under."""

    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    wrapper: tuple[str, ...] = ()
    metrics_port: int | None = None
    popen: subprocess.Popen | None = None
    services: list[str] = field(default_factory=list)  # filled by callers that reflect on it
    log_offset: int = 0
    _log_file: object = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> ServiceProcess:
        """Starts it (again, on the same port) in a session of its own, appending to its log."""
        assert not self.alive(), f"{self.name} is already running"
        self._close_log()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - the child's for its life
        self.popen = subprocess.Popen([*self.wrapper, sys.executable, "-m", f"services.{self.name}"], cwd=ROOT,
                                      env=self.env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_serving(self, timeout: float = STARTUP_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"{self.name} exited with {self.popen and self.popen.returncode} while "
                                       f"starting:\n{self.log()[-4000:]}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become SERVING in {timeout:.0f}s:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a crash would: no shutdown, nothing flushed. Only the
        service's own process (what it started itself is left to fend for itself)."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def terminate(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait: the graceful shutdown (SIGKILL if it takes longer than `timeout`)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._close_log()

    def restart(self, *, hard: bool = False, timeout: float = STARTUP_SECONDS) -> None:
        """Stops it (SIGKILL when `hard`, else SIGTERM), starts it on the same port, waits for SERVING."""
        self.kill() if hard else self.terminate()
        self.start().wait_serving(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def new_log(self) -> str:
        """Log text written since the last call."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        self.log_offset += len(data)
        return data.decode("utf-8", "replace")

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None


@dataclass
class Suite:
    """Services of `ORDER` as processes on one database. Backends not in `services` are
    reached at the target "none" (their calls answer UNAVAILABLE)."""

    directory: Path
    database_url: str
    services: tuple[str, ...] = ORDER
    extra_env: dict[str, str] = field(default_factory=dict)
    private_key: bytes | None = None  # the gateway's identity key; a new one by default
    metrics: bool = True  # a /metrics port per service (else "off")
    wrappers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    log_dir: Path | None = None
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ports(self) -> dict[str, int]:
        return {name: process.port for name, process in self.processes.items()}

    @property
    def metrics_ports(self) -> dict[str, int]:
        return {name: p.metrics_port for name, p in self.processes.items() if p.metrics_port is not None}

    def __getitem__(self, service: str) -> ServiceProcess:
        return self.processes[service]

    def target(self, service: str) -> str:
        return self.processes[service].target

    def log(self, service: str) -> str:
        return self.processes[service].log()

    def _environment(self, ports: dict[str, int], metrics_ports: dict[str, int]) -> dict[str, str]:
        private = self.private_key or generate_private_key_pem()
        (self.directory / "identity.pem").write_bytes(private)
        (self.directory / "identity.pem").chmod(0o600)
        (self.directory / "identity.pub.pem").write_bytes(public_key_pem(private))
        env = {key: value for key, value in os.environ.items() if not key.startswith(FOREIGN_PREFIXES)}
        env.update(
            PYTHONPATH=str(ROOT),
            PARLEY_STATE_DIR=str(self.directory / "state"),
            PARLEY_DATABASE_URL=self.database_url,
            PARLEY_IDENTITY_PUBLIC_KEY_FILE=str(self.directory / "identity.pub.pem"),
            PARLEY_IDENTITY_PRIVATE_KEY_FILE=str(self.directory / "identity.pem"),
            PARLEY_PAGE_TOKEN_SECRET=os.environ.get("PARLEY_PAGE_TOKEN_SECRET", "suite-test-secret-0123456789abcdef"),
            PARLEY_SHUTDOWN_GRACE_SECONDS="2",
            PARLEY_LOG_LEVEL="INFO",
            PARLEY_FILES_POLL_SECONDS="0.2",
            PARLEY_LLM_USAGE_FLUSH_SECONDS="0.2",
        )
        for service in ORDER:
            if service in ports:
                env[f"PARLEY_{service.upper()}_PORT"] = str(ports[service])
                env[f"PARLEY_{service.upper()}_METRICS_PORT"] = str(metrics_ports.get(service, "off"))
                env[f"PARLEY_{service.upper()}_TARGET"] = f"127.0.0.1:{ports[service]}"
            else:
                env[f"PARLEY_{service.upper()}_TARGET"] = "none"
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = STARTUP_SECONDS) -> Suite:
        self.directory.mkdir(parents=True, exist_ok=True)
        log_dir = self.log_dir or self.directory
        log_dir.mkdir(parents=True, exist_ok=True)
        names = [service for service in ORDER if service in self.services]
        numbers = free_ports(len(names) * (2 if self.metrics else 1))
        ports = dict(zip(names, numbers))
        metrics_ports = dict(zip(names, numbers[len(names):]))
        self.env = self._environment(ports, metrics_ports)
        try:
            for name in names:
                process = ServiceProcess(name, ports[name], self.env, log_dir / f"{name}.log",
                                         wrapper=self.wrappers.get(name, ()), metrics_port=metrics_ports.get(name))
                self.processes[name] = process
                process.start().wait_serving(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def admin_key(self, user: str = "observer", name: str = "") -> str:
        return self.admin_keys([user], name)[user]

    def admin_keys(self, users: list[str], name: str = "") -> dict[str, str]:
        """An admin key per user, issued as an operator does (`create-admin-key`), in parallel."""
        extra = ["--name", name] if name else []
        runs = {user: subprocess.Popen([sys.executable, "-m", "services.gateway", "create-admin-key", "--user", user,
                                        *extra], cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True) for user in users}
        secrets = {}
        for user, run in runs.items():
            out, err = run.communicate(timeout=120)
            if run.returncode != 0:
                raise RuntimeError(f"create-admin-key --user {user} failed: {err[-2000:]}")
            secrets[user] = out.strip().splitlines()[-1]
        return secrets

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.alive():
                process.popen.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            process.terminate()
