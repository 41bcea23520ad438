"""The cost of tracing: token streams through the gateway and the llm service with spans
exported over OTLP (to a receiver in this process) against the same two services with export
off, in one run. Each side is its own pair of processes (llm and gateway, `local/echo`
streaming word by word); rounds alternate between them so drift on a shared machine falls on
both. Reports streams per second and tokens per second at concurrency 1 and 32, and the ratio
on/off (target: at most 10% slower). Run with `python -m bench.tracing_cost`.
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
from tests.observability.processes import Suite

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
        await asyncio.to_thread(on.start)
        try:
            await asyncio.to_thread(off.start)
            try:
                keys = {"on": await asyncio.to_thread(on.admin_key), "off": await asyncio.to_thread(off.admin_key)}
                suites = {"on": on, "off": off}
                print(f"{WORDS} tokens per stream, local/echo through the gateway; {ROUNDS} alternating rounds per case")
                print("| concurrency | export | streams/s | tokens/s | throughput on/off | server CPU ms/stream | CPU on/off |")
                print("| --- | --- | --- | --- | --- | --- | --- |")
                for clients, total in CASES.items():
                    rates: dict[str, list[float]] = {"on": [], "off": []}
                    token_rates: dict[str, list[float]] = {"on": [], "off": []}
                    cpu: dict[str, list[float]] = {"on": [], "off": []}
                    for _ in range(ROUNDS):
                        for side in ("off", "on"):
                            before = cpu_seconds(suites[side])
                            seconds, tokens = await measure(suites[side].target("gateway"), keys[side], clients, total)
                            # The batch processor exports on its schedule: let it finish this round's spans.
                            await asyncio.sleep(0.5)
                            cpu[side].append((cpu_seconds(suites[side]) - before) / total * 1000)
                            rates[side].append(total / seconds)
                            token_rates[side].append(tokens / seconds)
                    on_rate, off_rate = statistics.median(rates["on"]), statistics.median(rates["off"])
                    on_cpu, off_cpu = statistics.median(cpu["on"]), statistics.median(cpu["off"])
                    for side, rate, used in (("off", off_rate, off_cpu), ("on", on_rate, on_cpu)):
                        ratios = f"{on_rate / off_rate:.3f} | {used:.2f} | {on_cpu / off_cpu:.3f}" if side == "on" \
                            else f" | {used:.2f} | "
                        print(f"| {clients} | {side} | {rate:.1f} | {statistics.median(token_rates[side]):.0f} | {ratios} |")
                spans = receiver.spans()
                names = Counter(f"{s.service} {s.name}" for s in spans)
                print(f"\nspans received with export on: {len(spans)} in {receiver.requests} OTLP requests; most made:")
                for name, count in names.most_common(8):
                    print(f"  {count:6d}  {name}")
            finally:
                await asyncio.to_thread(off.stop)
        finally:
            await asyncio.to_thread(on.stop)


if __name__ == "__main__":
    asyncio.run(main())
