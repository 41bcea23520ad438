"""Soak: the suite under sustained mixed load, with flat memory.

For `--seconds` (default 60) after a warm-up (`--warmup`, default 60 s, same load), through the
gateway with one admin API key:

- `--streams` (default 200) concurrent StreamGenerate streams, each new as soon as the last
  ended (gateway → llm → the fake OpenAI upstream, bench/_fake_openai.py, through the real
  openai SDK);
- session calls: create a session, append three messages, list them;
- file calls: upload a small text file, add it to a vector store, search the store;
- run calls: StreamRun with a function tool (the fake upstream answers with a call of it),
  then SubmitToolOutputs through the other gateway when there are two, to the run's end.

It reports every error by call kind and gRPC status (the bar: none), p50/p99 of each call
kind and the streams' time to first token, and the RSS of every process (each service,
each PostgreSQL process, Redis, the fake upstream, this client), sampled every second with
psutil: its growth is the mean of the last `--window` seconds over the mean of the first
`--window` seconds after the warm-up (the bar: under 5% for each of Parley's processes).

Two runs, one after the other, on one PostgreSQL and one Redis: a single replica of each
service, then two gateways, two llm and two assistants replicas (gateway i → llm i and
engine i; engine i → llm i; clients spread over the gateways). `--single-only` or
`--replicated-only` runs one. Exits non-zero on any error or any Parley process growing by
5% or more.

Not part of `make bench` (it holds the machine for minutes): run it with
`python -m bench soak` or `python -m bench.soak --seconds 10 --warmup 5 --streams 20` for a
smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

from bench._common import (
    UNLIMITED_GATEWAY,
    ServiceProcess,
    admin_api_key,
    fake_openai,
    identity_env,
    percentile,
    postgres_pid,
    redis_server,
)
from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as run_api
from parley.assistants.v1 import assistants_service_pb2_grpc as run_grpc
from parley.client import function_tool, run_request
from parley.files.v1 import files_pb2
from parley.files.v1 import files_service_pb2 as files_api
from parley.files.v1 import files_service_pb2_grpc as files_grpc
from parley.llm.v1 import llm_pb2
from parley.llm.v1 import llm_service_pb2 as llm_api
from parley.llm.v1 import llm_service_pb2_grpc as llm_grpc
from parley.sessions.v1 import sessions_pb2
from parley.sessions.v1 import sessions_service_pb2 as sessions_api
from parley.sessions.v1 import sessions_service_pb2_grpc as sessions_grpc
from services.runtime.db import start_embedded_postgres

GROWTH_LIMIT = 0.05
CALL_TIMEOUT = 60.0  # a call that hangs is an error (DEADLINE_EXCEEDED), not a stuck worker
CHANNELS_PER_GATEWAY = 4  # HTTP/2 connections per gateway, so 200 streams are not one socket's
STREAM_MODEL = "bench/fake-50"
RUN_MODEL = "bench/fake-20"
SESSION_WORKERS = 6
FILE_WORKERS = 2
RUN_WORKERS = 6
TEXTS = [f"Soak note {i}: order A-{i} shipped from warehouse {i % 3} on day {i}; the invoice is {100 + i} EUR."
         for i in range(16)]  # a few texts, so the embedding cache answers most of them
QUERIES = ["which warehouse shipped the order", "invoice amount", "shipping day"]


class RunFailed(Exception):
    """A run that did not go queued → requires_action → completed."""


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter = field(default_factory=Counter)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)

    def error(self, kind: str, exc: BaseException) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            status, detail = exc.code().name, exc.details() or ""
        else:
            status, detail = type(exc).__name__, str(exc)
        self.errors[(kind, status)] += 1
        self.examples.setdefault((kind, status), detail[:300])

    @contextlib.asynccontextmanager
    async def timing(self, kind: str):
        started = time.perf_counter()
        yield
        self.latencies[kind].append(time.perf_counter() - started)


# ---- the load --------------------------------------------------------------------------------


@dataclass
class Gateway:
    llm: llm_grpc.LLMServiceStub
    sessions: sessions_grpc.SessionServiceStub
    files: files_grpc.FileServiceStub
    runs: run_grpc.AssistantServiceStub


async def stream_once(tally: Tally, gateway: Gateway, metadata, number: int) -> None:
    request = llm_api.StreamGenerateRequest(model=STREAM_MODEL, messages=[llm_pb2.ChatMessage(
        role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text=f"soak stream {number}")])])
    started = time.perf_counter()
    first, finished = None, False
    async for event in gateway.llm.StreamGenerate(request, metadata=metadata, timeout=CALL_TIMEOUT):
        kind = event.WhichOneof("event")
        if first is None and kind == "text_delta":
            first = time.perf_counter() - started
        finished = finished or kind == "finish"
    if first is None or not finished:
        raise RunFailed("the stream ended without text or without its finish event")
    tally.latencies["StreamGenerate"].append(time.perf_counter() - started)
    tally.latencies["StreamGenerate TTFT"].append(first)


async def sessions_once(tally: Tally, gateway: Gateway, metadata, number: int) -> None:
    async with tally.timing("CreateSession"):
        session = await gateway.sessions.CreateSession(sessions_api.CreateSessionRequest(title=f"soak {number}"),
                                                       metadata=metadata, timeout=CALL_TIMEOUT)
    for turn in range(3):
        async with tally.timing("CreateMessage"):
            await gateway.sessions.CreateMessage(sessions_api.CreateMessageRequest(
                session_id=session.id, role=sessions_pb2.ROLE_USER,
                content=[sessions_pb2.ContentPart(text=f"message {turn} of soak session {number}")]),
                metadata=metadata, timeout=CALL_TIMEOUT)
    async with tally.timing("ListMessages"):
        listed = await gateway.sessions.ListMessages(sessions_api.ListMessagesRequest(session_id=session.id,
                                                                                      page_size=10),
                                                     metadata=metadata, timeout=CALL_TIMEOUT)
    if len(listed.messages) != 3:
        raise RunFailed(f"ListMessages returned {len(listed.messages)} messages, not 3")


def _upload_requests(text: str, number: int):
    yield files_api.UploadFileRequest(metadata=files_api.UploadFileMetadata(
        filename=f"soak-{number}.txt", media_type="text/plain", purpose=files_pb2.FILE_PURPOSE_ASSISTANTS))
    yield files_api.UploadFileRequest(chunk=text.encode())


async def files_once(tally: Tally, gateway: Gateway, metadata, number: int, store_id: str) -> None:
    async with tally.timing("UploadFile"):
        file = await gateway.files.UploadFile(_upload_requests(TEXTS[number % len(TEXTS)], number),
                                              metadata=metadata, timeout=CALL_TIMEOUT)
    async with tally.timing("AddVectorStoreFile"):
        await gateway.files.AddVectorStoreFile(files_api.AddVectorStoreFileRequest(
            vector_store_id=store_id, file_id=file.id), metadata=metadata, timeout=CALL_TIMEOUT)
    async with tally.timing("SearchVectorStore"):
        await gateway.files.SearchVectorStore(files_api.SearchVectorStoreRequest(
            vector_store_ids=[store_id], query=QUERIES[number % len(QUERIES)], max_num_results=5),
            metadata=metadata, timeout=CALL_TIMEOUT)


async def run_once(tally: Tally, gateway: Gateway, submit_via: Gateway, metadata, number: int,
                   assistant_id: str) -> None:
    """StreamRun to requires_action (its function call), then SubmitToolOutputs to the end."""
    waiting = None
    async with tally.timing("StreamRun"):
        async for response in gateway.runs.StreamRun(run_api.StreamRunRequest(
                run=run_request(assistant_id, f"Where is order A-{number}?")), metadata=metadata,
                timeout=CALL_TIMEOUT):
            event = response.event
            if event.HasField("run_status_changed") and \
                    event.run_status_changed.status == apb.RUN_STATUS_REQUIRES_ACTION:
                waiting = event.run_status_changed
    if waiting is None:
        raise RunFailed("StreamRun ended without the run waiting for its tool output")
    outputs = [run_api.ToolOutput(tool_call_id=call.id, output='{"status": "shipped"}')
               for call in waiting.required_action.submit_tool_outputs.tool_calls]
    done = None
    async with tally.timing("SubmitToolOutputs"):
        async for response in submit_via.runs.SubmitToolOutputs(run_api.SubmitToolOutputsRequest(
                run_id=waiting.id, tool_outputs=outputs), metadata=metadata, timeout=CALL_TIMEOUT):
            if response.event.HasField("done"):
                done = response.event.done
    if done is None or done.status != apb.RUN_STATUS_COMPLETED:
        status = apb.RunStatus.Name(done.status) if done is not None else "no done event"
        raise RunFailed(f"run {waiting.id} ended {status}, not RUN_STATUS_COMPLETED")


async def load(gateways: list[list[Gateway]], metadata, streams: int, seconds: float, assistant_id: str,
               store_ids: list[str]) -> Tally:
    """Every worker repeats its call until `seconds` have passed (the call under way finishes)."""
    tally = Tally()
    stop_at = time.monotonic() + seconds
    numbers = itertools.count()

    def gateway(worker: int, offset: int = 0) -> Gateway:
        channels = gateways[(worker + offset) % len(gateways)]
        return channels[worker // len(gateways) % len(channels)]

    async def worker(kind: str, index: int, once) -> None:
        while time.monotonic() < stop_at:
            try:
                await once(index, next(numbers))
            except (grpc.aio.AioRpcError, RunFailed) as exc:
                tally.error(kind, exc)
                await asyncio.sleep(0.1)

    workers = [worker("stream", i, lambda i, n: stream_once(tally, gateway(i), metadata, n)) for i in range(streams)]
    workers += [worker("session", i, lambda i, n: sessions_once(tally, gateway(i), metadata, n))
                for i in range(SESSION_WORKERS)]
    workers += [worker("file", i, lambda i, n: files_once(tally, gateway(i), metadata, n, store_ids[i]))
                for i in range(FILE_WORKERS)]
    workers += [worker("run", i, lambda i, n: run_once(tally, gateway(i), gateway(i, 1), metadata, n, assistant_id))
                for i in range(RUN_WORKERS)]
    await asyncio.gather(*workers)
    return tally


# ---- memory ----------------------------------------------------------------------------------


def _postgres_label(process: psutil.Process) -> str:
    """A PostgreSQL process by its role, stable while it lives (a backend's title also shows
    its state, which changes)."""
    words = " ".join(process.cmdline()).removeprefix("postgres: ").split()
    if words and words[0].startswith("/"):  # just forked: not titled yet
        return f"postgres: (starting) ({process.pid})"
    if len(words) >= 3 and ("(" in words[2] or words[2].startswith("[")):  # user database host(port) state
        return f"postgres: backend of {words[0]} ({process.pid})"
    return f"postgres: {' '.join(words)} ({process.pid})"


class RssSampler:
    """The RSS of every process of the stack, once a second. PostgreSQL's processes are found
    anew each time (the postmaster's children: backends come and go)."""

    def __init__(self, parley: dict[str, int], others: dict[str, int], postmaster: int | None) -> None:
        self.parley = parley
        self.others = others
        self.postmaster = postmaster
        self.samples: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self.started = time.monotonic()

    def _sample(self) -> None:
        now = time.monotonic() - self.started
        processes = {**self.parley, **self.others}
        if self.postmaster is not None:
            processes["postgres: postmaster"] = self.postmaster
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.postmaster).children():
                    with contextlib.suppress(psutil.Error):
                        processes[_postgres_label(child)] = child.pid
        for name, pid in processes.items():
            with contextlib.suppress(psutil.Error):
                self.samples[name].append((now, psutil.Process(pid).memory_info().rss))

    async def run(self, until: asyncio.Event) -> None:
        while not until.is_set():
            await asyncio.to_thread(self._sample)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(until.wait(), 1.0)

    def growth(self, begin: float, end: float, window: float) -> list[tuple[str, float, float, float | None]]:
        """(process, mean RSS over [begin, begin + window), mean over [end - window, end], growth)
        per process; growth None for a process not alive in both windows."""
        rows = []
        for name, samples in self.samples.items():
            first = [rss for t, rss in samples if begin <= t < begin + window]
            last = [rss for t, rss in samples if end - window <= t <= end]
            if first and last:
                a, b = statistics.fmean(first), statistics.fmean(last)
                rows.append((name, a, b, b / a - 1))
            elif samples:
                rows.append((name, statistics.fmean(r for _, r in samples), samples[-1][1], None))
        return rows


# ---- the stack -------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    tally: Tally
    seconds: float
    memory: list[tuple[str, float, float, float | None]]
    parley: set[str]

    def failures(self) -> list[str]:
        found = [f"{self.label}: {count} {kind} errors {status}" for (kind, status), count in self.tally.errors.items()]
        found += [f"{self.label}: {name} grew {growth:.1%}" for name, _, _, growth in self.memory
                  if name in self.parley and growth is not None and growth >= GROWTH_LIMIT]
        return found


async def soak(label: str, replicas: int, base_env: dict[str, str], directory: Path, admin_url: str,
               others: dict[str, int], args) -> Result:
    """One soak on a fresh set of service processes (`replicas` gateways, llm and engines)."""
    async with contextlib.AsyncExitStack() as stack:
        llms, engines, gateways = [], [], []
        for i in range(replicas):
            llms.append(await stack.enter_async_context(ServiceProcess("llm", base_env)))
        sessions = await stack.enter_async_context(ServiceProcess("sessions", base_env))
        files = await stack.enter_async_context(ServiceProcess("files", {
            **base_env, "PARLEY_LLM_TARGET": f"127.0.0.1:{llms[0].port}",
            "PARLEY_FILES_STORAGE_DIR": str(directory / "files")}))
        backends = {"PARLEY_SESSIONS_TARGET": f"127.0.0.1:{sessions.port}",
                    "PARLEY_FILES_TARGET": f"127.0.0.1:{files.port}", "PARLEY_SANDBOX_TARGET": "none"}
        for i in range(replicas):
            engines.append(await stack.enter_async_context(ServiceProcess("assistants", {
                **base_env, **backends, "PARLEY_LLM_TARGET": f"127.0.0.1:{llms[i].port}"})))
        for i in range(replicas):
            gateways.append(await stack.enter_async_context(ServiceProcess("gateway", {
                **base_env, **backends, **UNLIMITED_GATEWAY, "PARLEY_LLM_TARGET": f"127.0.0.1:{llms[i].port}",
                "PARLEY_ASSISTANTS_TARGET": f"127.0.0.1:{engines[i].port}"})))
        suffix = (lambda i: f" {'AB'[i]}") if replicas > 1 else (lambda i: "")
        parley = {f"gateway{suffix(i)}": g.pid for i, g in enumerate(gateways)}
        parley |= {f"llm{suffix(i)}": p.pid for i, p in enumerate(llms)}
        parley |= {f"assistants{suffix(i)}": e.pid for i, e in enumerate(engines)}
        parley |= {"sessions": sessions.pid, "files": files.pid}
        metadata = (("authorization", f"Bearer {admin_api_key(base_env)}"),)

        channels = []
        for g in gateways:
            channels.append([await stack.enter_async_context(grpc.aio.insecure_channel(
                f"127.0.0.1:{g.port}", options=[("grpc.use_local_subchannel_pool", 1)]))
                for _ in range(CHANNELS_PER_GATEWAY)])
        stubs = [[Gateway(llm_grpc.LLMServiceStub(c), sessions_grpc.SessionServiceStub(c),
                          files_grpc.FileServiceStub(c), run_grpc.AssistantServiceStub(c)) for c in per_gateway]
                 for per_gateway in channels]
        first = stubs[0][0]
        assistant = await first.runs.CreateAssistant(run_api.CreateAssistantRequest(
            name="soak", model=RUN_MODEL, instructions="Answer questions about orders.",
            tools=[function_tool("lookup_order", description="The status of an order.",
                                 parameters={"type": "object", "properties": {"order": {"type": "string"}}})]),
            metadata=metadata)
        store_ids = [(await first.files.CreateVectorStore(files_api.CreateVectorStoreRequest(name=f"soak {i}"),
                                                          metadata=metadata)).id for i in range(FILE_WORKERS)]

        sampler = RssSampler(parley, {**others, "bench client": os.getpid()}, await postgres_pid(admin_url))
        done = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(done))
        total = args.warmup + args.seconds
        print(f"{label}: {args.streams} streams and the call mix for {args.warmup:g} s of warm-up + "
              f"{args.seconds:g} s", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            tally = await load(stubs, metadata, args.streams, total, assistant.id, store_ids)
        finally:
            ended = time.monotonic() - sampler.started
            done.set()
            await sampling
        elapsed = time.monotonic() - started
        begin = started - sampler.started + args.warmup
        memory = sampler.growth(begin, min(ended, begin + args.seconds), args.window)
        if args.samples is not None:
            with args.samples.open("a") as out:
                for name, samples in sampler.samples.items():
                    for at, rss in samples:
                        out.write(json.dumps({"run": label, "process": name, "seconds": round(at - begin + args.warmup, 1),
                                              "rss": rss}) + "\n")
        return Result(label, tally, elapsed, memory, set(parley))


def report(result: Result) -> None:
    tally = result.tally
    calls = sum(len(v) for k, v in tally.latencies.items() if not k.endswith("TTFT"))
    errors = sum(tally.errors.values())
    print(f"\n### {result.label}: {calls:,} calls in {result.seconds:.0f} s, {errors} errors\n")
    if errors:
        print("| call kind | status | count | first detail |")
        print("|---|---|---|---|")
        for (kind, status), count in sorted(tally.errors.items()):
            print(f"| {kind} | {status} | {count} | {tally.examples[(kind, status)]} |")
        print()
    print("| call | calls | p50 | p99 |")
    print("|---|---|---|---|")
    for kind, values in tally.latencies.items():
        print(f"| {kind} | {len(values):,} | {percentile(values, 0.5) * 1e3:.1f} ms "
              f"| {percentile(values, 0.99) * 1e3:.1f} ms |")
    print()
    print(f"| process | RSS after warm-up (MB) | RSS at the end (MB) | growth | bar (< {GROWTH_LIMIT:.0%}) |")
    print("|---|---|---|---|---|")
    postgres = [row for row in result.memory if row[0].startswith("postgres")]
    for name, first, last, growth in sorted((row for row in result.memory if not row[0].startswith("postgres")),
                                            key=lambda row: (row[0] not in result.parley, row[0])):
        bar = ("met" if growth < GROWTH_LIMIT else "**missed**") if name in result.parley and growth is not None \
            else ("(not alive in both windows)" if growth is None else "")
        shown = f"{growth:+.1%}" if growth is not None else "n/a"
        print(f"| {name} | {first / 2**20:.1f} | {last / 2**20:.1f} | {shown} | {bar} |")
    # PostgreSQL's backends by role (each pool's connections), its other processes one by one.
    groups: dict[str, list] = defaultdict(list)
    for row in postgres:
        groups[re.sub(r" \(\d+\)$", "", row[0]).replace("backend of", "backends of")].append(row)
    for name, rows in sorted(groups.items()):
        steady = [r for r in rows if r[3] is not None]
        if not steady:
            print(f"| {name} ({len(rows)}, none alive in both windows) | | | n/a | |")
            continue
        a, b = sum(r[1] for r in steady), sum(r[2] for r in steady)
        count = f" ({len(steady)} alive in both windows, {len(rows) - len(steady)} others)" if "backends" in name else ""
        print(f"| {name}{count} | {a / 2**20:.1f} | {b / 2**20:.1f} | {b / a - 1:+.1%} | |")
    steady = [row for row in postgres if row[3] is not None]
    if steady:
        a, b = sum(r[1] for r in steady), sum(r[2] for r in steady)
        print(f"| postgres, all {len(steady)} processes alive in both windows | {a / 2**20:.1f} | {b / 2**20:.1f} "
              f"| {b / a - 1:+.1%} | |")


async def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds after the warm-up (60)")
    # A minute: over 200 s of this load the sessions service grew 5.5% in its first 80 s and
    # 0.75% in the 100 s after (a warm-up, consistent with each of its 20 pooled connections
    # preparing its statements as it first meets them); 20 s of warm-up measured that start.
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of the same load first (60)")
    parser.add_argument("--window", type=float, default=10.0,
                        help="seconds averaged at each end of the measured span for RSS growth (10)")
    parser.add_argument("--streams", type=int, default=200, help="concurrent StreamGenerate streams (200)")
    parser.add_argument("--samples", type=Path, help="also write every RSS sample to this file (JSON lines: "
                                                     "run, process, seconds since the load began, bytes)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--single-only", action="store_true", help="only the run with one replica of each service")
    which.add_argument("--replicated-only", action="store_true",
                       help="only the run with two gateway, llm and assistants replicas")
    args = parser.parse_args()
    args.window = min(args.window, args.seconds / 3)

    results = []
    with tempfile.TemporaryDirectory(prefix="parley-bench-soak-") as tmp:
        directory = Path(tmp)
        admin_url = os.environ.get("PARLEY_DATABASE_URL") or start_embedded_postgres(directory / "pg")
        with fake_openai(directory) as (upstream, models), redis_server(directory) as (redis, redis_url):
            base_env = {"PARLEY_DATABASE_URL": admin_url, "PARLEY_REDIS_URL": redis_url,
                        "PARLEY_MODELS_FILE": str(models), "PARLEY_STATE_DIR": str(directory / "state"),
                        **identity_env(directory)}
            others = {"fake OpenAI upstream": upstream.pid, "redis": redis.pid}
            if not args.replicated_only:
                results.append(await soak("single replica", 1, base_env, directory, admin_url, others, args))
            if not args.single_only:
                results.append(await soak("2 gateways, 2 llm, 2 assistants", 2, base_env, directory, admin_url,
                                          others, args))
    for result in results:
        report(result)
    failures = [failure for result in results for failure in result.failures()]
    print("\n" + ("failed: " + "; ".join(failures) if failures else "passed: no errors, every Parley process "
                                                                    f"grew less than {GROWTH_LIMIT:.0%}"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
