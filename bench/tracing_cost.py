"""The cost of tracing: token streams through the gateway and the llm service with spans
exported over OTLP (to a receiver in this process) against the same two services with export
off, in one run. Each side is its own pair of processes (llm and gateway, `local/echo`
streaming word by word); rounds alternate between them so drift on a shared machine falls on
both. Reports streams per second, tokens per second and the two services' CPU time per stream
at concurrency 1 and 32, as ratios to export off (target: at most 10% slower); also with one
trace in ten sampled. Run with `python -m bench.tracing_cost`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc

from parley.llm.v1 import llm_pb2 as pb
from parley.llm.v1 import llm_service_pb2 as api
from parley.llm.v1 import llm_service_pb2_grpc as api_grpc
from services.runtime.db import start_embedded_postgres
from tests.observability.otlp_receiver import OtlpReceiver
from tests.processes import Suite

WORDS = 100  # tokens per stream: local/echo streams the prompt back word by word
# concurrency -> streams per measured round
CASES = {1: 60, 32: 640}
ROUNDS = 5


def cpu_seconds(suite: Suite) -> float:
    """User + system CPU time the suite's processes have used so far (from /proc)."""
    total = 0
    for process in suite.processes.values():
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def prompt(index: int) -> str:
    return f"call {index} " + " ".join(f"word{i}" for i in range(WORDS - 2))


async def measure(target: str, key: str, clients: int, total: int) -> tuple[float, int]:
    """(wall seconds, tokens received) for `total` streams over `clients` concurrent callers."""
    metadata = (("authorization", f"Bearer {key}"),)
    tokens = 0
    remaining = total
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_grpc.LLMServiceStub(channel)

        async def worker():
            nonlocal remaining, tokens
            while remaining > 0:
                remaining -= 1
                request = api.StreamGenerateRequest(
                    model="local/echo", cache_policy=pb.CACHE_POLICY_BYPASS,
                    messages=[pb.ChatMessage(role=pb.ROLE_USER, content=[pb.ContentPart(text=prompt(remaining))])])
                async for event in stub.StreamGenerate(request, metadata=metadata, timeout=120):
                    if event.WhichOneof("event") == "text_delta":
                        tokens += len(event.text_delta.text.split())

        await asyncio.gather(*(worker() for _ in range(min(clients, 4))))  # warm-up of the channel's connection
        remaining = total
        tokens = 0
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - started, tokens


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="parley-bench-tracing-"))
    os.chmod(work, 0o755)
    database_url = start_embedded_postgres(work / "pg", delete_on_exit=True)
    # Quiet logs, and no rate limits: the benchmark makes thousands of calls a minute.
    quiet = {"PARLEY_LOG_LEVEL": "WARNING", **{f"PARLEY_GATEWAY_{who}_{limit}": "0" for who in ("KEY", "USER")
                                              for limit in ("REQUESTS_PER_MINUTE", "TOKENS_PER_MINUTE",
                                                            "CONCURRENT_STREAMS")}}
    with OtlpReceiver() as receiver:
        on = Suite(work / "on", database_url, services=("llm", "gateway"), extra_env={
            **quiet, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
        off = Suite(work / "off", database_url, services=("llm", "gateway"), extra_env=quiet)
        # What a busy deployment would run: every trace's context still propagated, one in ten exported.
        sampled = Suite(work / "sampled", database_url, services=("llm", "gateway"), extra_env={
            **quiet, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"})
        await asyncio.to_thread(on.start)
        try:
            await asyncio.to_thread(off.start)
            await asyncio.to_thread(sampled.start)
            try:
                suites = {"on": on, "off": off, "sampled": sampled}
                keys = {side: await asyncio.to_thread(suite.admin_key) for side, suite in suites.items()}
                print(f"{WORDS} tokens per stream, local/echo through the gateway; {ROUNDS} alternating rounds per case")
                print("| concurrency | export | streams/s | tokens/s | throughput on/off | server CPU ms/stream | CPU on/off |")
                print("| --- | --- | --- | --- | --- | --- | --- |")
                for clients, total in CASES.items():
                    rates: dict[str, list[float]] = {side: [] for side in suites}
                    token_rates: dict[str, list[float]] = {side: [] for side in suites}
                    cpu: dict[str, list[float]] = {side: [] for side in suites}
                    for _ in range(ROUNDS):
                        for side in ("off", "on", "sampled"):
                            before = cpu_seconds(suites[side])
                            seconds, tokens = await measure(suites[side].target("gateway"), keys[side], clients, total)
                            # The batch processor exports on its schedule: let it finish this round's spans.
                            await asyncio.sleep(0.5)
                            cpu[side].append((cpu_seconds(suites[side]) - before) / total * 1000)
                            rates[side].append(total / seconds)
                            token_rates[side].append(tokens / seconds)
                    off_rate, off_cpu = statistics.median(rates["off"]), statistics.median(cpu["off"])
                    for side in ("off", "on", "sampled"):
                        rate, used = statistics.median(rates[side]), statistics.median(cpu[side])
                        ratios = f" | {used:.2f} | " if side == "off" else \
                            f"{rate / off_rate:.3f} | {used:.2f} | {used / off_cpu:.3f}"
                        label = {"off": "off", "on": "on, every trace", "sampled": "on, 10% of traces"}[side]
                        print(f"| {clients} | {label} | {rate:.1f} | {statistics.median(token_rates[side]):.0f} | {ratios} |")
                spans = receiver.spans()
                names = Counter(f"{s.service} {s.name}" for s in spans)
                print(f"\nspans received with export on: {len(spans)} in {receiver.requests} OTLP requests; most made:")
                for name, count in names.most_common(8):
                    print(f"  {count:6d}  {name}")
            finally:
                await asyncio.to_thread(sampled.stop)
                await asyncio.to_thread(off.stop)
        finally:
            await asyncio.to_thread(on.stop)


if __name__ == "__main__":
    asyncio.run(main())
