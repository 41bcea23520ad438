"""Uploads through the gateway: a refused upload reports the files service's own status
every time, never grpc's `INTERNAL: Internal error from Core`, whichever side refuses it
and whichever client sends it."""

from __future__ import annotations

import asyncio
import collections

import grpc
import pytest

from parley.files.v1 import files_pb2
from parley.files.v1 import files_service_pb2 as fapi
from parley.files.v1 import files_service_pb2_grpc as fgrpc
from tests.conftest import rich_error
from tests.gateway.conftest import bearer

TRIES = 50
CHUNK = b"x" * (1024 * 1024)


def _refused_requests(chunks: int, purpose=files_pb2.FILE_PURPOSE_UNSPECIFIED, chunk: bytes = CHUNK):
    # No purpose: the files service refuses the upload after the first message, while the
    # client still has many chunks to write.
    yield fapi.UploadFileRequest(metadata=fapi.UploadFileMetadata(filename="refused.txt", purpose=purpose))
    for _ in range(chunks):
        yield fapi.UploadFileRequest(chunk=chunk)


def _sync_outcomes(port: int, secret: str, tries: int, **kwargs) -> collections.Counter:
    outcomes: collections.Counter = collections.Counter()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = fgrpc.FileServiceStub(channel)
        for _ in range(tries):
            try:
                stub.UploadFile(_refused_requests(**kwargs), metadata=bearer(secret), timeout=60)
                outcomes["accepted"] += 1
            except grpc.RpcError as error:
                code, reason, fields = rich_error(error)
                outcomes[(code.name, reason, tuple(fields))] += 1
    return outcomes


async def test_an_upload_the_backend_refuses_reports_its_status_every_time(gateway, make_key):
    """The gateway's own client to the files service must not lose the refusal to the
    grpc-aio write race (the caller here is the synchronous client, which reports faithfully)."""
    secret = await make_key("upload-refusals", ["files"])
    outcomes = await asyncio.to_thread(_sync_outcomes, gateway.port, secret, TRIES, chunks=16)
    assert outcomes == {("INVALID_ARGUMENT", "INVALID_FIELD", ("metadata.purpose",)): TRIES}, outcomes


async def test_an_asyncio_caller_gets_the_refusal_every_time(gateway, make_key):
    """The caller is grpc-aio too: the gateway reads the rest of a refused upload before
    finishing, so the caller's writes never meet an ended stream."""
    secret = await make_key("upload-refusals-aio", ["files"])
    outcomes: collections.Counter = collections.Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = fgrpc.FileServiceStub(channel)
        for _ in range(TRIES):
            try:
                await stub.UploadFile(_refused_requests(16), metadata=bearer(secret), timeout=60)
                outcomes["accepted"] += 1
            except grpc.aio.AioRpcError as error:
                code, reason, fields = rich_error(error)
                outcomes[(code.name, reason, tuple(fields))] += 1
    assert outcomes == {("INVALID_ARGUMENT", "INVALID_FIELD", ("metadata.purpose",)): TRIES}, outcomes


async def test_an_upload_the_gateway_refuses_reports_its_status_every_time(gateway, make_key):
    secret = await make_key("upload-refusals-gw", ["files"])
    outcomes: collections.Counter = collections.Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = fgrpc.FileServiceStub(channel)
        for _ in range(TRIES):
            # The second chunk is over the gateway's per-message limit.
            requests = _refused_requests(8, purpose=files_pb2.FILE_PURPOSE_ASSISTANTS, chunk=b"y" * (2 * 1024 * 1024))
            try:
                await stub.UploadFile(requests, metadata=bearer(secret), timeout=60)
                outcomes["accepted"] += 1
            except grpc.aio.AioRpcError as error:
                code, reason, _ = rich_error(error)
                outcomes[(code.name, reason)] += 1
    assert outcomes == {("INVALID_ARGUMENT", "REQUEST_TOO_LARGE"): TRIES}, outcomes


async def test_malformed_bytes_later_in_an_upload_are_invalid_argument(gateway, make_key):
    """Only the first message of a stream is inspected in full, but every one must at least be
    a message of the method's type: the backend would answer UNKNOWN for undecodable bytes."""
    secret = await make_key("upload-garbage", ["files"])
    metadata = fapi.UploadFileRequest(metadata=fapi.UploadFileMetadata(
        filename="g.txt", purpose=files_pb2.FILE_PURPOSE_ASSISTANTS)).SerializeToString()

    async def requests():
        yield metadata
        yield fapi.UploadFileRequest(chunk=b"fine").SerializeToString()
        yield b"\x12\xff\xff\xff"

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.stream_unary("/parley.files.v1.FileService/UploadFile")(requests(), metadata=bearer(secret))
    code, reason, _ = rich_error(caught.value)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_MALFORMED"), caught.value.details()
