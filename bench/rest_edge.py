"""REST edge benchmark: chat completions streamed through the OpenAI-compatible HTTP edge
(services/rest) against the same streams directly through the gateway's gRPC, same upstream
(the llm service's `local/echo`), same run, alternating rounds: the time to first token the
edge adds at p50 (target ≤ 2 ms) and streaming throughput at concurrency 32 (target ≥ 0.6×).
The HTTP client is aiohttp reading the SSE lines, as lean as the gRPC client on the other side.
Then the same edge against the LiteLLM proxy's /v1/chat/completions, both in front of the same
fake OpenAI-compatible upstream (bench/_fake_openai.py): streams per second at concurrency 32
(target: the edge at least 5× LiteLLM). LiteLLM runs from the benchmark's own environment,
`.parley/bench-litellm-venv` (created with `litellm[proxy]` on first use, never the main venv);
`PARLEY_BENCH_SKIP_LITELLM=1` skips it.
Run with `python -m bench.rest_edge` (two to three minutes, plus LiteLLM's install once)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import grpc

from bench._common import (
    UNLIMITED_GATEWAY,
    ServiceProcess,
    admin_api_key,
    free_port,
    identity_env,
    percentile,
    run_concurrently,
    stop_process,
)
from parley.llm.v1 import llm_pb2
from parley.llm.v1 import llm_service_pb2 as api
from parley.llm.v1 import llm_service_pb2_grpc as api_grpc
from services.runtime.db import start_embedded_postgres

ROUNDS = 3
TTFT_STREAMS = {1: 300, 32: 960}
LONG_STREAM_WORDS = 2000
THROUGHPUT_STREAMS = 32


def _grpc_request(text: str) -> api.StreamGenerateRequest:
    return api.StreamGenerateRequest(model="local/echo", messages=[
        llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text=text)])])


def _http_body(text: str) -> dict:
    return {"model": "local/echo", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}]}


class Grpc:
    def __init__(self, stub, metadata) -> None:
        self.stub, self.metadata = stub, metadata

    async def first_token(self, text: str) -> float:
        started = time.perf_counter()
        first = None
        async for _ in self.stub.StreamGenerate(_grpc_request(text), metadata=self.metadata):
            if first is None:
                first = time.perf_counter() - started
        return first

    async def tokens(self, text: str) -> int:
        last = None
        async for event in self.stub.StreamGenerate(_grpc_request(text), metadata=self.metadata):
            last = event
        return last.finish.usage.output_tokens


class Http:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def first_token(self, text: str) -> float:
        """Until the first chunk with content: the edge sends an empty role chunk first, which
        is not a token."""
        started = time.perf_counter()
        first = None
        async with self.session.post(self.url, json=_http_body(text)) as response:
            async for line in response.content:
                if first is None and line.startswith(b"data: {") and b'"content":"' in line and \
                        b'"content":""' not in line:
                    first = time.perf_counter() - started
        return first

    async def tokens(self, text: str) -> int:
        usage = 0
        async with self.session.post(self.url, json=_http_body(text)) as response:
            async for line in response.content:
                if line.startswith(b"data: {") and b'"usage":{' in line:
                    usage = json.loads(line[6:])["usage"]["completion_tokens"]
        return usage


async def ttft(path, clients: int, total: int) -> list[float]:
    firsts: list[float] = []

    async def call():
        firsts.append(await path.first_token("time to the first token of a streamed answer"))

    await run_concurrently(call, clients, total)
    return firsts


async def throughput(path, streams: int) -> float:
    text = " ".join(f"w{i}" for i in range(LONG_STREAM_WORDS))
    started = time.perf_counter()
    counts = await asyncio.gather(*(path.tokens(text) for _ in range(streams)))
    return sum(counts) / (time.perf_counter() - started)


async def _wait_http(port: int, process: subprocess.Popen) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError("the edge exited while starting")
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as reply:
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the edge did not start")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


async def measure(grpc_path: Grpc, http_path: Http) -> list[str]:
    lines = []
    for clients in (1, 32):
        firsts = {"grpc": [], "http": []}
        for round_number in range(ROUNDS):
            print(f"ttft at concurrency {clients}, round {round_number + 1}/{ROUNDS}", file=sys.stderr, flush=True)
            for name, path in (("grpc", grpc_path), ("http", http_path)):
                firsts[name] += await ttft(path, clients, TTFT_STREAMS[clients] // ROUNDS)
        g50, h50 = percentile(firsts["grpc"], 0.5), percentile(firsts["http"], 0.5)
        g99, h99 = percentile(firsts["grpc"], 0.99), percentile(firsts["http"], 0.99)
        lines.append(f"| {clients} | stream time to first token | p50 {_ms(g50)}, p99 {_ms(g99)} "
                     f"| p50 {_ms(h50)}, p99 {_ms(h99)} | **{(h50 - g50) * 1e3:+.2f} ms** at p50 "
                     f"({(h99 - g99) * 1e3:+.2f} ms at p99) |")
    rates = {"grpc": [], "http": []}
    for round_number in range(ROUNDS):
        print(f"throughput, round {round_number + 1}/{ROUNDS}", file=sys.stderr, flush=True)
        for name, path in (("grpc", grpc_path), ("http", http_path)):
            rates[name].append(await throughput(path, THROUGHPUT_STREAMS))
    g, h = statistics.median(rates["grpc"]), statistics.median(rates["http"])
    lines.append(f"| {THROUGHPUT_STREAMS} | streaming throughput ({THROUGHPUT_STREAMS} streams × {LONG_STREAM_WORDS} "
                 f"tokens) | {g:,.0f} tokens/s | {h:,.0f} tokens/s | **{h / g:.2f}× the gateway's gRPC** |")
    return lines


LITELLM_VENV = Path(__file__).resolve().parent.parent / ".parley" / "bench-litellm-venv"
COMPARE_TOKENS = 200
COMPARE_STREAMS = {32: 640}


def _litellm() -> Path:
    """The LiteLLM proxy's executable in the benchmark's own environment, created if missing."""
    executable = LITELLM_VENV / "bin" / "litellm"
    if not executable.exists():
        print("installing litellm[proxy] into", LITELLM_VENV, file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    return executable


async def _streams_per_second(session: aiohttp.ClientSession, url: str, model: str, clients: int,
                              total: int) -> float:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "stream please"}]}

    async def one():
        # Tokens, not chunks: the llm service merges deltas that are already waiting.
        tokens = 0
        async with session.post(url, json=body) as response:
            assert response.status == 200, await response.text()
            async for line in response.content:
                if line.startswith(b"data: {"):
                    tokens += line.count(b"tok")
        assert tokens == COMPARE_TOKENS, tokens

    await run_concurrently(one, clients, max(clients, total // 10))  # warm-up
    wall, _ = await run_concurrently(one, clients, total)
    return total / wall


async def against_litellm(common: dict) -> list[str]:
    litellm = _litellm()
    version = subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True).stdout.strip()
    root = Path(__file__).resolve().parent.parent
    upstream_port, litellm_port, edge_port = free_port(), free_port(), free_port()
    master_key = "sk-" + os.urandom(32).hex()  # LiteLLM refuses to start without one
    upstream = subprocess.Popen([sys.executable, "-m", "bench._fake_openai", str(upstream_port)], cwd=root)
    with tempfile.TemporaryDirectory(prefix="parley-bench-litellm-") as tmp:
        models = Path(tmp) / "models.yaml"
        models.write_text("providers:\n  bench:\n    type: openai_compatible\n"
                          f"    base_url: http://127.0.0.1:{upstream_port}/v1\n")
        config = Path(tmp) / "litellm.yaml"
        config.write_text("model_list:\n  - model_name: fake-200\n    litellm_params:\n"
                          f"      model: openai/fake-{COMPARE_TOKENS}\n"
                          f"      api_base: http://127.0.0.1:{upstream_port}/v1\n      api_key: bench\n"
                          f"general_settings:\n  master_key: {master_key}\n")
        proxy = subprocess.Popen([str(litellm), "--config", str(config), "--port", str(litellm_port),
                                  "--num_workers", "1"], cwd=tmp, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            llm_env = {**common, "PARLEY_LLM_WARM_EMBEDDINGS": "false", "PARLEY_MODELS_FILE": str(models)}
            async with ServiceProcess("llm", llm_env) as llm:
                gateway_env = {**common, "PARLEY_LLM_TARGET": f"127.0.0.1:{llm.port}",
                               "PARLEY_SESSIONS_TARGET": "none", "PARLEY_FILES_TARGET": "none",
                               "PARLEY_ASSISTANTS_TARGET": "none", **UNLIMITED_GATEWAY}
                async with ServiceProcess("gateway", gateway_env) as gateway:
                    api_key = admin_api_key(common)
                    edge = subprocess.Popen([sys.executable, "-m", "services.rest"], cwd=root, env={
                        **os.environ, "PARLEY_REST_PORT": str(edge_port), "PARLEY_LOG_LEVEL": "WARNING",
                        "PARLEY_GATEWAY_TARGET": f"127.0.0.1:{gateway.port}"})
                    try:
                        await _wait_http(edge_port, edge)
                        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                            for _ in range(900):  # LiteLLM takes a while to start
                                if proxy.poll() is not None:
                                    raise RuntimeError("the LiteLLM proxy exited while starting")
                                try:
                                    async with session.get(f"http://127.0.0.1:{litellm_port}/health/liveliness") as r:
                                        if r.status == 200:
                                            break
                                except aiohttp.ClientError:
                                    pass
                                await asyncio.sleep(0.2)
                            else:
                                raise RuntimeError("the LiteLLM proxy did not start")
                            lines = []
                            for clients, total in COMPARE_STREAMS.items():
                                rates = {"edge": [], "litellm": []}
                                for round_number in range(ROUNDS):
                                    print(f"edge vs LiteLLM, round {round_number + 1}/{ROUNDS}", file=sys.stderr,
                                          flush=True)
                                    session.headers["authorization"] = f"Bearer {api_key}"
                                    rates["edge"].append(await _streams_per_second(
                                        session, f"http://127.0.0.1:{edge_port}/v1/chat/completions",
                                        f"bench/fake-{COMPARE_TOKENS}", clients, total // ROUNDS))
                                    session.headers["authorization"] = f"Bearer {master_key}"
                                    rates["litellm"].append(await _streams_per_second(
                                        session, f"http://127.0.0.1:{litellm_port}/v1/chat/completions",
                                        "fake-200", clients, total // ROUNDS))
                                e, li = statistics.median(rates["edge"]), statistics.median(rates["litellm"])
                                lines.append(f"| {clients} | streams/s ({COMPARE_TOKENS}-token chat completion "
                                             f"streams) | {e:,.1f} | {li:,.1f} (LiteLLM {version}) "
                                             f"| **{e / li:.2f}× LiteLLM** |")
                            return lines
                    finally:
                        edge.terminate()
                        edge.wait(15)
        finally:
            stop_process(proxy, 15)
            stop_process(upstream, 15)


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="parley-bench-rest-") as tmp:
        admin_url = os.environ.get("PARLEY_DATABASE_URL") or start_embedded_postgres(Path(tmp) / "pg")
        common = {"PARLEY_DATABASE_URL": admin_url, "PARLEY_REDIS_URL": "", **identity_env(Path(tmp))}
        async with ServiceProcess("llm", {**common, "PARLEY_LLM_WARM_EMBEDDINGS": "false"}) as llm:
            gateway_env = {**common, "PARLEY_LLM_TARGET": f"127.0.0.1:{llm.port}", "PARLEY_SESSIONS_TARGET": "none",
                           "PARLEY_FILES_TARGET": "none", "PARLEY_ASSISTANTS_TARGET": "none", **UNLIMITED_GATEWAY}
            async with ServiceProcess("gateway", gateway_env) as gateway:
                api_key = admin_api_key(common)
                edge_port = free_port()
                edge = subprocess.Popen([sys.executable, "-m", "services.rest"], env={
                    **os.environ, "PARLEY_REST_PORT": str(edge_port), "PARLEY_LOG_LEVEL": "WARNING",
                    "PARLEY_GATEWAY_TARGET": f"127.0.0.1:{gateway.port}"}, cwd=Path(__file__).resolve().parent.parent)
                try:
                    await _wait_http(edge_port, edge)
                    connector = aiohttp.TCPConnector(limit=0)
                    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel, \
                            aiohttp.ClientSession(connector=connector, headers={
                                "authorization": f"Bearer {api_key}"}) as session:
                        grpc_path = Grpc(api_grpc.LLMServiceStub(channel), (("authorization", f"Bearer {api_key}"),))
                        http_path = Http(session, f"http://127.0.0.1:{edge_port}/v1/chat/completions")
                        for path in (grpc_path, http_path):  # warm up: connections, caches
                            await ttft(path, 8, 80)
                        lines = await measure(grpc_path, http_path)
                finally:
                    edge.terminate()
                    edge.wait(15)
        print("| clients | measure | gateway gRPC | through the REST edge (SSE) | the edge adds |")
        print("|---|---|---|---|---|")
        print("\n".join(lines), flush=True)
        if os.environ.get("PARLEY_BENCH_SKIP_LITELLM") != "1":
            compared = await against_litellm(common)
            print("\n| clients | measure | the REST edge | the LiteLLM proxy | ratio |")
            print("|---|---|---|---|---|")
            print("\n".join(compared))


if __name__ == "__main__":
    asyncio.run(main())
