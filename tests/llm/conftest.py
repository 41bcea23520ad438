from __future__ import annotations

import contextlib
import os

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


MODELS_FILE = """
default_model: local/echo
models:
  - id: openai/gpt-4o-mini
    aliases: [fast]
  - id: openai/flaky
    capabilities: [streaming, tools]
    context_window: 16000
    max_output_tokens: 1000
  - id: openai/broken
    capabilities: [streaming, tools]
    fallbacks: [anthropic/claude-haiku-4-5]
  - id: openai/doomed
    capabilities: [streaming, tools]
  - id: openai/hangs
    capabilities: [streaming]
  - id: openai/endless
    capabilities: [streaming]
  - id: openai/limited
    capabilities: [streaming]
    limits: {rpm: 120}
  - id: openai/shared
    capabilities: [streaming]
    limits: {rpm: 6}
  - id: openai/scarce
    capabilities: [streaming]
    limits: {rpm: 1}
  - id: openai/tiny
    capabilities: [streaming]
    context_window: 64
    max_output_tokens: 16
  - id: openai/priced
    capabilities: [streaming, tools]
    pricing: {input: 1000000, output: 2000000}
  - id: openai/budgeted
    capabilities: [streaming]
    pricing: {input: 1000, output: 1000}
  - id: anthropic/claude-haiku-4-5
  - id: anthropic/failing
    capabilities: [streaming, tools]
    fallbacks: [mistral/mistral-small-latest]
  - id: mistral/mistral-small-latest
  - id: ollama/llama3.2
"""


@pytest.fixture(scope="session")
async def fakes():
    """Fake OpenAI, Anthropic and Mistral servers (Ollama is the OpenAI fake too)."""
    from tests.llm.fakes import FakeVendor

    servers = {name: await FakeVendor(name).start() for name in ("openai", "anthropic", "mistral")}
    yield servers
    for server in servers.values():
        await server.stop()


VENDOR_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "MISTRAL_API_KEY",
              "MISTRAL_BASE_URL", "OLLAMA_BASE_URL")


@contextlib.contextmanager
def vendor_environment(fakes):
    """The SDKs' own settings pointing at the fakes, for the time the app is built."""
    saved = {name: os.environ.get(name) for name in VENDOR_ENV}
    os.environ.update({
        "OPENAI_API_KEY": "sk-test-openai-0123456789abcdef",
        "OPENAI_BASE_URL": fakes["openai"].base_url + "/v1",
        "ANTHROPIC_API_KEY": "sk-ant-test-0123456789abcdef",
        "ANTHROPIC_BASE_URL": fakes["anthropic"].base_url,
        "MISTRAL_API_KEY": "mistral-test-0123456789abcdef",
        "MISTRAL_BASE_URL": fakes["mistral"].base_url,
        "OLLAMA_BASE_URL": fakes["openai"].base_url + "/v1",
    })
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def models_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("llm") / "models.yaml"
    path.write_text(MODELS_FILE)
    return str(path)


@pytest.fixture(scope="session")
async def vendor_llm(admin_url, identity_public_key, fakes, models_file):
    """An llm service whose vendors are the fakes, driven by the real SDKs."""
    with vendor_environment(fakes):
        app, running = await start_llm(llm_settings(admin_url, models_file=models_file), identity_public_key)
    channel = channel_to(running)
    yield app, llm_service_pb2_grpc.LLMServiceStub(channel)
    await channel.close()
    await running.stop(0.5)


@pytest.fixture(scope="session")
async def stub(vendor_llm):
    return vendor_llm[1]
