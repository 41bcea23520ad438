"""LLM service benchmark: token streams through the llm service vs the bare `openai` SDK,
both against the same fake OpenAI-compatible upstream on loopback, in one run.

Measures streams per second and time to first token at concurrency 1 and 32, with 20 and
200 tokens per stream, and prints each as a ratio to the baselines measured in the same run:
the SDK as applications use it (typed chunks), and the SDK with its server-sent events
decoded by json.loads, which is how the service reads upstream (so the difference between
that and the service is the service's own cost: the gRPC hop and its per-call work).
Three processes: the upstream, the llm service, and this client (which also runs the
baseline SDK). Run with `python -m bench.llm_streaming`.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import openai

from bench._common import ServiceProcess, free_port, percentile
from parley.llm.v1 import llm_pb2 as pb
from parley.llm.v1 import llm_service_pb2 as api
from parley.llm.v1 import llm_service_pb2_grpc as api_grpc
from services.runtime.db import start_embedded_postgres
from services.runtime.identity import IdentityMinter, generate_private_key_pem, public_key_pem

# (concurrency, tokens per stream) -> streams per measured round.
CASES = {(1, 20): 120, (1, 200): 30, (32, 20): 480, (32, 200): 120}
MESSAGES = [{"role": "user", "content": "Tell me a story."}]


async def run(operation, clients: int, total: int) -> tuple[float, list[float]]:
    """(wall seconds, time to first token of each stream)."""
    ttfts: list[float] = []
    remaining = total

    async def worker():
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            ttfts.append(await operation())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - started, ttfts


def sdk_stream(client: openai.AsyncOpenAI, tokens: int):
    async def once() -> float:
        started = time.perf_counter()
        first = None
        stream = await client.chat.completions.create(model=f"fake-{tokens}", messages=MESSAGES, stream=True,
                                                      stream_options={"include_usage": True})
        count = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                count += 1
                if first is None:
                    first = time.perf_counter() - started
        assert count == tokens, count
        return first

    return once


def sdk_raw_stream(client: openai.AsyncOpenAI, tokens: int):
    """The SDK sending the request, its server-sent events decoded with json.loads: what the
    service itself does upstream, so service minus this is the service's own cost."""

    async def once() -> float:
        started = time.perf_counter()
        first = None
        count = 0
        async with client.chat.completions.with_streaming_response.create(
                model=f"fake-{tokens}", messages=MESSAGES, stream=True, stream_options={"include_usage": True}) as response:
            async for line in response.iter_lines():
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    count += 1
                    if first is None:
                        first = time.perf_counter() - started
        assert count == tokens, count
        return first

    return once


def service_stream(stub, metadata, tokens: int):
    request = api.StreamGenerateRequest(model=f"bench/fake-{tokens}",
                                        messages=[pb.ChatMessage(role=pb.ROLE_USER,
                                                                 content=[pb.ContentPart(text="Tell me a story.")])])

    async def once() -> float:
        started = time.perf_counter()
        first = None
        count = 0
        async for event in stub.StreamGenerate(request, metadata=metadata):
            if event.WhichOneof("event") == "text_delta":
                # Deltas that were waiting together arrive merged: count the words.
                count += event.text_delta.text.count(" ")
                if first is None:
                    first = time.perf_counter() - started
        assert count == tokens, count
        return first

    return once


async def measure(name, operation, clients, total):
    await run(operation, clients, max(clients, total // 10))  # warm-up
    wall, ttfts = await run(operation, clients, total)
    return {"name": name, "rate": total / wall, "ttft_p50": percentile(ttfts, 0.5), "ttft_p99": percentile(ttfts, 0.99),
            "ttft_mean": statistics.fmean(ttfts)}


async def main() -> None:
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "bench._fake_openai", str(upstream_port)],
                                cwd=Path(__file__).resolve().parent.parent)
    tmp = tempfile.TemporaryDirectory(prefix="parley-bench-llm-")
    try:
        admin_url = start_embedded_postgres(Path(tmp.name) / "pg")
        private = generate_private_key_pem()
        models = Path(tmp.name) / "models.yaml"
        models.write_text(
            "providers:\n  bench:\n    type: openai_compatible\n"
            f"    base_url: http://127.0.0.1:{upstream_port}/v1\n"
        )
        env = {
            "PARLEY_DATABASE_URL": admin_url,
            "PARLEY_IDENTITY_PUBLIC_KEY": public_key_pem(private).decode(),
            "PARLEY_MODELS_FILE": str(models),
            "PARLEY_LLM_WARM_EMBEDDINGS": "false",
        }
        metadata = IdentityMinter(private, ttl_seconds=3600).metadata("bench")
        client = openai.AsyncOpenAI(api_key="bench", base_url=f"http://127.0.0.1:{upstream_port}/v1", max_retries=0,
                                    http_client=openai.DefaultAioHttpClient())
        # Wait for the upstream.
        for _ in range(100):
            try:
                await sdk_stream(client, 1)()
                break
            except openai.APIConnectionError:
                await asyncio.sleep(0.1)
        async with ServiceProcess("llm", env) as service:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
            stub = api_grpc.LLMServiceStub(channel)
            rows = []
            for (clients, tokens), total in CASES.items():
                base = await measure("sdk", sdk_stream(client, tokens), clients, total)
                raw = await measure("sdk-raw", sdk_raw_stream(client, tokens), clients, total)
                through = await measure("service", service_stream(stub, metadata, tokens), clients, total)
                rows.append((clients, tokens, base, raw, through))
                print(f"  c={clients:<2} tokens={tokens:<3}  sdk {base['rate']:7.1f}/s ttft {base['ttft_p50'] * 1e3:6.2f} ms"
                      f" | sdk-raw {raw['rate']:7.1f}/s ttft {raw['ttft_p50'] * 1e3:6.2f} ms"
                      f" | service {through['rate']:7.1f}/s ttft {through['ttft_p50'] * 1e3:6.2f} ms", flush=True)
            await channel.close()
        await client.close()
        print()
        print("| concurrency | tokens/stream | SDK streams/s | SDK-raw streams/s | service streams/s "
              "| service ÷ SDK | service ÷ SDK-raw | TTFT p50 SDK / SDK-raw / service "
              "| service − SDK-raw TTFT p50 | TTFT p99 SDK / SDK-raw / service |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for clients, tokens, base, raw, through in rows:
            ms = lambda v: f"{v * 1e3:.2f}"  # noqa: E731
            print(f"| {clients} | {tokens} | {base['rate']:,.0f} | {raw['rate']:,.0f} | {through['rate']:,.0f} | "
                  f"{through['rate'] / base['rate']:.2f}× | {through['rate'] / raw['rate']:.2f}× | "
                  f"{ms(base['ttft_p50'])} / {ms(raw['ttft_p50'])} / {ms(through['ttft_p50'])} ms | "
                  f"{(through['ttft_p50'] - raw['ttft_p50']) * 1e3:+.2f} ms | "
                  f"{ms(base['ttft_p99'])} / {ms(raw['ttft_p99'])} / {ms(through['ttft_p99'])} ms |")
    finally:
        upstream.terminate()
        upstream.wait(10)
        tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
