"""Assistants benchmark: what the run engine adds to a model call. Everything goes through the
gateway to the same fake OpenAI-compatible upstream (bench/_fake_openai.py), and every figure
is printed next to its baseline from the same run:

- time to first token of StreamRun (a new session with the user's message, then the run) vs
  a direct StreamGenerate of the same model, at concurrency 1 (target: at most 5 ms added
  at p50), also on a session that exists already, with a breakdown by event of where it goes;
- 32 concurrent runs of 200 tokens: runs/s vs 32 concurrent StreamGenerate streams of 200
  tokens (target: at least 0.5×), with the CPU each process spent per run and per stream;
- WatchRun's live-tail delay on another engine replica: for each event, when it reached a
  WatchRun on replica B minus when it reached the StreamRun on replica A (p50, p99), with a
  paced model (5 ms a token);
- database writes per run, counted from PostgreSQL's statistics (pg_stat_database and
  pg_stat_user_tables) around one run on an otherwise idle database, minus an idle interval
  of the same length: transactions and rows by table, for 20 and 200 tokens (deltas are
  batched when the counts do not grow with the tokens).

Processes: upstream, PostgreSQL, llm, sessions, files, two engines, two gateways (one in
front of each engine: the live tail is read through gateway B), and this client. Run with `python -m bench.assistants_runs` (about two minutes).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import grpc

from bench._common import (
    UNLIMITED_GATEWAY,
    ServiceProcess,
    admin_api_key,
    fake_openai,
    identity_env,
    percentile,
    postgres_pid,
    proc_stat,
)
from parley.assistants.v1 import assistants_service_pb2 as run_api
from parley.assistants.v1 import assistants_service_pb2_grpc as run_grpc
from parley.client import run_request
from parley.llm.v1 import llm_pb2
from parley.llm.v1 import llm_service_pb2 as llm_api
from parley.llm.v1 import llm_service_pb2_grpc as llm_grpc
from parley.sessions.v1 import sessions_service_pb2 as sessions_api
from parley.sessions.v1 import sessions_service_pb2_grpc as sessions_grpc
from services.runtime.db import start_embedded_postgres

TTFT_CALLS = 60  # per side, alternating
THROUGHPUT_ROUNDS = 3
CONCURRENCY = 32
TOKENS = 200
WATCH_RUNS = 8
PACED_MODEL = f"bench/fake-{TOKENS}-p5"
PROMPT = "Summarise the quarterly report."
STATS_SETTLE_SECONDS = 11.0  # backends flush their statistics within 10 s of going idle
WRITE_RUNS = 10


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


# ---- the two paths ---------------------------------------------------------------------------


async def direct_stream(llm, metadata, model: str) -> float:
    """StreamGenerate through the gateway; returns the time to the first text."""
    request = llm_api.StreamGenerateRequest(model=model, messages=[llm_pb2.ChatMessage(
        role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text=PROMPT)])])
    started = time.perf_counter()
    first = None
    async for event in llm.StreamGenerate(request, metadata=metadata):
        if first is None and event.WhichOneof("event") == "text_delta":
            first = time.perf_counter() - started
    return first if first is not None else float("nan")


async def stream_run(runs, metadata, assistant_id: str, *, on_event=None, session_id: str = "") -> tuple[float, int]:
    """StreamRun through the gateway, on a new session unless `session_id` names one: (time to
    the first message_delta, status)."""
    request = run_api.StreamRunRequest(run=run_request(assistant_id, PROMPT, session_id=session_id))
    started = time.perf_counter()
    first, status = None, 0
    async for response in runs.StreamRun(request, metadata=metadata):
        event = response.event
        kind = event.WhichOneof("event")
        if on_event is not None:
            on_event(event, time.perf_counter())
        if first is None and kind == "message_delta":
            first = time.perf_counter() - started
        if kind == "done":
            status = event.done.status
    return (first if first is not None else float("nan")), status


MILESTONES = ("first event (run queued)", "run in_progress", "message step created", "first message_delta")


def _milestone(event) -> int | None:
    kind = event.WhichOneof("event")
    if kind == "run_status_changed":
        return {1: 0, 2: 1}.get(event.run_status_changed.status)
    if kind == "step_created":
        return 2
    if kind == "message_delta":
        return 3
    return None


async def ttft(llm, runs, sessions, metadata, direct_model: str, assistant_id: str) -> list[str]:
    direct, engine = [], []
    # When each milestone reached this client (since the call began), and when the engine
    # stamped it (create_time; same machine clock), for the breakdown of where the time goes.
    arrived: list[list[float]] = [[] for _ in MILESTONES]
    stamped: list[list[float]] = [[] for _ in MILESTONES]
    for _ in range(TTFT_CALLS):
        direct.append(await direct_stream(llm, metadata, direct_model))
        began, began_wall = time.perf_counter(), time.time()
        reached: dict[int, tuple[float, float]] = {}

        def on_event(event, at):
            index = _milestone(event)
            if index is not None and index not in reached:
                reached[index] = (at - began, event.create_time.ToNanoseconds() / 1e9 - began_wall)

        engine.append((await stream_run(runs, metadata, assistant_id, on_event=on_event))[0])
        for index, (arrival, stamp) in reached.items():
            arrived[index].append(arrival)
            stamped[index].append(stamp)
    # The same run on a session that already exists (created beforehand, untimed): what a
    # conversation's next turn costs, without "create thread and run".
    existing = []
    for _ in range(TTFT_CALLS):
        session = await sessions.CreateSession(sessions_api.CreateSessionRequest(title="bench"), metadata=metadata)
        existing.append((await stream_run(runs, metadata, assistant_id, session_id=session.id))[0])
    x50, x99 = percentile(existing, 0.5), percentile(existing, 0.99)
    d50, e50 = percentile(direct, 0.5), percentile(engine, 0.5)
    d99, e99 = percentile(direct, 0.99), percentile(engine, 0.99)
    verdict = "met" if e50 - d50 <= 0.005 else "missed"
    breakdown = "; ".join(f"{name}: stamped {_ms(percentile(stamped[i], 0.5))}, arrived {_ms(percentile(arrived[i], 0.5))}"
                          for i, name in enumerate(MILESTONES) if arrived[i])
    return [f"| time to first token, concurrency 1 ({TTFT_CALLS} calls each) | p50 {_ms(d50)}, p99 {_ms(d99)} "
            f"| p50 {_ms(e50)}, p99 {_ms(e99)} | **{(e50 - d50) * 1e3:+.2f} ms at p50** ({e50 / d50:.2f}×), "
            f"{(e99 - d99) * 1e3:+.2f} ms at p99 | ≤ +5 ms at p50: {verdict} |",
            f"| the same on an existing session (a conversation's next turn) | p50 {_ms(d50)} | p50 {_ms(x50)}, "
            f"p99 {_ms(x99)} | **{(x50 - d50) * 1e3:+.2f} ms at p50** ({x50 / d50:.2f}×) | |",
            f"| where StreamRun's first token time goes (p50 since the call began) | | {breakdown} | | |"]


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far (Linux /proc); "postgres" counts
    the postmaster's live children (the backends) too."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, pid in pids.items():
        fields = proc_stat(pid)
        used[name] = (int(fields[11]) + int(fields[12])) / ticks
    if "postgres" in pids:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = proc_stat(int(entry.name))
                except OSError:
                    continue
                if int(fields[1]) == pids["postgres"]:
                    used["postgres"] += (int(fields[11]) + int(fields[12])) / ticks
    return used


async def throughput(llm, runs, metadata, direct_model: str, assistant_id: str, pids: dict[str, int]) -> list[str]:
    direct_rates, run_rates, statuses = [], [], []
    cpu = {"direct": dict.fromkeys(pids, 0.0), "runs": dict.fromkeys(pids, 0.0)}
    for _ in range(THROUGHPUT_ROUNDS):
        before, started = cpu_seconds(pids), time.perf_counter()
        await asyncio.gather(*(direct_stream(llm, metadata, direct_model) for _ in range(CONCURRENCY)))
        direct_rates.append(CONCURRENCY / (time.perf_counter() - started))
        after = cpu_seconds(pids)
        for name in pids:
            cpu["direct"][name] += after[name] - before[name]
        before, started = after, time.perf_counter()
        results = await asyncio.gather(*(stream_run(runs, metadata, assistant_id) for _ in range(CONCURRENCY)))
        run_rates.append(CONCURRENCY / (time.perf_counter() - started))
        statuses.extend(status for _, status in results)
        after = cpu_seconds(pids)
        for name in pids:
            cpu["runs"][name] += after[name] - before[name]
    calls = CONCURRENCY * THROUGHPUT_ROUNDS

    def per_call(kind: str) -> str:
        shares = sorted(cpu[kind].items(), key=lambda item: -item[1])
        total = sum(cpu[kind].values())
        return f"{total / calls * 1e3:.1f} ms in all (" + ", ".join(
            f"{name} {value / calls * 1e3:.1f}" for name, value in shares if value / calls >= 0.0005) + ")"
    d, r = sorted(direct_rates)[len(direct_rates) // 2], sorted(run_rates)[len(run_rates) // 2]
    completed = sum(1 for s in statuses if s == 7)
    verdict = "met" if r / d >= 0.5 else "missed"
    return [f"| {CONCURRENCY} concurrent × {TOKENS} tokens (median of {THROUGHPUT_ROUNDS} rounds; "
            f"{completed}/{len(statuses)} runs completed) | {d:.1f} streams/s | {r:.1f} runs/s | **{r / d:.2f}×** "
            f"| ≥ 0.5×: {verdict} |",
            f"| CPU per stream / per run, by process (ms) | {per_call('direct')} | {per_call('runs')} | | |"]


async def live_tail(runs_a, metadata, watcher_b, assistant_id: str) -> list[str]:
    """Each event's arrival on B's WatchRun minus its arrival on A's StreamRun, for the events
    the model produced after B's watch had started (its replay of stored events excluded)."""
    delays: list[float] = []
    for _ in range(WATCH_RUNS):
        seen_a: dict[int, float] = {}
        seen_b: dict[int, float] = {}
        started = asyncio.Event()
        run_id = ""
        live_after = 0  # the last sequence A had when B's first event arrived

        def on_a(event, at):
            nonlocal run_id
            seen_a[event.sequence] = at
            if not run_id:
                run_id = event.run_id
                started.set()

        async def watch():
            nonlocal live_after
            await started.wait()
            async for response in watcher_b.WatchRun(run_api.WatchRunRequest(run_id=run_id), metadata=metadata):
                if not seen_b:
                    live_after = max(seen_a)
                seen_b[response.event.sequence] = time.perf_counter()

        watching = asyncio.create_task(watch())
        await stream_run(runs_a, metadata, assistant_id, on_event=on_a)
        await asyncio.wait_for(watching, 60)
        missing = set(seen_a) - set(seen_b)
        assert not missing, f"WatchRun on replica B missed events {sorted(missing)[:5]}"
        delays += [seen_b[s] - seen_a[s] for s in seen_a if s > live_after]
    return [f"| WatchRun live tail through gateway B / replica B ({WATCH_RUNS} paced runs, {len(delays)} live events) "
            f"| StreamRun through gateway A / replica A | p50 {_ms(percentile(delays, 0.5))}, "
            f"p99 {_ms(percentile(delays, 0.99))}, max {_ms(max(delays))} | delay behind A | |"]


# ---- database writes -------------------------------------------------------------------------


async def _stats(conn) -> tuple[dict[str, int], dict[str, tuple[int, int, int]]]:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    db = await conn.fetchrow("SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database "
                             "WHERE datname = current_database()")
    tables = {f"{r['schemaname']}.{r['relname']}": (r["n_tup_ins"], r["n_tup_upd"], r["n_tup_del"])
              for r in await conn.fetch("SELECT schemaname, relname, n_tup_ins, n_tup_upd, n_tup_del "
                                        "FROM pg_stat_user_tables")}
    return dict(db), tables


def _diff(before, after):
    db = {k: after[0][k] - before[0][k] for k in after[0]}
    tables = {}
    for name, counts in after[1].items():
        old = before[1].get(name, (0, 0, 0))
        delta = tuple(a - b for a, b in zip(counts, old, strict=True))
        if any(delta):
            tables[name] = delta
    return db, tables


async def writes_per_run(admin_url: str, runs, metadata, assistants: dict[int, str]) -> list[str]:
    """Rows by table per run (exact: nothing else writes those tables meanwhile, as the idle
    interval shows), and transactions per run net of the idle rate (replicas' lease renewals
    and queue scans, health checks), averaged over WRITE_RUNS sequential runs."""
    conn = await asyncpg.connect(admin_url)
    try:
        await asyncio.sleep(STATS_SETTLE_SECONDS)
        idle_before, idle_started = await _stats(conn), time.perf_counter()
        await asyncio.sleep(STATS_SETTLE_SECONDS)
        idle = _diff(idle_before, await _stats(conn))
        idle_rate = idle[0]["xact_commit"] / (time.perf_counter() - idle_started)
        lines = []
        for tokens, assistant_id in assistants.items():
            before, started = await _stats(conn), time.perf_counter()
            for _ in range(WRITE_RUNS):
                await stream_run(runs, metadata, assistant_id)
            await asyncio.sleep(STATS_SETTLE_SECONDS)
            db, tables = _diff(before, await _stats(conn))
            commits = (db["xact_commit"] - idle_rate * (time.perf_counter() - started)) / WRITE_RUNS
            rows = {name: tuple(v / WRITE_RUNS for v in counts) for name, counts in tables.items()
                    if name not in idle[1]}
            total = [sum(r[i] for r in rows.values()) for i in range(3)]
            by_table = ", ".join(f"{name} {ins:g}/{upd:g}/{dele:g}" for name, (ins, upd, dele) in sorted(rows.items()))
            lines.append(f"| one run of {tokens} tokens (mean of {WRITE_RUNS}) | ≈{commits:.0f} transactions; rows: "
                         f"{total[0]:g} inserted, {total[1]:g} updated, {total[2]:g} deleted | {by_table} |")
        idle_tables = ", ".join(f"{n} {i}/{u}/{d}" for n, (i, u, d) in sorted(idle[1].items())) or "no table rows"
        lines.append(f"| idle, for comparison | {idle_rate:.1f} transactions/s | {idle_tables} |")
        return lines
    finally:
        await conn.close()


# ---- the stack -------------------------------------------------------------------------------


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="parley-bench-runs-") as tmp, \
            fake_openai(Path(tmp)) as (upstream, models):
        admin_url = os.environ.get("PARLEY_DATABASE_URL") or start_embedded_postgres(Path(tmp) / "pg")
        common = {"PARLEY_DATABASE_URL": admin_url, "PARLEY_REDIS_URL": "", **identity_env(Path(tmp))}
        async with ServiceProcess("llm", {**common, "PARLEY_LLM_WARM_EMBEDDINGS": "false",
                                          "PARLEY_MODELS_FILE": str(models)}) as llm, \
                ServiceProcess("sessions", common) as sessions, \
                ServiceProcess("files", {**common, "PARLEY_LLM_TARGET": f"127.0.0.1:{llm.port}",
                                         "PARLEY_FILES_STORAGE_DIR": str(Path(tmp) / "files")}) as files:
            targets = {"PARLEY_LLM_TARGET": f"127.0.0.1:{llm.port}",
                       "PARLEY_SESSIONS_TARGET": f"127.0.0.1:{sessions.port}",
                       "PARLEY_FILES_TARGET": f"127.0.0.1:{files.port}", "PARLEY_SANDBOX_TARGET": "none"}
            async with ServiceProcess("assistants", {**common, **targets}) as engine_a, \
                    ServiceProcess("assistants", {**common, **targets}) as engine_b:
                gateway_env = {**common, **targets, **UNLIMITED_GATEWAY,
                               "PARLEY_ASSISTANTS_TARGET": f"127.0.0.1:{engine_a.port}"}
                gateway_b_env = {**gateway_env, "PARLEY_ASSISTANTS_TARGET": f"127.0.0.1:{engine_b.port}"}
                async with ServiceProcess("gateway", gateway_env) as gateway, \
                        ServiceProcess("gateway", gateway_b_env) as gateway_b:
                    metadata = (("authorization", f"Bearer {admin_api_key(common)}"),)
                    pids = {name: process.pid for name, process in (
                        ("gateway", gateway), ("gateway B", gateway_b), ("engine A", engine_a),
                        ("engine B", engine_b), ("llm", llm), ("sessions", sessions), ("files", files))}
                    pids.update(upstream=upstream.pid, postgres=await postgres_pid(admin_url))
                    lines = await measure(admin_url, gateway.port, gateway_b.port, metadata,
                                          {k: v for k, v in pids.items() if v})
    print("| measure | baseline (same run) | assistants | added / ratio | target |")
    print("|---|---|---|---|---|")
    print("\n".join(lines[:6]))
    print()
    print("| database writes | per run | rows by table (inserted/updated/deleted per run) |")
    print("|---|---|---|")
    print("\n".join(lines[6:]))


async def measure(admin_url: str, gateway_port: int, gateway_b_port: int, metadata, pids) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}") as via_gateway, \
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway_b_port}") as to_b:
        llm = llm_grpc.LLMServiceStub(via_gateway)
        runs = run_grpc.AssistantServiceStub(via_gateway)
        watcher_b = run_grpc.AssistantServiceStub(to_b)
        model = f"bench/fake-{TOKENS}"
        assistant_ids = {}
        for name, assistant_model in (("fast", model), ("paced", PACED_MODEL), ("short", "bench/fake-20")):
            created = await runs.CreateAssistant(run_api.CreateAssistantRequest(
                name=name, model=assistant_model, instructions="You are a concise analyst."), metadata=metadata)
            assistant_ids[name] = created.id
        for _ in range(5):  # warm up: connections, caches, the engines' pools
            await direct_stream(llm, metadata, model)
            await stream_run(runs, metadata, assistant_ids["fast"])
        print("time to first token", file=sys.stderr, flush=True)
        sessions = sessions_grpc.SessionServiceStub(via_gateway)
        lines = await ttft(llm, runs, sessions, metadata, model, assistant_ids["fast"])
        print("throughput", file=sys.stderr, flush=True)
        lines += await throughput(llm, runs, metadata, model, assistant_ids["fast"], pids)
        print("live tail", file=sys.stderr, flush=True)
        lines += await live_tail(runs, metadata, watcher_b, assistant_ids["paced"])
        print("database writes", file=sys.stderr, flush=True)
        lines += await writes_per_run(admin_url, runs, metadata,
                                      {20: assistant_ids["short"], TOKENS: assistant_ids["fast"]})
        return lines


if __name__ == "__main__":
    asyncio.run(main())
