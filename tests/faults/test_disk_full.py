"""The files service's disk full during an upload: its storage directory is a 4 MiB tmpfs of
its own (conftest.py: `unshare` gives the process a mount namespace where it may mount one,
unprivileged too). An upload that does not fit fails RESOURCE_EXHAUSTED with a reason,
leaves no file row and no partial blob behind, and once space is freed (a file deleted)
the same upload succeeds, with the service never restarted.
"""

from __future__ import annotations

import os

import grpc
import pytest

from parley.files.v1 import files_service_pb2 as fapi
from parley.files.v1 import files_service_pb2_grpc as fgrpc
from tests.faults.conftest import STORAGE_BYTES, assert_clear
from tests.files.conftest import upload

SIZE = int(STORAGE_BYTES * 0.6)  # one fits, two do not


def _stored(storage) -> tuple[list[str], list[str]]:
    """(committed blobs, temporary files) in the storage as the files process sees it."""
    blobs = [f"{shard.name}/{path.name}" for shard in storage.iterdir() if shard.is_dir() and len(shard.name) == 2
             for path in shard.iterdir()]
    temporary = [path.name for path in (storage / "tmp").iterdir()]
    return sorted(blobs), temporary


async def test_an_upload_that_fills_the_disk_fails_clearly_and_leaves_nothing(fault_stack):
    storage = fault_stack.storage()
    assert storage.is_dir(), f"cannot see the files service's storage at {storage}"
    mounted = os.statvfs(storage)
    assert mounted.f_blocks * mounted.f_frsize <= STORAGE_BYTES, (
        "the files service's storage is not on its tiny tmpfs: `unshare --user --map-root-user --mount` and "
        "`mount -t tmpfs` inside it must work on this machine for this test (see tests/faults/conftest.py)")
    async with fault_stack.channel() as channel:
        files = fgrpc.FileServiceStub(channel)
        first = await upload(files, fault_stack.auth, os.urandom(SIZE), "first.bin")
        blobs_before, _ = _stored(storage)
        listed_before = await files.ListFiles(fapi.ListFilesRequest(page_size=100), metadata=fault_stack.auth)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await upload(files, fault_stack.auth, os.urandom(SIZE), "second.bin")
        reason = assert_clear(caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED)
        blobs, temporary = _stored(storage)
        listed = await files.ListFiles(fapi.ListFilesRequest(page_size=100), metadata=fault_stack.auth)
        assert [f.id for f in listed.files] == [f.id for f in listed_before.files], "a file row was left"
        assert blobs == blobs_before and not temporary, (blobs, temporary)

        await files.DeleteFile(fapi.DeleteFileRequest(file_id=first.id), metadata=fault_stack.auth, timeout=10)
        again = await upload(files, fault_stack.auth, os.urandom(SIZE), "second.bin")
        assert again.size_bytes == SIZE
        await files.DeleteFile(fapi.DeleteFileRequest(file_id=again.id), metadata=fault_stack.auth, timeout=10)
    print(f"\n[fault] disk full during an upload ({SIZE:,} bytes onto a {STORAGE_BYTES:,}-byte filesystem holding "
          f"one such file): RESOURCE_EXHAUSTED ({reason}: {caught.value.details()!r}); no row, no blob, no temporary "
          f"file left; after a delete the same upload succeeded")
