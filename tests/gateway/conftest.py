"""Gateway fixtures: the real sessions service behind a real gateway on real ports, a local
JWKS server, API keys, and a capture of every log line for the secrets check at the end."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from services.gateway.app import GatewaySettings, build_app
from services.gateway.jwt_auth import JwtSettings
from services.gateway.models import NewApiKey, Principal, RateLimits
from services.runtime.config import ServerSettings
from services.runtime.logs import JsonFormatter
from services.runtime.server import start_server
from services.sessions.app import SessionsSettings
from services.sessions.app import build_app as build_sessions_app
from tests.conftest import serve_app

# Every secret and sample of PII a test sends; none may reach a log (test_logs.py, and the
# check at the end of the session in `capture_logs`).
SENSITIVE: set[str] = set()
LOG_BUFFER = io.StringIO()
# Log files of gateway and backend processes started by tests.
PROCESS_LOGS: list = []

ISSUER = "https://clerk.parley.test"
AUDIENCE = "parley-api"


@pytest.fixture(scope="session", autouse=True)
def capture_logs():
    """Every log line of this process, formatted (and masked) as in production."""
    handler = logging.StreamHandler(LOG_BUFFER)
    handler.setFormatter(JsonFormatter("test"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    yield
    root.removeHandler(handler)
    root.setLevel(previous)
    # Whatever ran after test_logs.py is checked too, so no test order is special.
    leaked = leaked_secrets()
    assert not leaked, f"secrets or PII in logs: {leaked}"


def captured_logs() -> str:
    """Every line logged so far by this process and by the processes tests started."""
    chunks = [LOG_BUFFER.getvalue()]
    for path in PROCESS_LOGS:
        if path.exists():
            chunks.append(path.read_text(errors="replace"))
    return "\n".join(chunks)


def leaked_secrets(extra=()) -> list[str]:
    """The secrets and PII samples (shortened) that appear in a captured log line. The secret
    part of an API key counts even without its prefix."""
    logs = captured_logs()
    leaked = [s[:16] + "…" for s in SENSITIVE | set(extra) if s in logs]
    leaked += [s[:12] + "…" for s in SENSITIVE if s.startswith("pk_live_") and s[8:] in logs]
    return leaked


def sensitive(value: str) -> str:
    SENSITIVE.add(value)
    return value


# --- JWKS ----------------------------------------------------------------------------


class Jwks:
    """A JWKS endpoint on a local port, whose key set tests change, and signing keys."""

    def __init__(self) -> None:
        self.keys: dict[str, object] = {}  # kid → private key
        self.published: list[str] = []
        self.fetches = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                jwks.fetches += 1
                body = json.dumps({"keys": [jwks.public_jwk(kid) for kid in jwks.published]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, kid: str, kind: str = "RS256", publish: bool = True):
        if kind == "RS256":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif kind == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = ed25519.Ed25519PrivateKey.generate()
        self.keys[kid] = (kind, key)
        if publish:
            self.published.append(kid)
        return key

    def public_jwk(self, kid: str) -> dict:
        kind, key = self.keys[kid]
        algorithm = {"RS256": jwt.algorithms.RSAAlgorithm, "ES256": jwt.algorithms.ECAlgorithm,
                     "EdDSA": jwt.algorithms.OKPAlgorithm}[kind]
        jwk = json.loads(algorithm.to_jwk(key.public_key()))
        jwk.update(kid=kid, use="sig", alg=kind)
        return jwk

    def token(self, kid: str, *, user: str = "user_2abcDEF", headers: dict | None = None, **claims) -> str:
        import time

        kind, key = self.keys[kid]
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": user, "iat": now, "nbf": now, "exp": now + 300,
                "azp": "https://app.parley.test"}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return sensitive(jwt.encode(body, key, algorithm=kind, headers={"kid": kid, **(headers or {})}))

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="session")
def jwks():
    server = Jwks()
    server.add("k1", "RS256")
    server.add("k2", "ES256")
    server.add("k3", "EdDSA")
    yield server
    server.close()


# --- servers -------------------------------------------------------------------------


def gateway_settings(admin_url: str, private_key: bytes, targets: dict, **overrides) -> GatewaySettings:
    values = dict(
        admin_url=admin_url,
        database_url=None,
        role_password=None,
        pool_size=5,
        identity_private_key=private_key,
        identity_ttl_seconds=60.0,
        targets=targets,
        jwt=JwtSettings(),
        key_limits=RateLimits(10_000, 50, 0),
        user_limits=RateLimits(20_000, 100, 0),
        redis_url=None,
        key_cache_seconds=10.0,
        max_request_bytes=256 * 1024,
        max_message_bytes=64 * 1024 * 1024,
        health_interval_seconds=0.5,
    )
    values.update(overrides)
    return GatewaySettings(**values)


def settings_for(service: str) -> ServerSettings:
    return ServerSettings(service=service, host="127.0.0.1", port=0, shutdown_grace=1.0,
                          max_message_bytes=64 * 1024 * 1024, identity_public_key=None)


async def start_gateway(settings: GatewaySettings):
    app = await build_app(settings)
    return await start_server(app, settings_for("gateway"), verifier=None)


@pytest.fixture(scope="session")
async def sessions_backend(admin_url, identity_public_key):
    app = await build_sessions_app(SessionsSettings(
        admin_url=admin_url, database_url=None, role_password=None, pool_size=10,
        max_message_bytes=1024 * 1024, retention_days=0.0, retention_interval_seconds=3600.0,
    ))
    running = await serve_app(app, "sessions", identity_public_key)
    yield running
    await running.stop(0.5)


class ObservedVendor:
    """Stands in for a model vendor behind the real llm service: the local echo model,
    answering one word every `delay` seconds, recording how each answer ended."""

    def __init__(self, delay: float = 0.0) -> None:
        from services.llm.providers.local import LocalProvider

        self._local = LocalProvider()
        self.name = "local"
        self.delay = delay
        self.started = 0
        self.finished = 0
        self.closed_early = 0
        self.words_sent: list[int] = []

    async def stream(self, model, request, *, max_tokens, timeout):
        import asyncio

        self.started += 1
        sent, complete = 0, False
        try:
            async for event in self._local.stream(model, request, max_tokens=max_tokens, timeout=timeout):
                if self.delay and sent:
                    await asyncio.sleep(self.delay)
                sent += 1
                yield event
            complete = True
        finally:
            self.words_sent.append(sent)
            if complete:
                self.finished += 1
            else:
                self.closed_early += 1  # the consumer went away: the vendor request is closed

    async def embed(self, *args, **kwargs):
        return await self._local.embed(*args, **kwargs)

    async def aclose(self):
        await self._local.aclose()


@pytest.fixture(scope="session")
def vendor():
    return ObservedVendor()


@pytest.fixture(scope="session")
async def llm_backend(admin_url, identity_public_key, vendor):
    import dataclasses

    from services.llm.app import LLMSettings
    from services.llm.app import build_app as build_llm_app

    settings = dataclasses.replace(LLMSettings.from_env(), admin_url=admin_url, database_url=None, use_database=True,
                                   usage_flush_seconds=0.1, warm_embeddings=False, redis_url=None, models_file=None,
                                   providers={"local": vendor})
    running = await serve_app(await build_llm_app(settings), "llm", identity_public_key)
    yield running
    await running.stop(0.5)


@pytest.fixture(scope="session")
async def files_admin_url(vector_server_url):
    """The files backend's own database (its workers must not meet the files tests' jobs)."""
    from tests.conftest import fresh_database

    async with fresh_database(vector_server_url, "parley_gw_files") as url:
        yield url


@pytest.fixture(scope="session")
async def files_backend(files_admin_url, llm_backend, identity_private_key, identity_public_key, tmp_path_factory):
    from services.files.app import FilesSettings
    from services.files.app import build_app as build_files_app

    settings = FilesSettings(admin_url=files_admin_url, database_url=None, role_password=None, pool_size=4,
                             storage_dir=tmp_path_factory.mktemp("gw-files"),
                             llm_target=f"127.0.0.1:{llm_backend.port}", identity_private_key=identity_private_key)
    running = await serve_app(await build_files_app(settings), "files", identity_public_key)
    yield running
    await running.stop(0.5)


@pytest.fixture(scope="session")
async def gateway(admin_url, identity_private_key, sessions_backend, llm_backend, files_backend, jwks):
    settings = gateway_settings(
        admin_url, identity_private_key,
        targets={"llm": f"127.0.0.1:{llm_backend.port}", "sessions": f"127.0.0.1:{sessions_backend.port}",
                 "files": f"127.0.0.1:{files_backend.port}", "assistants": None},
        jwt=JwtSettings(jwks_url=jwks.url, issuer=ISSUER, audiences=(AUDIENCE,), jwks_min_refresh_seconds=0),
    )
    running = await start_gateway(settings)
    yield running
    await running.stop(0.5)


@pytest.fixture
async def gateway_with_files_down(admin_url, identity_private_key, sessions_backend):
    """A gateway whose files backend is a port nobody listens on."""
    running = await start_gateway(gateway_settings(admin_url, identity_private_key, targets={
        "llm": None, "sessions": f"127.0.0.1:{sessions_backend.port}", "files": "127.0.0.1:1", "assistants": None}))
    yield running
    await running.stop(0.5)


@pytest.fixture(scope="session")
def keys(gateway):
    return gateway.app.gate.keys


@pytest.fixture(scope="session")
def make_key(keys) -> Callable:
    """`await make_key("alice", ["sessions"])` → a fresh secret (the domain call, as the CLI makes it)."""

    async def make(user: str = "alice", scopes=("sessions",), *, limits: RateLimits = RateLimits(),
                   redact: bool = False, expire_time=None, name: str = "test") -> str:
        _, secret = await keys.create(Principal(user, frozenset({"admin"}), "cli"),
                                      NewApiKey(name, tuple(scopes), expire_time, limits, redact))
        return sensitive(secret)

    return make


@pytest.fixture
async def gw_channel(gateway):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    yield channel
    await channel.close()


def bearer(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {credential}"),)


# --- processes -----------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_serving(port: int, process, service: str = "", attempts: int = 300) -> None:
    """Polls health until SERVING (bounded: about a minute), failing if the process died."""
    import asyncio

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(attempts):
            assert process.poll() is None, f"process exited with {process.returncode}"
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"port {port} never became SERVING")


def spawn(module: str, env: dict, log_dir, name: str):
    """`python -m <module>` with `env` added, its stderr kept for the log check."""
    import os
    import subprocess
    import sys

    log_path = log_dir / f"{name}.log"
    PROCESS_LOGS.append(log_path)
    out = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **env}, stdout=out, stderr=out)
    process.log_file = out
    return process


def stop(process) -> None:
    import signal

    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except Exception:  # noqa: BLE001
            process.kill()
            process.wait()
    process.log_file.close()


@pytest.fixture(scope="session")
def key_files(tmp_path_factory, identity_private_key, identity_public_key):
    directory = tmp_path_factory.mktemp("keys")
    private, public = directory / "identity.pem", directory / "identity.pub.pem"
    private.write_bytes(identity_private_key)
    public.write_bytes(identity_public_key)
    return private, public


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("process-logs")


def gateway_env(admin_url: str, key_files, port: int, targets: dict, **extra) -> dict:
    env = {
        "PARLEY_DATABASE_URL": admin_url,
        "PARLEY_IDENTITY_PRIVATE_KEY_FILE": str(key_files[0]),
        "PARLEY_GATEWAY_PORT": str(port),
        "PARLEY_LOG_LEVEL": "INFO",
        "PARLEY_SHUTDOWN_GRACE_SECONDS": "1",
    }
    for name in ("llm", "sessions", "files", "assistants"):
        env[f"PARLEY_{name.upper()}_TARGET"] = targets.get(name) or "none"
    env.update({k: str(v) for k, v in extra.items()})
    return env


class EndlessVendor:
    """An OpenAI-compatible HTTP endpoint on a local port that streams a chat completion in
    the real SSE wire format, one word every `pace` seconds, until its client hangs up (or
    `max_words`), counting the hang-ups: what a vendor sees when Parley cancels."""

    def __init__(self, pace: float = 0.02, max_words: int = 3000) -> None:
        self.pace = pace
        self.max_words = max_words
        self.requests = 0
        self.hangups = 0
        self.completed = 0
        self.port = 0
        self._runner = None

    async def start(self) -> EndlessVendor:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _chat(self, request):
        import asyncio

        from aiohttp import web

        self.requests += 1
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": "chatcmpl-endless", "object": "chat.completion.chunk", "created": 1700000000,
                "model": body.get("model", "gpt-4o-mini")}

        async def send(delta: dict, finish=None) -> None:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        try:
            await send({"role": "assistant", "content": ""})
            for i in range(self.max_words):
                await send({"content": f"w{i} "})
                await asyncio.sleep(self.pace)
            await send({}, "stop")
            await response.write(b"data: [DONE]\n\n")
            self.completed += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.hangups += 1
            raise
        return response

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
