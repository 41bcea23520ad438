from __future__ import annotations

import pytest

from parley.runstore.v1 import runstore_service_pb2_grpc
from parley.sessions.v1 import sessions_service_pb2_grpc
from services.sessions.app import SessionsSettings, build_app
from tests.conftest import channel_to, serve_app


def sessions_settings(admin_url: str, **overrides) -> SessionsSettings:
    values = dict(
        admin_url=admin_url,
        database_url=None,
        role_password=None,
        pool_size=10,
        max_message_bytes=1024 * 1024,
        retention_days=0.0,
        retention_interval_seconds=3600.0,
    )
    values.update(overrides)
    return SessionsSettings(**values)


@pytest.fixture(scope="session")
async def sessions_server(admin_url, identity_public_key):
    app = await build_app(sessions_settings(admin_url))
    running = await serve_app(app, "sessions", identity_public_key)
    yield running
    await running.stop(0.5)


@pytest.fixture(scope="session")
async def sessions_stub(sessions_server):
    channel = channel_to(sessions_server)
    yield sessions_service_pb2_grpc.SessionServiceStub(channel)
    await channel.close()


@pytest.fixture(scope="session")
async def run_store_stub(sessions_server):
    """The internal RunStoreService, served by the same sessions process."""
    channel = channel_to(sessions_server)
    yield runstore_service_pb2_grpc.RunStoreServiceStub(channel)
    await channel.close()
