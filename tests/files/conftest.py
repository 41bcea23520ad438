"""Fixtures for the files service: the real llm service (with the local all-MiniLM-L6-v2
model) and the files service, each on its own loopback port, on the test run's PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

import pytest

from parley.files.v1 import files_pb2, files_service_pb2, files_service_pb2_grpc
from services.files.app import FilesSettings, build_app
from services.files.worker import WorkerSettings
from tests.conftest import channel_to, serve_app

CHUNK = 256 * 1024


@pytest.fixture(scope="session")
def admin_url(vector_admin_url):
    """The files service needs pgvector."""
    return vector_admin_url


@pytest.fixture(scope="session")
async def llm_server(identity_public_key):
    """The real llm service, without its usage database (the files tests don't read usage)."""
    from services.llm.app import LLMSettings
    from services.llm.app import build_app as build_llm

    settings = dataclasses.replace(LLMSettings.from_env(), models_file=None, redis_url=None, use_database=False,
                                   admin_url=None, database_url=None, warm_embeddings=True)
    app = await build_llm(settings)
    running = await serve_app(app, "llm", identity_public_key)
    yield running
    await running.stop(0.5)


def files_settings(admin_url: str, llm_port: int, private_key: bytes, storage_dir, **overrides) -> FilesSettings:
    values = dict(
        admin_url=admin_url,
        database_url=None,
        role_password=None,
        pool_size=10,
        storage_dir=storage_dir,
        llm_target=f"127.0.0.1:{llm_port}",
        identity_private_key=private_key,
        worker=WorkerSettings(concurrency=2, lease_seconds=30.0, poll_seconds=0.2, max_attempts=3),
    )
    values.update(overrides)
    return FilesSettings(**values)


@pytest.fixture(scope="session")
def storage_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("files-storage")


@pytest.fixture(scope="session")
async def files_app(admin_url, llm_server, identity_private_key, storage_dir):
    app = await build_app(files_settings(admin_url, llm_server.port, identity_private_key, storage_dir))
    yield app


@pytest.fixture(scope="session")
async def files_server(files_app, identity_public_key):
    running = await serve_app(files_app, "files", identity_public_key)
    yield running
    await running.stop(0.5)


@pytest.fixture(scope="session")
async def stub(files_server):
    channel = channel_to(files_server)
    yield files_service_pb2_grpc.FileServiceStub(channel)
    await channel.close()


def upload_requests(data: bytes, filename: str, media_type: str = "", purpose=files_pb2.FILE_PURPOSE_ASSISTANTS,
                    attributes=None, **metadata):
    yield files_service_pb2.UploadFileRequest(metadata=files_service_pb2.UploadFileMetadata(
        filename=filename, media_type=media_type, purpose=purpose, attributes=attributes or {}, **metadata))
    for begin in range(0, len(data), CHUNK):
        yield files_service_pb2.UploadFileRequest(chunk=data[begin:begin + CHUNK])


async def upload(stub, metadata, data: bytes, filename: str, media_type: str = "", **kwargs) -> files_pb2.File:
    return await stub.UploadFile(upload_requests(data, filename, media_type, **kwargs), metadata=metadata)


async def wait_file(stub, metadata, file_id: str, rounds: int = 600) -> files_pb2.File:
    """Polls until the file leaves uploaded/processing (bounded, not a timing assertion)."""
    for _ in range(rounds):
        file = await stub.GetFile(files_service_pb2.GetFileRequest(file_id=file_id), metadata=metadata)
        if file.status in (files_pb2.FILE_STATUS_PROCESSED, files_pb2.FILE_STATUS_ERROR):
            return file
        await asyncio.sleep(0.1)
    raise AssertionError(f"file {file_id} still {files_pb2.FileStatus.Name(file.status)}")


async def wait_entry(stub, metadata, store_id: str, file_id: str, rounds: int = 1800) -> files_pb2.VectorStoreFile:
    for _ in range(rounds):
        entry = await stub.GetVectorStoreFile(
            files_service_pb2.GetVectorStoreFileRequest(vector_store_id=store_id, file_id=file_id), metadata=metadata)
        if entry.status != files_pb2.VECTOR_STORE_FILE_STATUS_IN_PROGRESS:
            return entry
        await asyncio.sleep(0.1)
    raise AssertionError(f"file {file_id} still in progress in store {store_id}")


async def search(stub, metadata, store_ids, query: str, **kwargs) -> files_service_pb2.SearchVectorStoreResponse:
    return await stub.SearchVectorStore(
        files_service_pb2.SearchVectorStoreRequest(vector_store_ids=list(store_ids), query=query, **kwargs),
        metadata=metadata)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_files(storage_dir) -> list:
    """Every file under the storage root (committed and temporary)."""
    return sorted(p for p in storage_dir.rglob("*") if p.is_file())


SMALL_FILE_LIMIT = 256 * 1024
SMALL_DOCX_LIMIT = 8 * 1024 * 1024


@pytest.fixture(scope="session")
def small_storage_dir(storage_dir):
    """Replicas on one database share one storage root (either may process any file)."""
    return storage_dir


@pytest.fixture(scope="session")
async def small_server(admin_url, llm_server, identity_private_key, identity_public_key, small_storage_dir):
    """A second files service on the same database, with small limits: 256 KiB per file,
    8 MiB of decompressed DOCX."""
    from services.files.extract import Limits
    from services.files.files import UploadLimits

    app = await build_app(files_settings(
        admin_url, llm_server.port, identity_private_key, small_storage_dir,
        upload=UploadLimits(max_file_bytes=SMALL_FILE_LIMIT),
        extraction=Limits(max_docx_uncompressed_bytes=SMALL_DOCX_LIMIT),
    ))
    running = await serve_app(app, "files", identity_public_key)
    yield running
    await running.stop(0.5)


@pytest.fixture(scope="session")
async def small_stub(small_server):
    channel = channel_to(small_server)
    yield files_service_pb2_grpc.FileServiceStub(channel)
    await channel.close()
