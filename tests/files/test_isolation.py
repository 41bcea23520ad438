"""User B can't read, search, change or delete A's files and stores: each answers
NOT_FOUND, exactly like something that does not exist, and the rows are invisible to B in
the database itself (forced row-level security)."""

from __future__ import annotations

import uuid

import asyncpg
import grpc

from parley.files.v1 import files_pb2, files_service_pb2 as api
from services.runtime.db import with_credentials
from tests.conftest import expect_error
from tests.files.conftest import search, upload, wait_entry


async def test_another_users_files_and_stores_are_not_found(stub, as_user, admin_url):
    alice, bob = as_user("iso-alice"), as_user("iso-bob")
    secret = await upload(stub, alice, b"The vault combination is 31-41-59, kept by Alice alone.\n", "vault.txt")
    store = await stub.CreateVectorStore(api.CreateVectorStoreRequest(name="alice", file_ids=[secret.id]), metadata=alice)
    assert (await wait_entry(stub, alice, store.id, secret.id)).status == files_pb2.VECTOR_STORE_FILE_STATUS_COMPLETED
    assert (await search(stub, alice, [store.id], "vault combination")).results

    missing_file, missing_store = str(uuid.uuid4()), str(uuid.uuid4())
    for file_id, reason in ((secret.id, "FILE_NOT_FOUND"), (missing_file, "FILE_NOT_FOUND")):
        assert (await expect_error(stub.GetFile(api.GetFileRequest(file_id=file_id), metadata=bob),
                                   grpc.StatusCode.NOT_FOUND))[0] == reason
        assert (await expect_error(stub.DeleteFile(api.DeleteFileRequest(file_id=file_id), metadata=bob),
                                   grpc.StatusCode.NOT_FOUND))[0] == reason

        async def download(fid=file_id):
            return [m async for m in stub.DownloadFile(api.DownloadFileRequest(file_id=fid), metadata=bob)]

        await expect_error(download(), grpc.StatusCode.NOT_FOUND)
    for store_id in (store.id, missing_store):
        await expect_error(stub.GetVectorStore(api.GetVectorStoreRequest(vector_store_id=store_id), metadata=bob),
                           grpc.StatusCode.NOT_FOUND)
        await expect_error(search(stub, bob, [store_id], "vault combination"), grpc.StatusCode.NOT_FOUND)
        await expect_error(stub.DeleteVectorStore(api.DeleteVectorStoreRequest(vector_store_id=store_id), metadata=bob),
                           grpc.StatusCode.NOT_FOUND)
        await expect_error(stub.ListVectorStoreFiles(api.ListVectorStoreFilesRequest(vector_store_id=store_id),
                                                     metadata=bob), grpc.StatusCode.NOT_FOUND)
        await expect_error(stub.RemoveVectorStoreFile(api.RemoveVectorStoreFileRequest(
            vector_store_id=store_id, file_id=secret.id), metadata=bob), grpc.StatusCode.NOT_FOUND)
    # Bob can't pull Alice's file into his own store, nor search his and hers together.
    mine = await stub.CreateVectorStore(api.CreateVectorStoreRequest(name="bob"), metadata=bob)
    reason, _ = await expect_error(stub.AddVectorStoreFile(api.AddVectorStoreFileRequest(
        vector_store_id=mine.id, file_id=secret.id), metadata=bob), grpc.StatusCode.NOT_FOUND)
    assert reason == "FILE_NOT_FOUND"
    await expect_error(stub.CreateVectorStore(api.CreateVectorStoreRequest(file_ids=[secret.id]), metadata=bob),
                       grpc.StatusCode.NOT_FOUND)
    await expect_error(search(stub, bob, [mine.id, store.id], "vault"), grpc.StatusCode.NOT_FOUND)
    assert not (await stub.ListFiles(api.ListFilesRequest(), metadata=bob)).files
    assert [s.id for s in (await stub.ListVectorStores(api.ListVectorStoresRequest(), metadata=bob)).vector_stores] == [mine.id]
    # Alice's things are untouched.
    assert (await stub.GetFile(api.GetFileRequest(file_id=secret.id), metadata=alice)).id == secret.id
    assert (await search(stub, alice, [store.id], "vault combination")).results

    # In the database itself, as the service's role with Bob's id, none of Alice's rows exist.
    conn = await asyncpg.connect(with_credentials(admin_url, "parley_files", None), server_settings={"search_path": "files"})
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.user_id', 'iso-bob', true)")
            for table in ("files", "file_texts", "vector_stores", "vector_store_files", "chunks"):
                assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = 'iso-alice'") == 0
            assert await conn.fetchval("SELECT count(*) FROM chunks") == 0
            # The full-text function reads chunks without RLS (for its index) and checks the
            # owner itself: Bob naming Alice's entries gets nothing.
            everything = list(range(1, 100_000))
            assert await conn.fetchval("SELECT count(*) FROM text_candidates($1, 'english', 'vault combination', 50, 5000)",
                                       everything) == 0
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.user_id', 'iso-alice', true)")
            assert await conn.fetchval("SELECT count(*) FROM text_candidates($1, 'english', 'vault combination', 50, 5000)",
                                       list(range(1, 100_000))) > 0
            # Without any user set, nothing at all.
        async with conn.transaction():
            assert await conn.fetchval("SELECT count(*) FROM files") == 0
    finally:
        await conn.close()


async def test_calls_without_a_gateway_identity_are_refused(stub):
    await expect_error(stub.ListFiles(api.ListFilesRequest()), grpc.StatusCode.UNAUTHENTICATED)
    await expect_error(stub.ListFiles(api.ListFilesRequest(), metadata=(("x-parley-identity", "forged"),)),
                       grpc.StatusCode.UNAUTHENTICATED)
