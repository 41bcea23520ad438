"""Audit log benchmark: what one audit event costs, each way it is written, against the same
work without auditing measured in the same run (services/runtime/audit.py).

1. An event that accompanies a write, inserted in the write's transaction: the sessions
   service's DeleteSession (its domain call on a real PostgreSQL), with and without its
   `session.deleted` event.
2. An event that accompanies no write (a denial, an authentication failure, a read):
   - queued by `record` and written by the flusher in batches (what Parley does): the cost
     on the request path, and the database's cost per event of a batch of 500;
   - or written at once, one transaction per event (the alternative): its cost per event.
3. The same through gRPC: a call the error mapping answers PERMISSION_DENIED (and audits),
   on a real server, with the service's audit log and with a log that records nothing.

Run with `python -m bench.audit_log`."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from bench._common import percentile, run_concurrently
from parley.admin.v1 import audit_pb2
from parley.admin.v1 import user_data_service_pb2_grpc as ugrpc
from services.runtime.audit import AuditLog, AuditSettings, Kind, Outcome
from services.runtime.config import ServerSettings
from services.runtime.db import open_service_database, start_embedded_postgres
from services.runtime.identity import IdentityMinter, IdentityVerifier, generate_private_key_pem, public_key_pem
from services.runtime.server import start_server
from services.sessions.app import MIGRATIONS, ROLE, SCHEMA
from services.sessions.domain import Sessions
from services.sessions.models import NewSession

DELETES = {1: 1500, 16: 4000}
RECORDS = 100_000
FLUSHED = 20_000
SINGLE = 2_000
DENIALS = {1: 2000, 16: 6000}


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs"


async def deletes(sessions: Sessions, ids: list[str], clients: int) -> tuple[float, list[float]]:
    it = iter(ids)

    async def one():
        await sessions.delete_session("bench-user", next(it))

    return await run_concurrently(one, clients, len(ids))


async def fresh_sessions(sessions: Sessions, count: int) -> list[str]:
    made = []
    for start in range(0, count, 200):
        made += [str(s.id) for s in await asyncio.gather(
            *(sessions.create_session("bench-user", NewSession(title="b")) for _ in range(min(200, count - start))))]
    return made


async def in_transaction(db) -> None:
    log = AuditLog("sessions", db, AuditSettings(retention_days=0))
    plain, audited = Sessions(db), Sessions(db, audit=log)
    await deletes(plain, await fresh_sessions(plain, 200), 4)  # warm up
    print("### 1. An event written in the change's transaction (DeleteSession, domain call)\n")
    print("| clients | without audit: calls/s | with audit: calls/s | ratio | p50 without | p50 with | "
          "added per event (p50) |")
    print("|---|---|---|---|---|---|---|")
    for clients, total in DELETES.items():
        rounds = []
        for _ in range(3):  # alternate, and keep the best of three of each
            a = await deletes(plain, await fresh_sessions(plain, total), clients)
            b = await deletes(audited, await fresh_sessions(plain, total), clients)
            rounds.append((a, b))
        (wall_a, lat_a) = min((r[0] for r in rounds), key=lambda x: x[0])
        (wall_b, lat_b) = min((r[1] for r in rounds), key=lambda x: x[0])
        p50_a, p50_b = percentile(lat_a, 0.5), percentile(lat_b, 0.5)
        print(f"| {clients} | {total / wall_a:,.0f} | {total / wall_b:,.0f} | {wall_b / wall_a:.2f}× | "
              f"{p50_a * 1e3:.2f} ms | {p50_b * 1e3:.2f} ms | {us(p50_b - p50_a)} |", flush=True)


async def off_the_request_path(db) -> None:
    def denial(log: AuditLog) -> None:
        log.record(Kind.PERMISSION_DENIED, outcome=Outcome.DENIED, actor="bench-user", resource="/svc/Method",
                   source="10.0.0.1", details={"reason": "SCOPE_MISSING", "scope": "llm"})

    queued = AuditLog("bench", db, AuditSettings(retention_days=0, max_buffered=RECORDS))
    started = time.perf_counter()
    for _ in range(RECORDS):
        denial(queued)
    per_record = (time.perf_counter() - started) / RECORDS
    batched = AuditLog("bench", db, AuditSettings(retention_days=0, batch_size=500))
    for _ in range(FLUSHED):
        denial(batched)
    started = time.perf_counter()
    written = await batched.flush()
    per_batched = (time.perf_counter() - started) / written
    single = AuditLog("bench", db, AuditSettings(retention_days=0))
    times = []
    for _ in range(SINGLE):
        began = time.perf_counter()
        async with db.transaction("bench-user") as conn:
            await single.write(conn, Kind.PERMISSION_DENIED, outcome=Outcome.DENIED, actor="bench-user",
                               resource="/svc/Method", source="10.0.0.1", details={"reason": "SCOPE_MISSING"})
        times.append(time.perf_counter() - began)
    per_single = statistics.fmean(times)
    print("\n### 2. An event that accompanies no write (denials, authentication failures, reads)\n")
    print("| way | cost per event | on the request path |")
    print("|---|---|---|")
    print(f"| `record` (queued) | {us(per_record)} of CPU | yes |")
    print(f"| its flush, batches of 500 (one statement each) | {us(per_batched)} of wall time | no (background) |")
    print(f"| the alternative: one transaction per event | {us(per_single)} of wall time (p50 "
          f"{us(percentile(times, 0.5))}) | yes |")
    print(f"\nBatching writes an event for {per_batched / per_single:.3f}× the time of writing it alone; "
          f"the request pays {per_record / per_single:.4f}× of that.", flush=True)


class DeniedApp:
    """A server whose one method (UserDataService.DeleteUserData) refuses callers without the
    admin scope, through the shared error mapping, which audits the denial."""

    service_names: tuple = ()

    def __init__(self, audit_log: AuditLog) -> None:
        self.audit_log = audit_log

    async def delete_user_data(self, user_id: str):
        raise AssertionError("never reached: the callers lack the admin scope")

    def register(self, server) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def through_grpc(db) -> None:
    private = generate_private_key_pem()
    verifier = IdentityVerifier(public_key_pem(private))
    metadata = IdentityMinter(private, ttl_seconds=3600).metadata("bench-user", ("llm",))
    settings = ServerSettings(service="bench", host="127.0.0.1", port=0, shutdown_grace=0.5,
                              max_message_bytes=1 << 20, identity_public_key=None)
    request = audit_pb2.DeleteUserDataRequest(user_id="someone")
    results = {}
    for name, log in (("without audit", AuditLog.discarding()),
                      ("with audit", AuditLog("bench", db, AuditSettings(retention_days=0)))):
        running = await start_server(DeniedApp(log), settings, verifier=verifier)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = ugrpc.UserDataServiceStub(channel)

            async def denied():
                try:
                    await stub.DeleteUserData(request, metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED

            await run_concurrently(denied, 8, 500)  # warm up
            results[name] = {clients: await run_concurrently(denied, clients, total)
                             for clients, total in DENIALS.items()}
        await running.stop(0.5)
        written = log.written
    print("\n### 3. A call answered PERMISSION_DENIED through gRPC (the error mapping audits it)\n")
    print("| clients | without audit: calls/s | with audit: calls/s | ratio | p50 without | p50 with |")
    print("|---|---|---|---|---|---|")
    for clients, total in DENIALS.items():
        wall_a, lat_a = results["without audit"][clients]
        wall_b, lat_b = results["with audit"][clients]
        print(f"| {clients} | {total / wall_a:,.0f} | {total / wall_b:,.0f} | {wall_a / wall_b:.2f}× | "
              f"{percentile(lat_a, 0.5) * 1e3:.3f} ms | {percentile(lat_b, 0.5) * 1e3:.3f} ms |")
    print(f"\n({written:,} denial events written by the flusher during the audited runs and at shutdown.)")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        admin_url = start_embedded_postgres(Path(tmp) / "pg")
        db = await open_service_database(schema=SCHEMA, role=ROLE, migrations_dir=MIGRATIONS, admin_url=admin_url,
                                         database_url=None, role_password=None, pool_size=20, audit=True)
        try:
            await in_transaction(db)
            await off_the_request_path(db)
            await through_grpc(db)
        finally:
            await db.close()


if __name__ == "__main__":
    asyncio.run(main())
