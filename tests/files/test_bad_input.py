"""Bad input gets a clear status, or an `error` file status with a reason a person can act
on, and never leaves a half-stored file."""

from __future__ import annotations

import asyncio
import hashlib
import os

import grpc
import pytest

from parley.files.v1 import files_pb2, files_service_pb2, files_service_pb2_grpc
from tests.conftest import expect_error, rich_error
from tests.files import documents
from tests.files.conftest import (
    SMALL_DOCX_LIMIT,
    SMALL_FILE_LIMIT,
    stored_files,
    upload,
    wait_entry,
    wait_file,
)


async def _file_count(stub, me) -> int:
    return len((await stub.ListFiles(files_service_pb2.ListFilesRequest(page_size=100), metadata=me)).files)


async def test_empty_file_is_refused_and_nothing_is_stored(stub, as_user, storage_dir):
    me = as_user("bad-empty")
    before = stored_files(storage_dir)
    reason, _ = await expect_error(upload(stub, me, b"", "empty.txt", "text/plain"), grpc.StatusCode.INVALID_ARGUMENT)
    assert reason == "FILE_EMPTY"
    assert stored_files(storage_dir) == before
    assert await _file_count(stub, me) == 0


def _sync_upload_error(port: int, metadata, requests) -> grpc.RpcError:
    """The upload through gRPC's synchronous client. grpcio's asyncio client has a known race
    (grpc/grpc#36066): a write that fails because the server already ended the stream can
    replace the server's status with `INTERNAL: Internal error from Core`. The sync client
    reports the status the server sent, which is what this test is about."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            files_service_pb2_grpc.FileServiceStub(channel).UploadFile(requests, metadata=metadata, timeout=120)
        except grpc.RpcError as error:
            return error
    raise AssertionError("the upload was accepted")


async def test_oversized_upload_is_rejected_while_streaming(small_server, small_stub, as_user, small_storage_dir):
    me = as_user("bad-large")
    before = stored_files(small_storage_dir)
    sent = 0

    def endless():
        nonlocal sent
        yield files_service_pb2.UploadFileRequest(metadata=files_service_pb2.UploadFileMetadata(
            filename="huge.txt", purpose=files_pb2.FILE_PURPOSE_ASSISTANTS))
        for _ in range(512):  # 512 MiB if the server let it all through
            sent += 1
            yield files_service_pb2.UploadFileRequest(chunk=b"x" * (1024 * 1024))

    error = await asyncio.to_thread(_sync_upload_error, small_server.port, me, endless())
    code, reason, _ = rich_error(error)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert reason == "FILE_TOO_LARGE"
    assert sent < 512, "the server should stop the stream as soon as the limit is crossed"
    assert stored_files(small_storage_dir) == before
    assert await _file_count(small_stub, me) == 0

    # Just under the limit is fine.
    ok = await upload(small_stub, me, b"y" * SMALL_FILE_LIMIT, "fits.txt")
    assert ok.size_bytes == SMALL_FILE_LIMIT


async def test_announced_size_and_checksum_are_enforced(stub, as_user, storage_dir):
    me = as_user("bad-checksum")
    before = stored_files(storage_dir)
    data = b"checksummed content\n"
    reason, _ = await expect_error(upload(stub, me, data, "a.txt", sha256="0" * 64), grpc.StatusCode.DATA_LOSS)
    assert reason == "CHECKSUM_MISMATCH"
    reason, fields = await expect_error(upload(stub, me, data, "a.txt", size_bytes=len(data) + 1),
                                        grpc.StatusCode.INVALID_ARGUMENT)
    assert (reason, fields) == ("SIZE_MISMATCH", ["metadata.size_bytes"])
    assert stored_files(storage_dir) == before
    good = await upload(stub, me, data, "a.txt", sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    assert good.sha256 == hashlib.sha256(data).hexdigest()


async def test_stream_must_start_with_metadata(stub, as_user):
    me = as_user("bad-stream")

    def chunks_only():
        yield files_service_pb2.UploadFileRequest(chunk=b"no metadata")

    reason, _ = await expect_error(stub.UploadFile(chunks_only(), metadata=me), grpc.StatusCode.INVALID_ARGUMENT)
    assert reason == "METADATA_MISSING"
    _, fields = await expect_error(upload(stub, me, b"data", "x.txt", purpose=files_pb2.FILE_PURPOSE_UNSPECIFIED),
                                   grpc.StatusCode.INVALID_ARGUMENT)
    assert fields == ["metadata.purpose"]


async def test_declared_type_that_lies_is_overruled_by_the_content(stub, as_user):
    me = as_user("bad-liar")
    # Text pretending to be a PDF: treated as the text it is.
    text = await upload(stub, me, b"Plain words about lighthouses and their keepers.\n", "report.pdf", "application/pdf")
    assert text.media_type == "text/plain"
    assert (await wait_file(stub, me, text.id)).status == files_pb2.FILE_STATUS_PROCESSED
    # A real PDF declared as plain text: read as the PDF it is, page count and all.
    real = await upload(stub, me, documents.pdf(["first page", "second page"]), "notes.txt", "text/plain")
    assert real.media_type == "application/pdf"
    real = await wait_file(stub, me, real.id)
    assert (real.status, real.page_count) == (files_pb2.FILE_STATUS_PROCESSED, 2)
    # Binary noise declared as a PDF: an error that says what the content really is.
    noise = await upload(stub, me, os.urandom(4096).replace(b"%PDF", b"xxxx") + b"\0", "scan.pdf", "application/pdf")
    assert noise.media_type == "application/octet-stream"
    noise = await wait_file(stub, me, noise.id)
    assert noise.status == files_pb2.FILE_STATUS_ERROR
    assert "declared as application/pdf" in noise.status_reason and "unrecognised binary data" in noise.status_reason
    # An image is not text to a vision upload only if it really is one.
    reason, _ = await expect_error(upload(stub, me, b"not an image", "cat.png", "image/png",
                                          purpose=files_pb2.FILE_PURPOSE_VISION), grpc.StatusCode.INVALID_ARGUMENT)
    assert reason == "NOT_AN_IMAGE"


async def test_encrypted_and_corrupt_pdfs_fail_with_a_reason(stub, as_user):
    me = as_user("bad-pdf")
    locked = await upload(stub, me, documents.pdf(["secret plans"], password="hunter2"), "locked.pdf")
    locked = await wait_file(stub, me, locked.id)
    assert locked.status == files_pb2.FILE_STATUS_ERROR
    assert "password-protected" in locked.status_reason

    good = documents.pdf(["a page of text that will be cut short"] * 3)
    corrupt = await upload(stub, me, good[: len(good) // 3] + b"\x00garbage" * 50, "broken.pdf")
    corrupt = await wait_file(stub, me, corrupt.id)
    assert corrupt.status == files_pb2.FILE_STATUS_ERROR
    assert "PDF" in corrupt.status_reason and "upload" in corrupt.status_reason
    # The bytes of a failed file stay downloadable.
    chunks = [r async for r in stub.DownloadFile(files_service_pb2.DownloadFileRequest(file_id=corrupt.id), metadata=me)]
    assert chunks[0].file.id == corrupt.id and b"".join(c.chunk for c in chunks[1:]).startswith(b"%PDF")

    # A failed file cannot join a vector store.
    store = await stub.CreateVectorStore(files_service_pb2.CreateVectorStoreRequest(name="pdfs"), metadata=me)
    reason, _ = await expect_error(stub.AddVectorStoreFile(files_service_pb2.AddVectorStoreFileRequest(
        vector_store_id=store.id, file_id=locked.id), metadata=me), grpc.StatusCode.FAILED_PRECONDITION)
    assert reason == "FILE_FAILED"


async def test_docx_zip_bomb_is_capped_before_parsing(small_stub, as_user):
    me = as_user("bad-bomb")
    bomb = documents.docx_bomb(2 * SMALL_DOCX_LIMIT)
    assert len(bomb) < SMALL_FILE_LIMIT
    file = await upload(small_stub, me, bomb, "invoice.docx")
    assert file.media_type == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    file = await wait_file(small_stub, me, file.id)
    assert file.status == files_pb2.FILE_STATUS_ERROR
    assert "zip bomb" in file.status_reason


async def test_filenames_lose_directories_and_control_characters(stub, as_user, storage_dir):
    me = as_user("bad-names")
    file = await upload(stub, me, b"content", "../../etc/pass\x00wd\n")
    assert file.filename == "passwd"
    file = await upload(stub, me, b"content", "C:\\Users\\eve\\..\\report\u202e.txt")
    assert file.filename == "report.txt"
    for path in stored_files(storage_dir):
        assert storage_dir in path.parents and "passwd" not in path.name
    reason, fields = await expect_error(upload(stub, me, b"content", "../\x01\x02/.."), grpc.StatusCode.INVALID_ARGUMENT)
    assert (reason, fields) == ("FILENAME_INVALID", ["metadata.filename"])
    _, fields = await expect_error(upload(stub, me, b"content", "n" * 300 + ".txt"), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields == ["metadata.filename"]


async def test_non_utf8_text_fails_with_a_reason(stub, as_user):
    me = as_user("bad-encoding")
    latin1 = "Café crème brûlée, à la carte.\n".encode("latin-1")
    file = await wait_file(stub, me, (await upload(stub, me, latin1, "menu.txt", "text/plain")).id)
    assert file.status == files_pb2.FILE_STATUS_ERROR
    assert "not valid UTF-8" in file.status_reason and "save it as UTF-8" in file.status_reason
    # UTF-16 with a byte-order mark is fine.
    utf16 = "Café crème brûlée.\n".encode("utf-16")
    file = await wait_file(stub, me, (await upload(stub, me, utf16, "menu16.txt")).id)
    assert (file.status, file.text_chars) == (files_pb2.FILE_STATUS_PROCESSED, len("Café crème brûlée.\n"))


async def test_bad_json_and_imageless_store_entries_fail_with_reasons(stub, as_user):
    me = as_user("bad-json")
    broken = await wait_file(stub, me, (await upload(stub, me, b'{"a": [1, 2', "data.json")).id)
    assert broken.status == files_pb2.FILE_STATUS_ERROR and "JSON is not valid" in broken.status_reason
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(64)
    image = await wait_file(stub, me, (await upload(stub, me, png, "pixel.png", purpose=files_pb2.FILE_PURPOSE_VISION)).id)
    assert (image.status, image.media_type) == (files_pb2.FILE_STATUS_PROCESSED, "image/png")
    store = await stub.CreateVectorStore(files_service_pb2.CreateVectorStoreRequest(file_ids=[image.id]), metadata=me)
    entry = await wait_entry(stub, me, store.id, image.id)
    assert entry.status == files_pb2.VECTOR_STORE_FILE_STATUS_FAILED
    assert entry.last_error.code == files_pb2.VECTOR_STORE_FILE_ERROR_CODE_UNSUPPORTED_FILE


async def test_client_that_disconnects_mid_upload_leaves_nothing(stub, as_user, storage_dir):
    me = as_user("bad-disconnect")
    before = stored_files(storage_dir)
    hold = asyncio.Event()

    async def stalled():
        yield files_service_pb2.UploadFileRequest(metadata=files_service_pb2.UploadFileMetadata(
            filename="partial.bin.txt", purpose=files_pb2.FILE_PURPOSE_ASSISTANTS))
        for _ in range(3):
            yield files_service_pb2.UploadFileRequest(chunk=b"z" * 65536)
        await hold.wait()  # the client goes quiet, then goes away

    call = stub.UploadFile(stalled(), metadata=me)
    for _ in range(1500):  # until the server has written part of it to a temporary file
        if [p for p in stored_files(storage_dir) if p.suffix == ".part" and p.stat().st_size >= 3 * 65536]:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the upload never reached the server")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(1500):
        if stored_files(storage_dir) == before:
            break
        await asyncio.sleep(0.02)
    assert stored_files(storage_dir) == before
    assert await _file_count(stub, me) == 0
