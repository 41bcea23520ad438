"""The web console in a real browser: Debian's headless Chromium, driven by playwright-core in
Node, against the real suite (the assistants stack of tests/assistants/conftest.py: real llm,
sessions, files, engine and gateway, fake vendors scripted per model) behind a real edge process
that serves the console's build (console/dist).

One Chromium for the whole session (`browser`: playwright-core's browser server); each test
runs one scenario of `scenarios.mjs` in its own Node process and browser context, after
preparing data and scripting the fake vendor here, and checks the server's side afterwards.
Screenshots go to tests/console/artifacts/ (gitignored).

Missing pieces fail with what to install: the console build and playwright-core come from
`make install`; Chromium is Debian's `chromium` package (installed by `make install` as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.assistants.conftest import code_interpreter_stack, free_port  # noqa: F401 - a fixture
from tests.rest.conftest import Edge

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / "artifacts"
BUILD = ROOT / "console" / "dist"
CHROMIUM = os.environ.get("PARLEY_TEST_CHROMIUM", "/usr/bin/chromium")
NODE = shutil.which("node") or "node"
# A scenario's own waits are bounded inside it (30 s each); this bounds the whole process.
SCENARIO_TIMEOUT = 180.0


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/console/" in str(item.fspath):
            item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning"))


def _require_tools() -> None:
    missing = []
    if not (BUILD / "index.html").is_file():
        missing.append(f"the console's build ({BUILD}/index.html): run `make install` "
                       "(npm ci and the build in console/)")
    if not (ROOT / "node_modules" / "playwright-core" / "package.json").is_file():
        missing.append("playwright-core in node_modules: run `make install` (npm ci)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"Chromium at {CHROMIUM}: install Debian's `chromium` package (`make install` does it as "
                       "root; or `apt-get install --no-install-recommends chromium`), or set PARLEY_TEST_CHROMIUM")
    if shutil.which("node") is None:
        missing.append("Node.js (`node`) on PATH")
    if missing:
        pytest.fail("The console's browser tests cannot run. Missing:\n- " + "\n- ".join(missing), pytrace=False)


@pytest.fixture(scope="session")
def console_tools():
    _require_tools()
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
async def console_edge(stack, console_tools, tmp_path_factory):  # noqa: F811
    async with Edge.started(stack, tmp_path_factory.mktemp("console") / "rest.log",
                            PARLEY_REST_CONSOLE_DIR=str(BUILD)) as running:
        yield running


@pytest.fixture(scope="session")
async def browser(console_tools):
    """A headless Chromium for the session, reached by the scenarios over playwright's protocol."""
    process = await asyncio.create_subprocess_exec(
        NODE, str(HERE / "browser.mjs"), CHROMIUM, cwd=str(ROOT), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
    except TimeoutError:
        process.kill()
        raise AssertionError("Chromium did not start within 60 s") from None
    if not line:
        error = (await process.stderr.read()).decode(errors="replace")
        pytest.fail(f"Chromium did not start:\n{error[-3000:]}", pytrace=False)
    endpoint = json.loads(line)["wsEndpoint"]
    try:
        yield endpoint
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.send_signal(signal.SIGKILL)
            await process.wait()


class Console:
    """What a test needs: the edge, a user with a key, HTTP calls as that user, the fakes, and
    `run(scenario, **config)` to drive the browser."""

    def __init__(self, edge: Edge, endpoint: str, user: str, key: str, http: aiohttp.ClientSession) -> None:
        self.edge, self.endpoint, self.user, self.key, self.http = edge, endpoint, user, key, http
        self.origin = f"http://127.0.0.1:{edge.port}"
        self.fake = edge.stack.fakes["openai"]

    def model(self) -> str:
        return self.edge.stack.model("openai")

    def script(self, model: str, *steps: dict) -> None:
        self.fake.script(model.split("/")[1], *steps)

    async def call(self, method: str, path: str, body=None, **options) -> dict:
        async with self.http.request(method, f"{self.origin}/v1{path}", json=body, **options) as response:
            reply = await response.json()
            assert response.status == 200, reply
            return reply

    async def upload(self, name: str, data: bytes, purpose: str = "assistants") -> dict:
        form = aiohttp.FormData()
        form.add_field("purpose", purpose)
        form.add_field("file", data, filename=name, content_type="text/plain")
        async with self.http.post(f"{self.origin}/v1/files", data=form) as response:
            reply = await response.json()
            assert response.status == 200, reply
            return reply

    async def store_with(self, name: str, data: bytes) -> tuple[dict, dict]:
        """A vector store holding one processed file: (store, file)."""
        store = await self.call("POST", "/vector_stores", {"name": f"{name} store"})
        uploaded = await self.upload(name, data)
        await self.call("POST", f"/vector_stores/{store['id']}/files", {"file_id": uploaded["id"]})
        for _ in range(600):
            entry = await self.call("GET", f"/vector_stores/{store['id']}/files/{uploaded['id']}")
            if entry["status"] != "in_progress":
                assert entry["status"] == "completed", entry
                return store, uploaded
            await asyncio.sleep(0.1)
        raise AssertionError("the file was never processed")

    async def run(self, scenario: str, *, origin: str | None = None, **config) -> dict:
        """Runs one scenario of scenarios.mjs; returns what it reported, or fails with its output."""
        payload = json.dumps({"endpoint": self.endpoint, "origin": origin or self.origin, "key": self.key,
                              "artifacts": str(ARTIFACTS), **config})
        process = await asyncio.create_subprocess_exec(
            NODE, str(HERE / "scenarios.mjs"), scenario, cwd=str(ROOT), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(process.communicate(payload.encode()), SCENARIO_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"scenario {scenario} did not finish within {SCENARIO_TIMEOUT} s") from None
        text = out.decode(errors="replace")
        report = next((json.loads(line[len("RESULT "):]) for line in reversed(text.splitlines())
                       if line.startswith("RESULT ")), None)
        if process.returncode != 0 or report is None:
            pytest.fail(f"scenario {scenario} failed (exit {process.returncode}):\n{text[-4000:]}\n"
                        f"{err.decode(errors='replace')[-4000:]}", pytrace=False)
        return report


@contextlib.asynccontextmanager
async def signed_in(edge: Edge, endpoint: str):
    """A Console for a fresh user with a key, on `edge`."""
    user = f"console-{uuid.uuid4().hex[:10]}"
    key = await edge.key(user)
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {key}"}) as http:
        yield Console(edge, endpoint, user, key, http)


@pytest.fixture
async def console(console_edge, browser):
    async with signed_in(console_edge, browser) as opened:
        yield opened


@pytest.fixture(scope="module")
async def code_interpreter_edge(stack, code_interpreter_stack, console_tools, tmp_path_factory):  # noqa: F811
    """An edge serving the console in front of the code-interpreter stack's gateway (its engine
    runs code in a real sandbox; llm, files and the keys are the shared stack's). Per module,
    as that stack is: its connections close before the modules after it run."""
    async with Edge.started(stack, tmp_path_factory.mktemp("console-ci") / "rest.log",
                            PARLEY_REST_CONSOLE_DIR=str(BUILD),
                            PARLEY_GATEWAY_TARGET=f"127.0.0.1:{code_interpreter_stack.gateway.port}") as running:
        yield running


@pytest.fixture
async def code_interpreter_console(code_interpreter_edge, browser):
    async with signed_in(code_interpreter_edge, browser) as opened:
        yield opened


class Trigger:
    """An HTTP endpoint a scenario calls to make the test act at that moment (cut the network,
    let waiting code go on): each request runs `action(path)` and is answered once it is done."""

    def __init__(self, action) -> None:
        self.action = action
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.calls = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> Trigger:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        path = head.split(" ", 2)[1]
        self.calls += 1
        try:
            outcome = self.action(path)
            if asyncio.iscoroutine(outcome):
                await outcome
            status, body = b"200 OK", b""
        except Exception as error:  # told to the scenario, whose check then fails with it
            status, body = b"500 Internal Server Error", repr(error).encode()
        writer.write(b"HTTP/1.1 %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (status, len(body), body))
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class CuttableProxy:
    """A TCP proxy in front of the edge whose connections the test can cut at once: a real
    network drop as the browser sees it (the stream's socket closes mid-response)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.connections: set[asyncio.StreamWriter] = set()
        self.cuts = 0
        self.server: asyncio.AbstractServer | None = None
        # Any request to it cuts every proxied connection.
        self.control = Trigger(lambda path: self.cut())

    async def start(self) -> CuttableProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        await self.control.start()
        return self

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.connections.update({writer, upstream_writer})
        try:
            await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        finally:
            self.connections.difference_update({writer, upstream_writer})

    def cut(self) -> None:
        self.cuts += 1
        for writer in list(self.connections):
            transport = writer.transport
            if transport is not None:
                transport.abort()  # a reset, as when a network goes away
        self.connections.clear()

    async def stop(self) -> None:
        self.cut()
        await self.control.stop()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def cuttable_proxy(console_edge):
    proxy = await CuttableProxy(console_edge.port).start()
    yield proxy
    await proxy.stop()

