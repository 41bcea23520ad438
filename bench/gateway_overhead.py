"""Gateway benchmark: what the gateway adds to a call. The same calls go to the llm service
directly (with a minted identity, as the gateway would send), through the gateway (with an
API key), and through a bare Python gRPC proxy (bench/_bare_proxy.py: the cost of the hop
alone), in one run, alternating rounds: unary p50/p99 (Generate on `local/echo`), stream
time to first token, and streaming throughput, at concurrency 1 and 32.
Run with `python -m bench.gateway_overhead` (about two and a half minutes)."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench._common import (
    UNLIMITED_GATEWAY,
    ServiceProcess,
    admin_api_key,
    free_port,
    identity_env,
    percentile,
    run_concurrently,
)
from parley.llm.v1 import llm_pb2
from parley.llm.v1 import llm_service_pb2 as api
from parley.llm.v1 import llm_service_pb2_grpc as api_grpc
from services.runtime.db import start_embedded_postgres
from services.runtime.identity import IdentityMinter

ROUNDS = 2
UNARY_CALLS = {1: 900, 32: 3200}
TTFT_STREAMS = {1: 240, 32: 960}
LONG_STREAM_WORDS = 2000
THROUGHPUT_STREAMS = {1: 3, 32: 32}


def _messages(text: str) -> list[llm_pb2.ChatMessage]:
    return [llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text=text)])]


async def unary(stub, metadata, clients: int, total: int) -> list[float]:
    request = api.GenerateRequest(model="local/echo", messages=_messages("How do I rotate an API key?"))

    async def call():
        await stub.Generate(request, metadata=metadata)

    return (await run_concurrently(call, clients, total))[1]


async def ttft(stub, metadata, clients: int, total: int) -> list[float]:
    request = api.StreamGenerateRequest(model="local/echo", messages=_messages("time to the first token"))
    firsts: list[float] = []

    async def call():
        started = time.perf_counter()
        seen = False
        async for _ in stub.StreamGenerate(request, metadata=metadata):
            if not seen:
                firsts.append(time.perf_counter() - started)
                seen = True

    await run_concurrently(call, clients, total)
    return firsts


async def throughput(stub, metadata, streams: int) -> float:
    """Tokens per second over `streams` concurrent long streams (llm coalesces deltas that
    are waiting into one message, so messages are not a fair count; tokens are)."""
    text = " ".join(f"w{i}" for i in range(LONG_STREAM_WORDS))
    request = api.StreamGenerateRequest(model="local/echo", messages=_messages(text))

    async def one() -> int:
        last = None
        async for event in stub.StreamGenerate(request, metadata=metadata):
            last = event
        return last.finish.usage.output_tokens

    started = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(streams)))
    return sum(counts) / (time.perf_counter() - started)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


async def measure(direct, gateway, bare) -> list[str]:
    """direct/gateway/bare: (stub, metadata). Alternating rounds; pooled percentiles,
    medians of throughput over rounds."""
    lines = []
    for clients in (1, 32):
        results: dict[str, dict[str, list]] = {
            k: {"direct": [], "gateway": [], "bare": []} for k in ("unary", "ttft", "tput")
        }
        for round_number in range(ROUNDS):
            print(f"concurrency {clients}, round {round_number + 1}/{ROUNDS}", file=sys.stderr, flush=True)
            for name, (stub, metadata) in (("direct", direct), ("gateway", gateway), ("bare", bare)):
                results["unary"][name].append(await unary(stub, metadata, clients, UNARY_CALLS[clients] // ROUNDS))
                results["ttft"][name].append(await ttft(stub, metadata, clients, TTFT_STREAMS[clients] // ROUNDS))
                results["tput"][name].append(await throughput(stub, metadata, THROUGHPUT_STREAMS[clients]))

        def pooled(kind, name):
            return [v for round_values in results[kind][name] for v in round_values]

        for kind, label in (("unary", "unary Generate"), ("ttft", "stream time to first token")):
            d, g, b = pooled(kind, "direct"), pooled(kind, "gateway"), pooled(kind, "bare")
            d50, g50, b50 = percentile(d, 0.5), percentile(g, 0.5), percentile(b, 0.5)
            d99, g99, b99 = percentile(d, 0.99), percentile(g, 0.99), percentile(b, 0.99)
            lines.append(f"| {clients} | {label} | p50 {_ms(d50)}, p99 {_ms(d99)} | p50 {_ms(g50)}, p99 {_ms(g99)} "
                         f"| **{(g50 - d50) * 1e3:+.2f} ms** ({g50 / d50:.2f}×) | {(g99 - d99) * 1e3:+.2f} ms "
                         f"({g99 / d99:.2f}×) | {(b50 - d50) * 1e3:+.2f} ms / {(b99 - d99) * 1e3:+.2f} ms |")
        d, g, b = (statistics.median(results["tput"][n]) for n in ("direct", "gateway", "bare"))
        lines.append(f"| {clients} | streaming throughput ({THROUGHPUT_STREAMS[clients]} streams × {LONG_STREAM_WORDS} "
                     f"tokens) | {d:,.0f} tokens/s | {g:,.0f} tokens/s | **{g / d:.2f}× direct** | | "
                     f"{b / d:.2f}× direct |")
    return lines


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="parley-bench-gw-") as tmp:
        admin_url = os.environ.get("PARLEY_DATABASE_URL") or start_embedded_postgres(Path(tmp) / "pg")
        common = {"PARLEY_DATABASE_URL": admin_url, "PARLEY_REDIS_URL": "", **identity_env(Path(tmp))}
        private_key = Path(common["PARLEY_IDENTITY_PRIVATE_KEY_FILE"]).read_bytes()
        llm_env = {**common, "PARLEY_LLM_WARM_EMBEDDINGS": "false"}
        async with ServiceProcess("llm", llm_env) as llm:
            gateway_env = {**common, "PARLEY_LLM_TARGET": f"127.0.0.1:{llm.port}", "PARLEY_SESSIONS_TARGET": "none",
                           "PARLEY_FILES_TARGET": "none", "PARLEY_ASSISTANTS_TARGET": "none", **UNLIMITED_GATEWAY}
            async with ServiceProcess("gateway", gateway_env) as gateway:
                api_key = admin_api_key(common)
                minter = IdentityMinter(private_key, ttl_seconds=3600)
                bare_port = free_port()
                bare_process = subprocess.Popen([sys.executable, "-m", "bench._bare_proxy", f"127.0.0.1:{llm.port}",
                                                 str(bare_port)], cwd=Path(__file__).resolve().parent.parent)
                try:
                    async with grpc.aio.insecure_channel(f"127.0.0.1:{llm.port}") as direct_channel, \
                            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as gateway_channel, \
                            grpc.aio.insecure_channel(f"127.0.0.1:{bare_port}") as bare_channel:
                        identity = minter.metadata("bench", {"admin"})
                        direct = (api_grpc.LLMServiceStub(direct_channel), identity)
                        via = (api_grpc.LLMServiceStub(gateway_channel), (("authorization", f"Bearer {api_key}"),))
                        bare = (api_grpc.LLMServiceStub(bare_channel), identity)
                        await asyncio.wait_for(bare_channel.channel_ready(), 30)
                        for path in (direct, via, bare):  # warm up: connections, caches
                            await unary(*path, 8, 200)
                        lines = await measure(direct, via, bare)
                finally:
                    bare_process.terminate()
                    bare_process.wait(10)
    print("| clients | measure | direct to llm | through the gateway | added at p50 | added at p99 "
          "| bare proxy (hop alone): added p50 / p99 |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
