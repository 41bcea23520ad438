"""Sessions benchmark: message append throughput and latency through the service vs raw
asyncpg inserts into the same table, and page-fetch time from a session of 100 vs 100,000
messages. Run with `python -m bench.sessions_messages`."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import grpc

from bench._common import ServiceProcess, percentile, run_concurrently, summary_ms
from parley.sessions.v1 import sessions_pb2 as pb
from parley.sessions.v1 import sessions_service_pb2 as api
from parley.sessions.v1 import sessions_service_pb2_grpc as api_grpc
from services.runtime.db import start_embedded_postgres
from services.runtime.identity import IdentityMinter, generate_private_key_pem, public_key_pem

APPENDS = {1: 1500, 32: 6000}
TEXT = "How do I rotate an API key without downtime? " * 4  # ~180 bytes, a typical chat turn
CONTENT = json.dumps([{"type": "text", "text": TEXT}])


async def raw_inserts(admin_url: str, session_ids: list[uuid.UUID], clients: int, total: int):
    """The floor: one INSERT per message over a pool, no RLS, no RPC, no validation."""
    pool = await asyncpg.create_pool(admin_url, min_size=clients, max_size=clients)
    counter = iter(range(10**9))

    async def insert():
        i = next(counter)
        await pool.execute(
            "INSERT INTO sessions.messages (id, session_id, user_id, role, content) VALUES ($1, $2, 'bench', 1, $3::jsonb)",
            uuid.uuid4(), session_ids[i % len(session_ids)], CONTENT,
        )

    try:
        return await run_concurrently(insert, clients, total)
    finally:
        await pool.close()


async def service_appends(stub, metadata, session_ids: list[str], clients: int, total: int):
    counter = iter(range(10**9))
    content = [pb.ContentPart(text=TEXT)]

    async def append():
        i = next(counter)
        await stub.CreateMessage(api.CreateMessageRequest(session_id=session_ids[i % len(session_ids)],
                                                          role=pb.ROLE_USER, content=content), metadata=metadata)

    return await run_concurrently(append, clients, total)


async def fill(admin_url: str, session_id: str, count: int) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        sid = uuid.UUID(session_id)
        await conn.copy_records_to_table(
            "messages", schema_name="sessions", columns=["id", "session_id", "user_id", "role", "content"],
            records=((uuid.uuid4(), sid, "bench", 1 + i % 2, CONTENT) for i in range(count)),
        )
        await conn.execute("UPDATE sessions.sessions SET message_count = $2 WHERE id = $1", sid, count)
        await conn.execute("ANALYZE sessions.messages")
    finally:
        await conn.close()


async def page_latency(stub, metadata, session_id: str, rounds: int = 300) -> tuple[list[float], list[float]]:
    """Latencies of the first page and of a page deep in the middle of the session."""
    first = await stub.ListMessages(api.ListMessagesRequest(session_id=session_id, page_size=50), metadata=metadata)
    token = first.next_page_token
    # Walk to roughly the middle with big pages (not timed).
    total = (await stub.GetSession(api.GetSessionRequest(session_id=session_id), metadata=metadata)).message_count
    for _ in range(max(0, total // 2 // 100 - 1)):
        token = (await stub.ListMessages(api.ListMessagesRequest(session_id=session_id, page_size=100, page_token=token),
                                         metadata=metadata)).next_page_token
    firsts, deeps = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        page = await stub.ListMessages(api.ListMessagesRequest(session_id=session_id, page_size=50), metadata=metadata)
        firsts.append(time.perf_counter() - started)
        assert len(page.messages) == 50
        started = time.perf_counter()
        page = await stub.ListMessages(api.ListMessagesRequest(session_id=session_id, page_size=50, page_token=token),
                                       metadata=metadata)
        deeps.append(time.perf_counter() - started)
        assert len(page.messages) == 50
    return firsts, deeps


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        admin_url = start_embedded_postgres(Path(tmp) / "pg")
        private = generate_private_key_pem()
        (Path(tmp) / "id.pub").write_bytes(public_key_pem(private))
        metadata = IdentityMinter(private, ttl_seconds=3600).metadata("bench")
        env = {"PARLEY_DATABASE_URL": admin_url, "PARLEY_IDENTITY_PUBLIC_KEY_FILE": str(Path(tmp) / "id.pub")}
        async with ServiceProcess("sessions", env) as service:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                stub = api_grpc.SessionServiceStub(channel)
                sessions = [(await stub.CreateSession(api.CreateSessionRequest(title=f"b{i}"), metadata=metadata)).id
                            for i in range(32)]
                await service_appends(stub, metadata, sessions, 4, 200)  # warm up both paths
                await raw_inserts(admin_url, [uuid.UUID(s) for s in sessions], 4, 200)

                print("### Message append (one message per call)\n")
                print("| clients | raw asyncpg inserts/s | service appends/s | ratio | raw latency | service latency |")
                print("|---|---|---|---|---|---|")
                for clients, total in APPENDS.items():
                    raw_wall, raw_lat = await raw_inserts(admin_url, [uuid.UUID(s) for s in sessions], clients, total)
                    svc_wall, svc_lat = await service_appends(stub, metadata, sessions, clients, total)
                    raw_rate, svc_rate = total / raw_wall, total / svc_wall
                    print(f"| {clients} | {raw_rate:,.0f} | {svc_rate:,.0f} | {svc_rate / raw_rate:.2f}× | "
                          f"{summary_ms(raw_lat)} | {summary_ms(svc_lat)} |", flush=True)

                small = (await stub.CreateSession(api.CreateSessionRequest(title="small"), metadata=metadata)).id
                large = (await stub.CreateSession(api.CreateSessionRequest(title="large"), metadata=metadata)).id
                await fill(admin_url, small, 100)
                await fill(admin_url, large, 100_000)
                small_first, small_deep = await page_latency(stub, metadata, small)
                large_first, large_deep = await page_latency(stub, metadata, large)
                print("\n### One page of 50 messages (ListMessages)\n")
                print("| session | first page p50 | p99 | middle page p50 | p99 |")
                print("|---|---|---|---|---|")
                for name, first, deep in (("100 messages", small_first, small_deep),
                                          ("100,000 messages", large_first, large_deep)):
                    print(f"| {name} | {percentile(first, .5) * 1e3:.2f} ms | {percentile(first, .99) * 1e3:.2f} ms | "
                          f"{percentile(deep, .5) * 1e3:.2f} ms | {percentile(deep, .99) * 1e3:.2f} ms |")
                ratio_first = percentile(large_first, .5) / percentile(small_first, .5)
                ratio_deep = percentile(large_deep, .5) / percentile(small_first, .5)
                print(f"\nRatio 100,000 : 100 at the median: first page {ratio_first:.2f}×, middle page {ratio_deep:.2f}×")


if __name__ == "__main__":
    asyncio.run(main())
