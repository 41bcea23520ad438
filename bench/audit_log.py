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
   on a real server, with the service's audit log and with a log that records nothing; the
   audited rounds include writing their events.

The machine these figures come from is shared, so each comparison is made of paired rounds
(alternating which goes first) and reports medians.

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

ROUNDS = 15
# Calls per round (each round pairs one run without auditing with one with).
DELETES = {1: 100, 16: 400}
RECORDS = 100_000
FLUSHED = 20_000
SINGLE = 2_000
DENIALS = {1: 400, 16: 1600}


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
    print("| clients | without audit: calls/s | with audit: calls/s | time ratio | p50 without | p50 with | "
          "added per event |")
    print("|---|---|---|---|---|---|---|")
    for clients, per_round in DELETES.items():
        pairs = []
        for i in range(ROUNDS):  # paired rounds, alternating which goes first: the machine is shared
            ids_a, ids_b = await fresh_sessions(plain, per_round), await fresh_sessions(plain, per_round)
            if i % 2:
                b = await deletes(audited, ids_b, clients)
                a = await deletes(plain, ids_a, clients)
            else:
                a = await deletes(plain, ids_a, clients)
                b = await deletes(audited, ids_b, clients)
            pairs.append((a, b))
        print(_paired_row(clients, per_round, pairs), flush=True)


def _paired_row(clients: int, per_round: int, pairs) -> str:
    """Medians over paired rounds: rates, the time ratio, p50s and the added time per call."""
    rate_a = statistics.median(per_round / a[0] for a, _ in pairs)
    rate_b = statistics.median(per_round / b[0] for _, b in pairs)
    ratio = statistics.median(b[0] / a[0] for a, b in pairs)
    added = statistics.median((b[0] - a[0]) / per_round for a, b in pairs)
    p50_a = statistics.median(percentile(a[1], 0.5) for a, _ in pairs)
    p50_b = statistics.median(percentile(b[1], 0.5) for _, b in pairs)
    return (f"| {clients} | {rate_a:,.0f} | {rate_b:,.0f} | {ratio:.2f}× | {p50_a * 1e3:.3f} ms | "
            f"{p50_b * 1e3:.3f} ms | {us(added)} |")


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
    logs = {"without audit": AuditLog.discarding(),
            "with audit": AuditLog("bench", db, AuditSettings(retention_days=0))}
    servers = {name: await start_server(DeniedApp(log), settings, verifier=verifier) for name, log in logs.items()}
    channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") for name, running in servers.items()}

    def denied(name: str):
        stub = ugrpc.UserDataServiceStub(channels[name])

        async def call():
            try:
                await stub.DeleteUserData(request, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.PERMISSION_DENIED

        return call

    for name in logs:
        await run_concurrently(denied(name), 8, 500)  # warm up
    rows = []
    for clients, per_round in DENIALS.items():
        pairs = []
        for i in range(ROUNDS):  # paired rounds, alternating which goes first
            order = ("without audit", "with audit") if i % 2 == 0 else ("with audit", "without audit")
            got = {}
            for name in order:
                wall, latencies = await run_concurrently(denied(name), clients, per_round)
                began = time.perf_counter()
                await logs[name].flush()  # the audited round pays for writing its events, not the next round
                got[name] = (wall + time.perf_counter() - began, latencies)
            pairs.append((got["without audit"], got["with audit"]))
        rows.append(_paired_row(clients, per_round, pairs))
    for name, running in servers.items():
        await channels[name].close()
        await running.stop(0.5)
    written = logs["with audit"].written
    print("\n### 3. A call answered PERMISSION_DENIED through gRPC (the error mapping audits it)\n")
    print("| clients | without audit: calls/s | with audit: calls/s | time ratio | p50 without | p50 with | "
          "added per call |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
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
