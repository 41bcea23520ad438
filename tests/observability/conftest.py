"""The observability suites: every Parley service as its own process, exporting its spans to
an OTLP receiver started here and exposing /metrics on its own port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.conftest import fresh_database, private_temp_dir, test_metrics_port
from tests.llm.conftest import fakes  # noqa: F401 - fake vendors speaking the vendors' wire formats
from tests.observability.otlp_receiver import OtlpReceiver
from tests.processes import Suite


@pytest.fixture(scope="session")
def metrics_endpoint() -> str:
    """This test process's own /metrics, started with its one MeterProvider in tests/conftest.py."""
    assert test_metrics_port is not None, "the test process's metrics endpoint did not start"
    return f"http://127.0.0.1:{test_metrics_port}/metrics"


@pytest.fixture(scope="session")
def otlp_receiver() -> OtlpReceiver:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
async def traced_suite(vector_server_url, otlp_receiver, fakes) -> AsyncIterator[Suite]:  # noqa: F811
    """The whole suite, exporting spans to `otlp_receiver` (batches every 100 ms), its OpenAI
    provider pointing at the fake vendor (runs script their turns there)."""
    directory = private_temp_dir("parley-test-observability-")
    # local/echo with a price, so that the cost series has something to count.
    models_file = directory / "models.yml"
    models_file.write_text("models:\n  - id: local/echo\n    pricing: {input: 1000, output: 2000}\n")
    async with fresh_database(vector_server_url, "parley_observability") as database_url:
        suite = Suite(directory, database_url, extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "PARLEY_MODELS_FILE": str(models_file),
            "OPENAI_API_KEY": "sk-test-openai-0123456789abcdef",
            "OPENAI_BASE_URL": fakes["openai"].base_url + "/v1",
        })
        await asyncio.to_thread(suite.start)
        try:
            yield suite
        finally:
            await asyncio.to_thread(suite.stop)


@pytest.fixture(scope="session")
async def gateway_key(traced_suite) -> str:
    return await asyncio.to_thread(traced_suite.admin_key)
