"""Fixtures every test package shares: a real PostgreSQL, a real Redis, identity keys, and
helpers that run real gRPC servers on real ports.

The database is an embedded PostgreSQL (pgserver) in a temporary directory, or the server at
`PARLEY_TEST_DATABASE_URL` (an admin URL) when that is set; each run gets a fresh database.
Redis (shared rate limits and caches) is `PARLEY_TEST_REDIS_URL` when set, otherwise a
`redis-server` the test run starts itself on a free loopback port (`make install` installs
Debian's package where it can).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.runtime.config import ServerSettings
from services.runtime.db import start_embedded_postgres
from services.runtime.identity import IdentityMinter, IdentityVerifier, generate_private_key_pem, public_key_pem
from services.runtime.server import RunningServer, ServiceApp, start_server
from services.runtime.metrics import setup_metrics
from services.runtime.telemetry import setup_telemetry

# One page-token secret for the test process and the servers it starts (tests/test_launcher's
# included), instead of one written under the working directory's .parley/.
os.environ.setdefault("PARLEY_PAGE_TOKEN_SECRET", secrets.token_hex(32))

# Every span the test process makes, for tests that check tracing.
span_exporter = InMemorySpanExporter()
setup_telemetry("tests", extra_processor=SimpleSpanProcessor(span_exporter))
# Every metric the test process records, and its own /metrics endpoint on a free port: one
# MeterProvider per process, as in every service (the first one installed is the only one).
metric_reader = InMemoryMetricReader()
test_metrics_port = setup_metrics("tests", port=0, extra_readers=(metric_reader,))


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def private_temp_dir(prefix: str) -> Path:
    """A temporary directory outside pytest's own: as root, pgserver runs PostgreSQL as the
    `pgserver` user, which must reach its data directory, and every pytest session resets
    /tmp/pytest-of-<user> to mode 0700 (other sessions on the machine included). Removed
    when the test process exits, after the embedded server has stopped."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


_redis: dict[str, str] = {}


def _redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_redis(binary: str) -> str:
    directory = private_temp_dir("parley-test-redis-")
    for _ in range(3):  # another process may take the free port first
        port = _free_port()
        log = open(directory / f"redis-{port}.log", "wb")  # noqa: SIM115 - kept for the process's life
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory), "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        for _ in range(200):
            if process.poll() is not None:
                break
            if _redis_answers("127.0.0.1", port):
                def stop(process=process) -> None:
                    process.terminate()
                    try:
                        process.wait(10)
                    except subprocess.TimeoutExpired:
                        process.kill()

                atexit.register(stop)
                return f"redis://127.0.0.1:{port}/0"
            time.sleep(0.05)
        process.kill()
        process.wait()
    raise RuntimeError(f"redis-server did not start; see the logs in {directory}")


def redis_url_for_tests() -> str:
    """The Redis of this test run: `PARLEY_TEST_REDIS_URL`, or a `redis-server` started on
    first use on a free port and stopped when the test process exits. Without the binary,
    a Redis already answering on 127.0.0.1:6379 is used; with neither, the tests that need one
    fail, saying what to install."""
    if "url" not in _redis:
        configured = os.environ.get("PARLEY_TEST_REDIS_URL")
        binary = shutil.which("redis-server")
        if configured:
            _redis["url"] = configured
        elif binary:
            _redis["url"] = _start_redis(binary)
        elif _redis_answers("127.0.0.1", 6379):
            _redis["url"] = "redis://127.0.0.1:6379/0"
        else:
            raise RuntimeError("the shared limit and cache tests need Redis: install redis-server (Debian's "
                               "package; `make install` does, as root) or set PARLEY_TEST_REDIS_URL")
    return _redis["url"]




@pytest.fixture(scope="session")
def redis_url() -> str:
    return redis_url_for_tests()


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """Admin URL of the PostgreSQL server the tests use (its default database)."""
    url = os.environ.get("PARLEY_TEST_DATABASE_URL")
    return url or start_embedded_postgres(private_temp_dir("parley-test-pg-") / "pg", delete_on_exit=True)


async def _fresh_database(server_url: str, prefix: str) -> str:
    database = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"CREATE DATABASE {database}")
    finally:
        await conn.close()
    return _with_database(server_url, database)


async def _drop_database(server_url: str, database_url: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {urlsplit(database_url).path.lstrip('/')} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def admin_url(postgres_server_url) -> AsyncIterator[str]:
    """Admin URL of a database created for this test run, dropped at the end."""
    async with fresh_database(postgres_server_url, "parley_test") as url:
        yield url


@pytest.fixture(scope="session")
async def vector_server_url(postgres_server_url) -> str:
    """A server with pgvector (the files service needs it): the test server when it has the
    extension, otherwise an embedded one (pgserver bundles it)."""
    conn = await asyncpg.connect(postgres_server_url)
    try:
        has_vector = await conn.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    finally:
        await conn.close()
    if has_vector:
        return postgres_server_url
    return start_embedded_postgres(private_temp_dir("parley-test-pgvector-") / "pg", delete_on_exit=True)


@contextlib.asynccontextmanager
async def fresh_database(server_url: str, prefix: str) -> AsyncIterator[str]:
    """Admin URL of a new database on `server_url`, dropped afterwards."""
    url = await _fresh_database(server_url, prefix)
    try:
        yield url
    finally:
        await _drop_database(server_url, url)


@pytest.fixture(scope="session")
async def vector_admin_url(vector_server_url) -> AsyncIterator[str]:
    async with fresh_database(vector_server_url, "parley_files_test") as url:
        yield url


@pytest.fixture(scope="session")
def identity_private_key() -> bytes:
    return generate_private_key_pem()


@pytest.fixture(scope="session")
def identity_public_key(identity_private_key) -> bytes:
    return public_key_pem(identity_private_key)


@pytest.fixture(scope="session")
def minter(identity_private_key) -> IdentityMinter:
    return IdentityMinter(identity_private_key)


@pytest.fixture(scope="session")
def as_user(minter) -> Callable[..., tuple[tuple[str, str], ...]]:
    """`as_user("alice")` → call metadata carrying a gateway-minted identity for alice."""
    return lambda user_id, scopes=("sessions", "llm", "files", "assistants"): minter.metadata(user_id, scopes)


def server_settings(service: str, public_key: bytes | None) -> ServerSettings:
    return ServerSettings(
        service=service,
        host="127.0.0.1",
        port=0,
        shutdown_grace=1.0,
        max_message_bytes=16 * 1024 * 1024,
        identity_public_key=public_key,
    )


async def serve_app(app: ServiceApp, service: str, public_key: bytes | None) -> RunningServer:
    """Serves `app` on a free loopback port, requiring gateway identities when a key is given."""
    verifier = IdentityVerifier(public_key) if public_key else None
    return await start_server(app, server_settings(service, public_key), verifier=verifier)


def channel_to(running: RunningServer) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")


def rich_error(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    """(code, ErrorInfo reason, fields named by BadRequest) of a failed call."""
    from services.runtime.status import error_details, from_rpc_error

    status = from_rpc_error(error)
    if status is None:
        return error.code(), "", []
    details = error_details(status)
    reason = details["ErrorInfo"].reason if "ErrorInfo" in details else ""
    fields = [v.field for v in details["BadRequest"].field_violations] if "BadRequest" in details else []
    return error.code(), reason, fields


async def user_rows(url: str, schema: str, tables, user: str) -> dict[str, int]:
    """How many rows of `user` each of `schema`'s `tables` holds, counted as the database's
    owner (past row-level security)."""
    conn = await asyncpg.connect(url)
    try:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {schema}.{t} WHERE user_id = $1", user) for t in tables}
    finally:
        await conn.close()


async def expect_error(call, code: grpc.StatusCode) -> tuple[str, list[str]]:
    """Awaits `call`, asserts it fails with `code`, returns (reason, fields)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    got, reason, fields = rich_error(caught.value)
    assert got == code, f"expected {code}, got {got}: {caught.value.details()}"
    return reason, fields


# The assistants stack (tests/assistants/conftest.py), registered here once so that the suites
# in front of it — tests/rest (the REST edge) and tests/console (the web console) — share one
# instance for the session instead of starting one each (each holds its own databases and
# connection pools). tests/assistants keeps its own. Imported last: that module imports this one.
from tests.assistants.conftest import assistant_fakes, stack  # noqa: E402, F401 - fixtures
