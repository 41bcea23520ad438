from __future__ import annotations

import pytest

from parley.llm.v1 import llm_service_pb2_grpc
from services.llm.app import LLMSettings, build_app
from services.llm.engine import EngineSettings
from tests.conftest import channel_to, serve_app


def llm_settings(admin_url: str | None, **overrides) -> LLMSettings:
    engine = overrides.pop("engine", None) or EngineSettings(backoff_base=0.05, backoff_max=0.2, queue_timeout=10.0)
    values = dict(
        models_file=None,
        redis_url=None,
        engine=engine,
        cache_max_entries=10_000,
        warm_embeddings=False,
        http_transport="aiohttp",
        admin_url=admin_url,
        database_url=None,
        role_password=None,
        pool_size=4,
        use_database=admin_url is not None,
        usage_flush_seconds=0.05,
        budget_cache_seconds=0.0,
    )
    values.update(overrides)
    return LLMSettings(**values)


async def start_llm(settings: LLMSettings, public_key: bytes):
    app = await build_app(settings)
    running = await serve_app(app, "llm", public_key)
    return app, running


@pytest.fixture(scope="session")
async def local_llm(admin_url, identity_public_key):
    """An llm service with only the local provider, recording usage in PostgreSQL."""
    app, running = await start_llm(llm_settings(admin_url), identity_public_key)
    channel = channel_to(running)
    yield app, llm_service_pb2_grpc.LLMServiceStub(channel)
    await channel.close()
    await running.stop(0.5)


@pytest.fixture(scope="session")
async def local_stub(local_llm):
    return local_llm[1]
