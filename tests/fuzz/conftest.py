"""The fuzz stack: the launcher's suite as real processes on real ports, two users with real
API keys (an admin key and a normal key for alice, an admin key for mallory, whose ids
alice's cases borrow), minted identities for the internal services, and the summary printed
at the end of the run (per method and per status)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import pytest

from tests.fuzz.runner import REPORT, Fuzzer, Principal, Route
from tests.fuzz.stack import CHANNEL_OPTIONS, Loop, fuzz_env, reflected_services, suite_services
from tests.fuzz.strategies import Pools, harvest
from tests.fuzz.surface import UNREACHABLE, all_services
from tests.processes import ServiceProcess, Suite

ALICE, MALLORY = "fuzz-alice", "fuzz-mallory"


@pytest.fixture(scope="session")
def fuzz_loop():
    loop = Loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def fuzz_vendors(fuzz_loop):
    from tests.llm.fakes import FakeVendor

    async def start():
        return {name: await FakeVendor(name).start() for name in ("openai", "anthropic", "mistral")}

    vendors = fuzz_loop.run(start())
    yield vendors

    async def stop_all():
        for vendor in vendors.values():
            await vendor.stop()

    fuzz_loop.run(stop_all())


@pytest.fixture(scope="session")
async def fuzz_database_url(vector_server_url):
    from tests.conftest import fresh_database

    async with fresh_database(vector_server_url, "parley_fuzz") as url:
        yield url


@pytest.fixture(scope="session")
def fuzz_processes(fuzz_database_url, fuzz_vendors, identity_private_key):
    from tests.conftest import private_temp_dir

    directory = private_temp_dir("parley-fuzz-state-")
    directory.chmod(0o711)  # the sandbox's own uids must reach its directory under it
    keep = os.environ.get("PARLEY_FUZZ_LOG_DIR")  # to read the processes' logs after the run
    suite = Suite(directory, fuzz_database_url, services=tuple(suite_services()),
                  extra_env=fuzz_env({name: vendor.base_url for name, vendor in fuzz_vendors.items()}),
                  private_key=identity_private_key, metrics=False, log_dir=Path(keep) if keep else None)
    suite.start(timeout=150)
    try:
        yield suite
    finally:
        suite.stop()


@pytest.fixture(scope="session")
def fuzzer(fuzz_processes, fuzz_loop, minter) -> Fuzzer:
    from parley.gateway.v1 import gateway_pb2, gateway_service_pb2

    processes = fuzz_processes.processes
    REPORT.code_path = str(Path(__import__("services").__file__).parent)
    channels = {name: fuzz_loop.run(_channel(p.port)) for name, p in processes.items()}
    for name, process in processes.items():
        process.services = fuzz_loop.run(reflected_services(channels[name]))

    secrets = fuzz_processes.admin_keys([ALICE, MALLORY], name="fuzz")

    def bearer(secret: str):
        return lambda: (("authorization", f"Bearer {secret}"),)

    identities: dict[str, tuple[float, tuple]] = {}

    def identity(user: str):
        def metadata():
            minted_at, value = identities.get(user, (0.0, ()))
            if time.monotonic() - minted_at > 20:  # identities live 60 s
                value = minter.metadata(user, ("admin", "assistants", "files", "llm", "sessions"))
                identities[user] = (time.monotonic(), value)
            return value

        return metadata

    # A normal (non-admin) key for alice, with every other scope, through the public API.
    scopes = [v.number for v in gateway_pb2.Scope.DESCRIPTOR.values if v.name not in ("SCOPE_UNSPECIFIED", "SCOPE_ADMIN")]
    created = fuzz_loop.run(_unary(channels["gateway"], "/parley.gateway.v1.ApiKeyService/CreateApiKey",
                                   gateway_service_pb2.CreateApiKeyRequest(name="fuzz normal", scopes=scopes),
                                   gateway_service_pb2.CreateApiKeyResponse, bearer(secrets[ALICE])()))
    principals = {
        "alice-admin": Principal("alice-admin", ALICE, bearer(secrets[ALICE]), internal=False),
        "alice-key": Principal("alice-key", ALICE, bearer(created.secret), internal=False),
        "mallory-admin": Principal("mallory-admin", MALLORY, bearer(secrets[MALLORY]), internal=False),
        "alice-identity": Principal("alice-identity", ALICE, identity(ALICE), internal=True),
        "mallory-identity": Principal("mallory-identity", MALLORY, identity(MALLORY), internal=True),
    }

    pools = Pools()
    # The suite's own users are never offered to DeleteUserData cases (their keys would go).
    pools.protected.update((ALICE, MALLORY))
    # The suite's own keys are never offered to Revoke/Rotate cases.
    for user, principal in ((ALICE, "alice-admin"), (MALLORY, "mallory-admin")):
        listed = fuzz_loop.run(_unary(channels["gateway"], "/parley.gateway.v1.ApiKeyService/ListApiKeys",
                                      gateway_service_pb2.ListApiKeysRequest(page_size=100),
                                      gateway_service_pb2.ListApiKeysResponse, principals[principal].metadata()))
        pools.protected.update(k.id for k in listed.api_keys)

    routes = _routes(processes, channels, fuzz_loop)
    fuzzer = Fuzzer(fuzz_loop, processes, routes, principals, pools, REPORT)
    _seed_models(fuzzer)
    fuzzer.discover_root_lists()
    fuzzer.startup_log = {name: p.new_log() for name, p in processes.items()}
    yield fuzzer
    for channel in channels.values():
        fuzz_loop.run(channel.close())


async def _channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)


async def _unary(channel, path, request, response_class, metadata):
    call = channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response_class.FromString)
    return await call(request, metadata=metadata, timeout=30)


def _routes(processes: dict[str, ServiceProcess], channels, loop) -> dict[str, Route]:
    """Public services through the gateway (when it reports their backend SERVING), the
    rest straight to the process whose reflection lists them."""
    from tests.fuzz.stack import health_status

    routes: dict[str, Route] = {}
    public = ["alice-admin"] * 4 + ["alice-key"] * 4 + ["mallory-admin"]
    internal = ["alice-identity"] * 8 + ["mallory-identity"]
    gateway = processes.get("gateway")
    backends = {s: name for name, p in processes.items() if name != "gateway" for s in p.services}
    proxied = _proxied()
    for service in (s.full_name for s in all_services()):
        if service in proxied:
            # Public: through the gateway, once it reports the backend behind it SERVING.
            if gateway and service in gateway.services and service in backends \
                    and loop.run(health_status(channels["gateway"], service)) == "SERVING":
                routes[service] = Route(service, "gateway", channels["gateway"], public + ["alice-identity"],
                                        backend_channel=channels[backends[service]])
        elif gateway and service in gateway.services:
            routes[service] = Route(service, "gateway", channels["gateway"], public)  # the gateway's own
        elif service in backends:
            routes[service] = Route(service, backends[service], channels[backends[service]], internal)
    for service in (s.full_name for s in all_services()):
        if service not in routes and service in UNREACHABLE:
            REPORT.unreachable[service] = UNREACHABLE[service]
    return routes


def _proxied() -> set[str]:
    from services.gateway.routes import service_names

    return set(service_names())


def _seed_models(fuzzer: Fuzzer) -> None:
    """The model ids the llm service offers, so `model` fields name real ones too."""
    from parley.llm.v1 import llm_service_pb2

    service = "parley.llm.v1.LLMService"
    route = fuzzer.routes.get(service)
    if route is None:
        return
    reply = fuzzer.loop.run(_unary(route.channel, f"/{service}/ListModels", llm_service_pb2.ListModelsRequest(),
                                   llm_service_pb2.ListModelsResponse,
                                   fuzzer.principals[route.principals[0]].metadata()))
    for user in (ALICE, MALLORY):
        harvest(reply, user, fuzzer.pools)


def pytest_terminal_summary(terminalreporter):
    if not REPORT.tally and not REPORT.unreachable:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fuzz: cases per method and status")
    write(f"code under test: {REPORT.code_path}")
    codes = sorted(REPORT.totals())
    write(f"{'method':<44}" + "".join(f"{c[:16]:>18}" for c in codes) + f"{'total':>8}")
    for method, counts in sorted(REPORT.tally.items()):
        write(f"{method:<44}" + "".join(f"{counts.get(c, 0):>18}" for c in codes) + f"{sum(counts.values()):>8}")
    totals = REPORT.totals()
    write(f"{'TOTAL':<44}" + "".join(f"{totals.get(c, 0):>18}" for c in codes) + f"{sum(totals.values()):>8}")
    for service, reason in sorted(REPORT.unreachable.items()):
        write(f"not reachable, listed: {service}: {reason}")
    if REPORT.findings:
        terminalreporter.section("fuzz: findings")
        for finding in REPORT.findings:
            write(finding.line())
    path = os.environ.get("PARLEY_FUZZ_REPORT")
    if path:
        Path(path).write_text(json.dumps(REPORT.to_json(), indent=1, default=str))
