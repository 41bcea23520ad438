"""`make run`'s launcher: starts every service of the suite, reports them healthy, and on
Ctrl-C (or when it is killed outright) leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.__main__ import SERVICES, SUITE, _ensure_identity_keys, _write_private
from tests.conftest import private_temp_dir
from tests.runtime.test_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:  # it exited meanwhile
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def tmp_path():
    """The suite's state directory must be reachable by the embedded PostgreSQL's user."""
    return private_temp_dir("parley-test-launcher-")


def _start(tmp_path: Path) -> tuple[subprocess.Popen, dict[str, int]]:
    ports = {service: free_port() for service in SUITE}
    env = dict(os.environ, PARLEY_STATE_DIR=str(tmp_path / "state"), PARLEY_LOG_LEVEL="WARNING")
    env.pop("PARLEY_DATABASE_URL", None)
    env.update({f"PARLEY_{service.upper()}_PORT": str(port) for service, port in ports.items()})
    process = subprocess.Popen([sys.executable, "-m", "services"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        if "Press Ctrl-C to stop" in line:
            # Keep reading: the services write their logs to the same pipe, and a full pipe
            # would block them in the middle of shutting down.
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return process, ports
    process.terminate()
    process.wait(timeout=60)
    pytest.fail("the suite did not start:\n" + "".join(output))


@pytest.fixture
def suite_descendants():
    def descendants(pid: int) -> list[int]:
        result, frontier = [], [pid]
        while frontier:
            children = _children_of(frontier.pop())
            result += children
            frontier += children
        return result

    return descendants


def _postmaster(tmp_path: Path) -> int:
    """The embedded PostgreSQL runs daemonised (pg_ctl), not as our child: find it by its pid file."""
    return int((tmp_path / "state" / "pg" / "postmaster.pid").read_text().split()[0])


@pytest.fixture
def launched(tmp_path):
    """Starts the suite; whatever the test does, the launcher is stopped afterwards."""
    started: list[subprocess.Popen] = []

    def start():
        process, ports = _start(tmp_path)
        started.append(process)
        return process, ports

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


def test_ctrl_c_stops_every_service_and_the_database(tmp_path, launched, suite_descendants):
    process, ports = launched()
    processes = suite_descendants(process.pid) + [_postmaster(tmp_path)]
    assert len(processes) >= len(SUITE) + 1
    assert all(_alive(pid) for pid in processes)
    private_key = tmp_path / "state" / "identity-ed25519.pem"
    assert stat.S_IMODE(private_key.stat().st_mode) == 0o600
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    for pid in processes:
        for _ in range(600):
            if not _alive(pid):
                break
            time.sleep(0.1)
        assert not _alive(pid), f"process {pid} outlived the launcher"


def test_killing_the_launcher_takes_its_services_down(tmp_path, launched):
    process, _ = launched()
    commands = {f"-m\0services.{name}\0" for name in SUITE}
    services = [pid for pid in _children_of(process.pid) if any(c in _cmdline(pid) for c in commands)]
    assert len(services) == len(SUITE)
    # Each in its own process group: a terminal's Ctrl-C goes to the launcher, which stops them in order.
    assert all(os.getpgid(pid) == pid for pid in services)
    postmaster = _postmaster(tmp_path)
    process.kill()
    process.wait()
    try:
        for pid in services:
            # SIGTERM from the kernel, then each service's own graceful shutdown.
            for _ in range(600):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            assert not _alive(pid), f"service process {pid} ({_cmdline(pid)!r}) was orphaned"
    finally:
        # A SIGKILLed launcher cannot stop the daemonised PostgreSQL; the next `make run`
        # would reuse it. Here we stop it ourselves.
        os.kill(postmaster, signal.SIGTERM)


def test_a_taken_port_is_refused_before_anything_starts(tmp_path):
    taken = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        env = dict(os.environ, PARLEY_STATE_DIR=str(tmp_path / "state"), **{f"PARLEY_{SUITE[0].upper()}_PORT": str(taken)})
        env.pop("PARLEY_DATABASE_URL", None)
        result = subprocess.run([sys.executable, "-m", "services"], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 1
    assert f"port {taken} for {SUITE[0]} is taken" in result.stderr
    assert "Parley is running" not in result.stdout


def test_the_identity_key_is_created_private_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        private, public = _ensure_identity_keys(tmp_path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # A key left readable by others (an older launcher, a copy) is tightened, and kept.
    before = private.read_bytes()
    private.chmod(0o644)
    _ensure_identity_keys(tmp_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_bytes() == before


def test_a_failed_write_leaves_the_private_file_as_it_was(tmp_path):
    target = tmp_path / "secret.pem"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        _write_private(target, "not bytes")  # fails in the middle of writing
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["secret.pem"]


def test_the_suite_is_one_table_with_the_gateway_last():
    # The gateway after every backend; only the REST edge, the gateway's own client, after it.
    assert SUITE[-2:] == ["gateway", "rest"] and len(set(SUITE)) == len(SUITE)
    assert {"llm", "sessions", "files", "sandbox", "assistants"} <= set(SUITE)
    assert [s.name for s in SERVICES if not s.is_backend] == ["gateway", "rest"]
