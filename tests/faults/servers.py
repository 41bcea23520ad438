"""PostgreSQL and Redis servers of the fault tests' own, which the tests stop, kill and start
again: each a plain server process on a free loopback port in a temporary directory, never
the machine's own (5432, 6379).

PostgreSQL runs from the binaries that the PyPI package `pgserver` ships (with pgvector,
which the files service needs), started directly as `postgres -D ...` so that a test holds
the postmaster's pid. PostgreSQL refuses to run as root: as root it runs as pgserver's own
system user, as pgserver itself does.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.processes import free_port


def _answers(port: int, probe: bytes = b"", expect: bytes = b"") -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            if not probe:
                return True
            conn.sendall(probe)
            return conn.recv(16).startswith(expect)
    except OSError:
        return False


class PostgresServer:
    """`start()`, `stop(mode)` ("fast": SIGINT, what `pg_ctl restart -m fast` does; "immediate":
    SIGQUIT, a crash without a checkpoint) and `start()` again on the same port and data."""

    def __init__(self, directory: Path) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.user = None
        if os.geteuid() == 0:
            from pgserver.utils import ensure_user_exists

            self.user = "pgserver"
            ensure_user_exists(self.user)
            directory.chmod(0o755)
        self.data.mkdir(parents=True, exist_ok=True)
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust", "--encoding=utf8",
                        "-U", "postgres"], check=True, capture_output=True, user=self.user)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """Starts the server; a start that exits at once (the old postmaster's last backends
        still holding its shared memory, say) is tried again."""
        deadline = time.monotonic() + timeout
        for attempt in range(1, 6):
            self.starts += 1
            log_path = self.directory / f"postgres-{self.starts}.log"
            with open(log_path, "wb") as log:
                self.process = subprocess.Popen(
                    [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                     "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.data}",
                     "-c", "max_connections=200", "-c", "shared_buffers=128MB"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, user=self.user,
                    start_new_session=True)
            while time.monotonic() < deadline and self.process.poll() is None:
                ready = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q",
                                        "-U", "postgres"], check=False)
                if ready.returncode == 0:
                    return self
                time.sleep(0.1)
            if self.process.poll() is None or attempt == 5:
                break
            time.sleep(0.5)
        raise RuntimeError(f"postgres did not start: {log_path.read_text(errors='replace')[-3000:]}")

    def stop(self, mode: str = "fast") -> None:
        """Stops the server (the postmaster ends its backends first: every connection breaks)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal({"smart": signal.SIGTERM, "fast": signal.SIGINT,
                                  "immediate": signal.SIGQUIT}[mode])
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        path = self.directory / f"postgres-{self.starts}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class RedisServer:
    """A `redis-server` (no persistence: a restart starts empty, like the machine's own)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary, "the Redis fault test needs redis-server: `make install` installs it (apt-get install redis-server)"
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-server exited: " + (self.directory / "redis.log").read_text()[-2000:])
            if _answers(self.port, b"PING\r\n", b"+PONG"):
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
