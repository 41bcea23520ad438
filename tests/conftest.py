"""Fixtures every test package shares: a real PostgreSQL, identity keys, and helpers that run
real gRPC servers on real ports.

The database is an embedded PostgreSQL (pgserver) in a temporary directory, or the server at
`PARLEY_TEST_DATABASE_URL` (an admin URL) when that is set; each run gets a fresh database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from services.runtime.config import ServerSettings
from services.runtime.db import start_embedded_postgres
from services.runtime.identity import IdentityMinter, IdentityVerifier, generate_private_key_pem, public_key_pem
from services.runtime.server import RunningServer, ServiceApp, start_server


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory) -> str:
    """Admin URL of the PostgreSQL server the tests use (its default database)."""
    return os.environ.get("PARLEY_TEST_DATABASE_URL") or start_embedded_postgres(tmp_path_factory.mktemp("pg"))


@pytest.fixture(scope="session")
async def admin_url(postgres_server_url) -> AsyncIterator[str]:
    """Admin URL of a database created for this test run, dropped at the end."""
    database = f"parley_test_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(postgres_server_url)
    try:
        await conn.execute(f"CREATE DATABASE {database}")
    finally:
        await conn.close()
    yield _with_database(postgres_server_url, database)
    conn = await asyncpg.connect(postgres_server_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    finally:
        await conn.close()


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
