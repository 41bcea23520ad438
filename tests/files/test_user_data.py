"""The files service's part of a user's data deletion, and its races: an upload still
streaming when the user's data is deleted stores nothing (no row, no bytes, no temporary
file); processing that runs after the deletion (a job claimed just before it) writes
nothing back; the stored bytes and the vectors go with the rows."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest

from parley.admin.v1 import audit_pb2
from parley.admin.v1 import user_data_service_pb2_grpc as ugrpc
from parley.files.v1 import files_pb2
from parley.files.v1 import files_service_pb2 as fapi
from tests.conftest import channel_to, expect_error, user_rows
from tests.files.conftest import stored_files, upload, wait_entry, wait_file

ADMIN = ("admin",)


@pytest.fixture(scope="module")
async def user_data(files_server):
    channel = channel_to(files_server)
    yield ugrpc.UserDataServiceStub(channel)
    await channel.close()


async def rows(admin_url: str, user: str) -> dict[str, int]:
    return await user_rows(admin_url, "files", ("files", "file_texts", "vector_stores", "vector_store_files", "chunks"),
                           user)


async def test_the_users_files_vectors_and_bytes_go_and_nobody_elses(stub, user_data, as_user, admin_url, storage_dir,
                                                                    files_app):
    user, other = f"files-gone-{uuid.uuid4().hex[:8]}", f"files-stays-{uuid.uuid4().hex[:8]}"
    ids = {}
    for who in (user, other):
        file = ids[who] = await upload(stub, as_user(who), b"Vectors of a user who will be forgotten.\n" * 20, "notes.txt")
        await wait_file(stub, as_user(who), file.id)
        store = await stub.CreateVectorStore(fapi.CreateVectorStoreRequest(name="v"), metadata=as_user(who))
        await stub.AddVectorStoreFile(fapi.AddVectorStoreFileRequest(vector_store_id=store.id, file_id=file.id),
                                      metadata=as_user(who))
        entry = await wait_entry(stub, as_user(who), store.id, file.id)
        assert entry.status == files_pb2.VECTOR_STORE_FILE_STATUS_COMPLETED
    before, others = await rows(admin_url, user), await rows(admin_url, other)
    assert before["chunks"] > 0
    conn = await asyncpg.connect(admin_url)
    key = await conn.fetchval("SELECT storage_key FROM files.files WHERE user_id = $1", user)
    await conn.close()
    blob = files_app.storage.path_of(key)
    assert blob.exists()
    reply = await user_data.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=user),
                                           metadata=as_user("files-admin", ADMIN))
    assert dict(reply.deletions[0].removed) == {**before, "stored_files": 1}
    assert await rows(admin_url, user) == dict.fromkeys(before, 0)
    assert await rows(admin_url, other) == others
    assert not blob.exists()
    await expect_error(stub.GetFile(fapi.GetFileRequest(file_id=ids[user].id), metadata=as_user(user)),
                       grpc.StatusCode.NOT_FOUND)
    assert (await stub.GetFile(fapi.GetFileRequest(file_id=ids[other].id), metadata=as_user(other))).id
    again = await user_data.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=user),
                                           metadata=as_user("files-admin", ADMIN))
    assert all(v == 0 for v in again.deletions[0].removed.values())


async def test_an_upload_in_flight_at_the_deletion_stores_nothing(stub, user_data, as_user, admin_url, storage_dir):
    user = f"files-racing-{uuid.uuid4().hex[:8]}"
    halfway = asyncio.Event()
    go_on = asyncio.Event()

    async def requests():
        yield fapi.UploadFileRequest(metadata=fapi.UploadFileMetadata(filename="late.txt",
                                                                       purpose=files_pb2.FILE_PURPOSE_ASSISTANTS))
        yield fapi.UploadFileRequest(chunk=b"the first half of an upload\n")
        halfway.set()
        await go_on.wait()
        yield fapi.UploadFileRequest(chunk=b"and the rest, after the user's data was deleted\n")

    before = set(stored_files(storage_dir))
    uploading = asyncio.ensure_future(stub.UploadFile(requests(), metadata=as_user(user)))
    await halfway.wait()
    await asyncio.sleep(0.2)  # the first chunk is on the server's disk, in its temporary file
    await user_data.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=user),
                                   metadata=as_user("files-admin", ADMIN))
    go_on.set()
    reason, _ = await expect_error(uploading, grpc.StatusCode.FAILED_PRECONDITION)
    assert reason == "USER_DATA_DELETED"
    assert await rows(admin_url, user) == dict.fromkeys(("files", "file_texts", "vector_stores",
                                                         "vector_store_files", "chunks"), 0)
    assert set(stored_files(storage_dir)) <= before  # neither the bytes nor a temporary file stayed
    # A new upload by the user (if they still can) is theirs again.
    fresh = await upload(stub, as_user(user), b"after\n", "after.txt")
    assert fresh.id


async def test_processing_after_the_deletion_writes_nothing_back(stub, user_data, as_user, admin_url, files_app):
    """A job claimed just before the deletion runs after it: the file and the entry are gone,
    so extraction and indexing find nothing to write to."""
    user = f"files-job-{uuid.uuid4().hex[:8]}"
    file = await upload(stub, as_user(user), b"text to index later\n" * 10, "job.txt")
    await wait_file(stub, as_user(user), file.id)
    store = await stub.CreateVectorStore(fapi.CreateVectorStoreRequest(name="v"), metadata=as_user(user))
    await stub.AddVectorStoreFile(fapi.AddVectorStoreFileRequest(vector_store_id=store.id, file_id=file.id),
                                  metadata=as_user(user))
    await wait_entry(stub, as_user(user), store.id, file.id)
    await user_data.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=user),
                                   metadata=as_user("files-admin", ADMIN))
    processor = files_app.processor
    assert await processor.process_file(user, uuid.UUID(file.id)) == "skipped"
    assert await processor.process_entry(user, uuid.UUID(store.id), uuid.UUID(file.id)) == "skipped"
    assert all(n == 0 for n in (await rows(admin_url, user)).values())
