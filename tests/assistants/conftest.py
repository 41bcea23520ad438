"""The assistants stack, for the engine's tests and the end-to-end tests (test_e2e_*.py):
fake OpenAI, Anthropic and Mistral servers behind the real llm service, the real sessions and
files services, the engine as real `python -m services.assistants` processes (as many as a
test wants, each killable with SIGKILL), and the real gateway in front.

Fixtures:
- `stack`: everything, started once per test session; `stack.engine` is the main engine
  process, `stack.gateway_port` the gateway's.
- `start_engine(**env)`: another engine process on the same backends (e.g. a second replica,
  or one with a short action timeout), stopped at the end of the test.
- `user()`: a fresh user id; `stack.direct(user)` metadata to call an engine as that user
  (a gateway-minted identity); `await stack.api_key(user)` a gateway API key.
- `stack.model(vendor)`: a fresh model id of that vendor ("openai", "anthropic", "mistral"),
  so a test's scripted turns (`stack.fakes[vendor].script(model_name, ...)`) are its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from parley.assistants.v1 import assistants_service_pb2_grpc as agrpc
from parley.files.v1 import files_service_pb2_grpc as fgrpc
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from services.runtime.identity import generate_private_key_pem, public_key_pem
from tests.conftest import fresh_database, serve_app

VENDORS = ("openai", "anthropic", "mistral")
MODELS_PER_VENDOR = 60
LEASE_SECONDS = 3.0
IDENTITY_PROVIDER = "https://idp.parley.test"


def _models_file() -> str:
    lines = ["default_model: local/echo", "models:"]
    for vendor in VENDORS:
        for i in range(MODELS_PER_VENDOR):
            lines += [f"  - id: {vendor}/m{i}", "    capabilities: [streaming, tools, vision, json_output, json_schema]",
                      "    context_window: 16000", "    max_output_tokens: 1000"]
        # A small window, for truncation.
        lines += [f"  - id: {vendor}/small", "    capabilities: [streaming, tools]",
                  "    context_window: 700", "    max_output_tokens: 100"]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EngineProcess:
    """One `python -m services.assistants` process."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.env = {**os.environ, **env, "PARLEY_ASSISTANTS_PORT": str(self.port)}
        self.process = subprocess.Popen([sys.executable, "-m", "services.assistants"], env=self.env,
                                        stdout=self._log, stderr=self._log)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def wait_serving(self) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(300):
                assert self.process.poll() is None, f"engine exited: {self.log_path.read_text()[-3000:]}"
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError("the engine never became SERVING")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no lease release, nothing flushed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def stub(self, channel: grpc.aio.Channel | None = None) -> agrpc.AssistantServiceStub:
        return agrpc.AssistantServiceStub(channel or grpc.aio.insecure_channel(self.target))


@dataclasses.dataclass
class Stack:
    fakes: dict
    llm_port: int
    sessions_port: int
    files_port: int
    gateway_port: int
    engine: EngineProcess
    engine_env: dict[str, str]
    minter: object
    keys: object
    log_dir: Path
    # Admin URL of the sessions database (the run store's tables), for tests that count writes.
    database_url: str
    # The private key of the identity provider whose JWTs the gateway accepts (see `jwt`).
    identity_provider_key: bytes = b""
    _models: dict = dataclasses.field(default_factory=lambda: {v: itertools.count() for v in VENDORS})

    def model(self, vendor: str = "openai") -> str:
        index = next(self._models[vendor])
        assert index < MODELS_PER_VENDOR, "add models to tests/assistants/conftest.py's models file"
        return f"{vendor}/m{index}"

    def jwt(self, user: str, lifetime_seconds: float = 600) -> str:
        """A JWT for `user` from the stack's identity provider, as a browser would hold one."""
        import time

        import jwt as pyjwt
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(self.identity_provider_key, password=None)
        now = int(time.time())
        return pyjwt.encode({"sub": user, "iss": IDENTITY_PROVIDER, "aud": "parley", "iat": now,
                             "exp": now + int(lifetime_seconds)}, key, algorithm="EdDSA")

    def direct(self, user: str):
        return self.minter.metadata(user, ("sessions", "llm", "files", "assistants"))

    async def api_key(self, user: str, scopes=("assistants", "sessions", "files", "llm")) -> str:
        from services.gateway.models import NewApiKey, Principal, RateLimits

        _, secret = await self.keys.create(Principal(user, frozenset({"admin"}), "cli"),
                                           NewApiKey("assistants-test", tuple(scopes), None, RateLimits(), False))
        return secret

    def engine_process(self, name: str, **env) -> EngineProcess:
        merged = {**self.engine_env, **{k: str(v) for k, v in env.items()}}
        return EngineProcess(merged, self.log_dir / f"engine-{name}-{uuid.uuid4().hex[:6]}.log")


@pytest.fixture(scope="session")
async def assistant_fakes():
    from tests.llm.fakes import FakeVendor

    servers = {name: await FakeVendor(name).start() for name in VENDORS}
    yield servers
    for server in servers.values():
        await server.stop()


@pytest.fixture(scope="session")
async def stack(postgres_server_url, vector_server_url, identity_private_key, identity_public_key, minter, assistant_fakes,
                tmp_path_factory):
    from services.files.app import FilesSettings
    from services.files.app import build_app as build_files_app
    from services.gateway.jwt_auth import JwtSettings
    from services.llm.app import build_app as build_llm_app
    from services.sessions.app import build_app as build_sessions_app
    from tests.gateway.conftest import gateway_settings, start_gateway
    from tests.llm.conftest import llm_settings, vendor_environment
    from tests.sessions.conftest import sessions_settings

    base = tmp_path_factory.mktemp("assistants-stack")
    identity_provider_key = generate_private_key_pem()  # an Ed25519 key, as an identity provider may use
    models = base / "models.yaml"
    models.write_text(_models_file())
    private, public = base / "identity.pem", base / "identity.pub.pem"
    private.write_bytes(identity_private_key)
    public.write_bytes(identity_public_key)
    private.chmod(0o600)

    # Databases of its own: the engines claim every queued run they can see, so they must
    # never meet the runs of the run store's own tests.
    async with fresh_database(postgres_server_url, "parley_assistants") as admin_url, \
            fresh_database(vector_server_url, "parley_assistants_files") as files_url:
        sessions = await serve_app(await build_sessions_app(sessions_settings(admin_url)), "sessions",
                                   identity_public_key)
        with vendor_environment(assistant_fakes):
            llm = await serve_app(await build_llm_app(llm_settings(admin_url, models_file=str(models))), "llm",
                                  identity_public_key)
        files = await serve_app(await build_files_app(FilesSettings(
            admin_url=files_url, database_url=None, role_password=None, pool_size=4, storage_dir=base / "files",
            llm_target=f"127.0.0.1:{llm.port}", identity_private_key=identity_private_key)), "files",
            identity_public_key)
        engine_env = {
            "PARLEY_IDENTITY_PRIVATE_KEY_FILE": str(private),
            "PARLEY_IDENTITY_PUBLIC_KEY_FILE": str(public),
            "PARLEY_SESSIONS_TARGET": f"127.0.0.1:{sessions.port}",
            "PARLEY_LLM_TARGET": f"127.0.0.1:{llm.port}",
            "PARLEY_FILES_TARGET": f"127.0.0.1:{files.port}",
            "PARLEY_SANDBOX_TARGET": "127.0.0.1:1",
            "PARLEY_ASSISTANTS_LEASE_SECONDS": str(LEASE_SECONDS),
            "PARLEY_ASSISTANTS_CLAIM_INTERVAL_SECONDS": "0.3",
            "PARLEY_LOG_LEVEL": "INFO",
            "PARLEY_SHUTDOWN_GRACE_SECONDS": "1",
            "PARLEY_STATE_DIR": str(base / "state"),
        }
        log_dir = base / "logs"
        log_dir.mkdir()
        engine = EngineProcess(engine_env, log_dir / "engine-main.log")
        await engine.wait_serving()
        gateway = await start_gateway(gateway_settings(
            admin_url, identity_private_key, targets={
                "llm": f"127.0.0.1:{llm.port}", "sessions": f"127.0.0.1:{sessions.port}",
                "files": f"127.0.0.1:{files.port}", "assistants": engine.target},
            jwt=JwtSettings(public_key_pem=public_key_pem(identity_provider_key), issuer=IDENTITY_PROVIDER,
                            audiences=("parley",))))
        stack = Stack(fakes=assistant_fakes, llm_port=llm.port, sessions_port=sessions.port, files_port=files.port,
                      gateway_port=gateway.port, engine=engine, engine_env=engine_env, minter=minter,
                      keys=gateway.app.gate.keys, log_dir=log_dir, database_url=admin_url,
                      identity_provider_key=identity_provider_key)
        try:
            yield stack
        finally:
            await gateway.stop(0.5)
            engine.stop()
            await files.stop(0.5)
            await llm.stop(0.5)
            await sessions.stop(0.5)


@pytest.fixture
async def start_engine(stack):
    """`await start_engine("b", PARLEY_ASSISTANTS_ACTION_TIMEOUT_SECONDS=2)` → a serving extra engine."""
    started: list[EngineProcess] = []

    async def start(name: str = "extra", **env) -> EngineProcess:
        process = stack.engine_process(name, **env)
        started.append(process)
        await process.wait_serving()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def user():
    return lambda: f"asst-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def engine_channel(stack):
    channel = grpc.aio.insecure_channel(stack.engine.target)
    yield channel
    await channel.close()


@pytest.fixture
async def backends(stack):
    """Stubs of sessions and files (direct, as the test's users)."""
    sessions = grpc.aio.insecure_channel(f"127.0.0.1:{stack.sessions_port}")
    files = grpc.aio.insecure_channel(f"127.0.0.1:{stack.files_port}")
    yield sgrpc.SessionServiceStub(sessions), fgrpc.FileServiceStub(files)
    await sessions.close()
    await files.close()


@dataclasses.dataclass
class CodeInterpreterStack:
    gateway: object  # RunningServer
    sandbox: object  # RunningServer
    sessions: object  # RunningServer
    sessions_url: str
    engine: EngineProcess


@pytest.fixture(scope="module")
async def code_interpreter_stack(stack, postgres_server_url, identity_private_key, identity_public_key):
    """A sandbox service, an engine process that uses it on its own sessions service (so the
    stack's other engine, which has no sandbox, never claims these runs from the queue), and
    a gateway in front of them; llm and files are the stack's. Used by the code interpreter's
    end-to-end tests and the user data deletion's; per module, so that its connections are
    closed before the tests after them (the embedded PostgreSQL takes 100)."""
    from services.gateway.jwt_auth import JwtSettings
    from services.sandbox.app import build_app as build_sandbox_app
    from services.sessions.app import build_app as build_sessions_app
    from tests.gateway.conftest import gateway_settings, start_gateway
    from tests.sandbox.conftest import sandbox_root, sandbox_settings
    from tests.sessions.conftest import sessions_settings

    sandbox = await serve_app(await build_sandbox_app(sandbox_settings(sandbox_root())), "sandbox",
                              identity_public_key)
    async with fresh_database(postgres_server_url, "parley_ci_sessions") as sessions_url:
        sessions = await serve_app(await build_sessions_app(sessions_settings(sessions_url)), "sessions",
                                   identity_public_key)
        engine = stack.engine_process("code-interpreter", PARLEY_SANDBOX_TARGET=f"127.0.0.1:{sandbox.port}",
                                      PARLEY_SESSIONS_TARGET=f"127.0.0.1:{sessions.port}")
        try:
            await engine.wait_serving()
            # The stack's gateway database, where stack.api_key() stores keys.
            gateway = await start_gateway(gateway_settings(stack.database_url, identity_private_key, targets={
                "llm": f"127.0.0.1:{stack.llm_port}", "sessions": f"127.0.0.1:{sessions.port}",
                "files": f"127.0.0.1:{stack.files_port}", "assistants": engine.target}, jwt=JwtSettings()))
            try:
                yield CodeInterpreterStack(gateway, sandbox, sessions, sessions_url, engine)
            finally:
                await gateway.stop(0.5)
        finally:
            engine.stop()
            await sessions.stop(0.5)
            await sandbox.stop(0.5)
