"""The REST edge as a real `python -m services.rest` process in front of the real gateway of
the assistants stack (tests/assistants/conftest.py, shared through tests/conftest.py with the
console's tests: the real llm, sessions, files and engine services, fake OpenAI/Anthropic/Mistral
vendors), driven by the official `openai` SDKs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator

import openai
import pytest

from tests.assistants.conftest import free_port

WAIT = 120.0


def pytest_collection_modifyitems(items):
    # The SDK marks its Assistants calls deprecated (OpenAI retired the hosted API); expected here.
    for item in items:
        if "tests/rest/" in str(item.fspath):
            item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning"))


class Edge:
    def __init__(self, stack, log_path, **env: str) -> None:  # noqa: F811
        self.stack = stack
        self.port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PARLEY_REST_PORT": str(self.port), "PARLEY_GATEWAY_TARGET": f"127.0.0.1:{stack.gateway_port}",
               "PARLEY_REST_HEARTBEAT_SECONDS": "0.5", "PARLEY_REST_POLL_AFTER_MS": "50",
               "PARLEY_REST_MAX_BODY_BYTES": str(256 * 1024), "PARLEY_REST_MAX_UPLOAD_BYTES": str(4 * 1024 * 1024),
               "PARLEY_SHUTDOWN_GRACE_SECONDS": "1", **env}
        self.process = subprocess.Popen([sys.executable, "-m", "services.rest"], env=env, stdout=self._log,
                                        stderr=self._log)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    async def wait_healthy(self) -> None:
        for _ in range(300):
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                reply = await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{self.port}/healthz", None, 1)
                if reply.status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError("the edge never became healthy")

    @classmethod
    @contextlib.asynccontextmanager
    async def started(cls, stack, log_path, **env: str) -> AsyncIterator[Edge]:
        """An edge process, healthy, for as long as the `async with` lasts."""
        running = cls(stack, log_path, **env)
        try:
            await running.wait_healthy()
            yield running
        finally:
            running.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    async def key(self, user: str | None = None) -> str:
        return await self.stack.api_key(user or f"rest-{uuid.uuid4().hex[:10]}")

    async def client(self, user: str | None = None, **options) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=await self.key(user), base_url=self.base_url, max_retries=0,
                                  timeout=WAIT, **options)


@pytest.fixture(scope="session")
async def edge(stack, tmp_path_factory):  # noqa: F811
    async with Edge.started(stack, tmp_path_factory.mktemp("rest") / "rest.log") as running:
        yield running


@pytest.fixture
async def client(edge):
    async with await edge.client() as sdk:
        yield sdk
