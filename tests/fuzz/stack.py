"""What the fuzz stack adds to the shared launcher (tests/processes.py, which starts every
service of the launcher's SUITE as its own process on a free port, with identity keys and a
log file per process for the traceback check): its settings, with fake vendors behind the
llm service's real SDKs, and helpers to ask the processes what they serve.

Calls are made from an event loop on a thread of its own (`Loop`), so the synchronous
hypothesis loop can send a batch of cases concurrently and wait for it.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
INFRA_SERVICES = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                  "grpc.reflection.v1.ServerReflection"}


class Loop:
    """An asyncio loop on a daemon thread; `run(coro)` waits for its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 600.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def suite_services() -> list[str]:
    """The launcher's gRPC services in start order (each service issue adds its entry there).
    HTTP services (the REST edge) serve no RPC of the contracts: they have tests of their own."""
    import services.__main__ as launcher

    table = getattr(launcher, "SERVICES", None)
    if table is None:  # the launcher before its service table
        return list(launcher.SUITE)
    return [service.name for service in table if not getattr(service, "http_health", None)]


def fuzz_env(vendors: dict[str, str]) -> dict[str, str]:
    """The stack's settings beyond the shared launcher's (tests/processes.py)."""
    return {
        "PARLEY_SHUTDOWN_GRACE_SECONDS": "1",
        # The fuzz cases come fast from two users: limits are not what is under test here.
        "PARLEY_GATEWAY_KEY_REQUESTS_PER_MINUTE": "10000000",
        "PARLEY_GATEWAY_USER_REQUESTS_PER_MINUTE": "10000000",
        "PARLEY_GATEWAY_KEY_CONCURRENT_STREAMS": "10000",
        "PARLEY_GATEWAY_USER_CONCURRENT_STREAMS": "10000",
        "PARLEY_GATEWAY_HEALTH_INTERVAL_SECONDS": "1",
        "PARLEY_GATEWAY_KEY_CACHE_SECONDS": "1",
        "PARLEY_LLM_WARM_EMBEDDINGS": "false",
        "PARLEY_LLM_BACKOFF_BASE_SECONDS": "0.01",
        "PARLEY_LLM_BACKOFF_MAX_SECONDS": "0.05",
        "PARLEY_LLM_QUEUE_TIMEOUT_SECONDS": "5",
        "PARLEY_FILES_POLL_SECONDS": "0.5",
        "OPENAI_API_KEY": "sk-fuzz-openai-0123456789abcdef",
        "OPENAI_BASE_URL": vendors["openai"] + "/v1",
        "ANTHROPIC_API_KEY": "sk-ant-fuzz-0123456789abcdef",
        "ANTHROPIC_BASE_URL": vendors["anthropic"],
        "MISTRAL_API_KEY": "mistral-fuzz-0123456789abcdef",
        "MISTRAL_BASE_URL": vendors["mistral"],
        "OLLAMA_BASE_URL": vendors["openai"] + "/v1",
    }


async def health_status(channel: grpc.aio.Channel, service: str = "") -> str:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                 timeout=5)
    except grpc.aio.AioRpcError as exc:
        return f"error {exc.code().name}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def reflected_services(channel: grpc.aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for reply in stub.ServerReflectionInfo(requests(), timeout=10):
        return sorted(s.name for s in reply.list_services_response.service if s.name not in INFRA_SERVICES)
    return []
