"""`python -m services` (`make run`): the whole suite on one machine.

Starts an embedded PostgreSQL under `.parley/` (unless `PARLEY_DATABASE_URL` is set), the
internal identity keys, and every service as its own process; waits until each reports
SERVING; prints the addresses. Ctrl-C or SIGTERM stops every child (and a child that dies
stops the suite), leaving no orphans: children also get SIGTERM if this process is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.config import DEFAULT_PORTS, env_str, state_dir
from services.runtime.db import start_embedded_postgres
from services.runtime.identity import generate_private_key_pem, public_key_pem


@dataclass(frozen=True)
class Service:
    name: str  # runs as `python -m services.<name>`, on PARLEY_<NAME>_PORT
    # Other services reach it through PARLEY_<NAME>_TARGET, which the suite sets.
    is_backend: bool = True
    # An HTTP service: waited on with GET <path> answering 200, instead of gRPC health.
    http_health: str | None = None
    # Its port when PARLEY_<NAME>_PORT is unset, for a service outside DEFAULT_PORTS.
    default_port: int | None = None


# Start order: dependencies first. A new service adds one row.
SERVICES = (
    Service("llm"),
    Service("sessions"),
    Service("files"),
    Service("sandbox"),
    Service("assistants"),
    Service("gateway", is_backend=False),
    Service("rest", is_backend=False, http_health="/healthz", default_port=8080),
)
SUITE = [service.name for service in SERVICES]
STARTUP_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 15.0

# Runs in each child before it becomes the service: Linux sends it SIGTERM when the launcher
# dies (PR_SET_PDEATHSIG survives exec), and a launcher already gone stops it at once. This
# replaces a preexec_fn, which is unsafe once the launcher has threads (gRPC, pgserver).
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except OSError:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.executable, [sys.executable, "-m", sys.argv[2]])
"""


def _spawn(service: Service, env: dict[str, str]) -> subprocess.Popen:
    # Its own process group: a Ctrl-C in the terminal reaches the launcher only, which then
    # stops the services in order.
    return subprocess.Popen([sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), f"services.{service.name}"],
                            env=env, process_group=0)


def _write_private(path: Path, data: bytes) -> None:
    """Writes a secret file that is never readable by others, not even for a moment, and never
    seen half-written: created 0600 under a temporary name, then renamed into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _ensure_identity_keys(directory: Path) -> tuple[Path, Path]:
    private, public = directory / "identity-ed25519.pem", directory / "identity-ed25519.pub.pem"
    if not private.exists():
        _write_private(private, generate_private_key_pem())
    elif private.stat().st_mode & 0o077:
        private.chmod(0o600)
    public.write_bytes(public_key_pem(private.read_bytes()))
    return private, public


def _port(service: str) -> int:
    default = DEFAULT_PORTS.get(service) or next(s.default_port for s in SERVICES if s.name == service)
    return int(env_str(f"PARLEY_{service.upper()}_PORT", str(default)))


def _wait_http_healthy(service: Service, port: int, process: subprocess.Popen, deadline: float) -> None:
    import urllib.error
    import urllib.request

    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{service.name} exited with code {process.returncode} while starting (see its log above)")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{service.http_health}", timeout=1.0) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{service.name} did not become healthy within {STARTUP_TIMEOUT_SECONDS:.0f}s")


def _wait_healthy(service: str, port: int, process: subprocess.Popen, deadline: float) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{service} exited with code {process.returncode} while starting (see its log above)")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"{service} did not become healthy within {STARTUP_TIMEOUT_SECONDS:.0f}s")


def _dev_api_key(env: dict[str, str], key_file: Path) -> str:
    """The development API key: the one in `key_file` while it still works, else a new one."""
    result = subprocess.run([sys.executable, "-m", "services.gateway", "dev-key", "--file", str(key_file)],
                            env=env, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_SECONDS)
    if result.returncode != 0:
        raise RuntimeError(f"could not issue the development API key: {result.stderr.strip()[-500:]}")
    return result.stdout.strip()


def _ensure_port_free(service: str, port: int) -> None:
    """Refuse to start over another process: its health check would answer for ours."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise RuntimeError(
                f"port {port} for {service} is taken by another process (another `make run`?); "
                f"stop it or set PARLEY_{service.upper()}_PORT"
            ) from None


def _say(message: str) -> None:
    """Print to stderr, even when nobody reads it any more (a closed pipe must not stop a shutdown)."""
    with contextlib.suppress(OSError, ValueError):
        print(message, file=sys.stderr, flush=True)


def _stop(children: dict[str, subprocess.Popen]) -> None:
    for process in children.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for name, process in children.items():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"parley: {name} did not stop in time; killing it")
            process.kill()
            process.wait()


def main() -> int:
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PARLEY_STATE_DIR=str(directory))
    if not env_str("PARLEY_DATABASE_URL"):
        print(f"parley: starting embedded PostgreSQL in {directory / 'pg'}", flush=True)
        env["PARLEY_DATABASE_URL"] = start_embedded_postgres(directory / "pg")
    private, public = _ensure_identity_keys(directory)
    env.setdefault("PARLEY_IDENTITY_PUBLIC_KEY_FILE", str(public))
    env.setdefault("PARLEY_IDENTITY_PRIVATE_KEY_FILE", str(private))

    stopping = False

    def request_stop(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    # The gateway (and the engine) reach each backend on the port the suite gives it.
    for service in SERVICES:
        if service.is_backend:
            env.setdefault(f"PARLEY_{service.name.upper()}_TARGET", f"127.0.0.1:{_port(service.name)}")
    # The REST edge calls the gateway.
    env.setdefault("PARLEY_GATEWAY_TARGET", f"127.0.0.1:{_port('gateway')}")

    children: dict[str, subprocess.Popen] = {}
    try:
        for service in SERVICES:
            port = _port(service.name)
            _ensure_port_free(service.name, port)
            children[service.name] = _spawn(service, env)
            deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
            if service.http_health:
                _wait_http_healthy(service, port, children[service.name], deadline)
            else:
                _wait_healthy(service.name, port, children[service.name], deadline)
            if stopping:
                return 130
        key_file = directory / "dev-api-key"
        api_key = _dev_api_key(env, key_file)
        print("\nParley is running:", flush=True)
        for service in SUITE:
            print(f"  {service:<10} 127.0.0.1:{_port(service)}")
        console = f"http://127.0.0.1:{_port('rest')}/"
        console_dir = env.get("PARLEY_REST_CONSOLE_DIR") or Path(__file__).resolve().parent.parent / "console" / "dist"
        built = (Path(console_dir) / "index.html").is_file()
        print(f"\nThe web console: {console}" + ("  (sign in with the key below)" if built else
                                                  "  (not built yet: run `make install`)"))
        print(f"\nA development API key (user 'dev', admin scope), also in {key_file}:\n\n  {api_key}\n")
        print(f"  export PARLEY_TARGET=127.0.0.1:{_port('gateway')} PARLEY_API_KEY=$(cat {key_file})")
        print("  parley chat -m local/echo 'Hello, Parley'\n")
        print("Press Ctrl-C to stop.\n", flush=True)
        while not stopping:
            for name, process in children.items():
                if process.poll() is not None:
                    _say(f"parley: {name} exited with code {process.returncode}; stopping the suite")
                    return 1
            time.sleep(0.2)
        return 0
    except (RuntimeError, OSError) as exc:
        _say(f"parley: {exc}")
        return 1
    finally:
        _say("parley: stopping")
        _stop(children)


if __name__ == "__main__":
    sys.exit(main())
