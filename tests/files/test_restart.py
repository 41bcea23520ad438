"""Processing survives a restart: a file left `processing` by a service that died, and the
store entry waiting for it, are picked up by the next service process on its own."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from parley.files.v1 import files_pb2 as pb
from parley.files.v1 import files_service_pb2 as api
from services.files.app import build_app
from services.files.worker import WorkerSettings
from tests.conftest import channel_to, serve_app
from tests.files.conftest import files_settings, search, stored_files, upload, wait_entry, wait_file
from parley.files.v1 import files_service_pb2_grpc


async def test_work_left_by_a_dead_process_is_resumed_at_start_up(admin_url, llm_server, identity_private_key,
                                                                  identity_public_key, as_user, tmp_path):
    # A database of its own, so that no other service process takes the work first.
    parts = urlsplit(admin_url)
    database = f"parley_files_restart_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"CREATE DATABASE {database}")
    finally:
        await conn.close()
    url = urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))
    settings = files_settings(url, llm_server.port, identity_private_key, tmp_path,
                              worker=WorkerSettings(lease_seconds=1.0, poll_seconds=0.2))
    me = as_user("restart-user")
    try:
        first = await build_app(settings)
        await first.processor.stop()  # this process will die before it processes anything
        running = await serve_app(first, "files", identity_public_key)
        channel = channel_to(running)
        stub = files_service_pb2_grpc.FileServiceStub(channel)
        file = await upload(stub, me, b"The night ferry leaves the harbour at eleven and docks at dawn.\n", "ferry.txt")
        store = await stub.CreateVectorStore(api.CreateVectorStoreRequest(file_ids=[file.id]), metadata=me)
        await channel.close()
        await running.stop(0)
        # It had claimed the file and started on it when it died: a lease that is still running.
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("UPDATE files.files SET status = 2, lease_owner = 'dead-worker', "
                               "lease_until = now() + interval '1 second', attempts = 1 WHERE id = $1",
                               uuid.UUID(file.id))
        finally:
            await conn.close()
        assert len([p for p in stored_files(tmp_path) if p.suffix != ".part"]) == 1

        second = await build_app(settings)
        running = await serve_app(second, "files", identity_public_key)
        channel = channel_to(running)
        stub = files_service_pb2_grpc.FileServiceStub(channel)
        try:
            resumed = await wait_file(stub, me, file.id)
            assert resumed.status == pb.FILE_STATUS_PROCESSED
            entry = await wait_entry(stub, me, store.id, file.id)
            assert entry.status == pb.VECTOR_STORE_FILE_STATUS_COMPLETED
            found = await search(stub, me, [store.id], "when does the boat depart")
            assert found.results[0].file_id == file.id
        finally:
            await channel.close()
            await running.stop(0)
    finally:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        finally:
            await conn.close()
