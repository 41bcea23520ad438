"""The start-up storage sweep: orphans go, and a sweep that fails says so in the log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil

from services.files.extract import Limits
from services.files.storage import BlobStore
from services.files.worker import Processor, WorkerSettings


def _processor(files_app, root) -> Processor:
    return Processor(files_app.db, BlobStore(root), files_app._embedder, WorkerSettings(sweep_age_seconds=0.0),
                     Limits(), "english")


async def test_the_sweep_removes_blobs_without_a_row(files_app, tmp_path):
    processor = _processor(files_app, tmp_path / "blobs")
    orphan = tmp_path / "blobs" / "ab" / "no-such-file"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a crash")
    leftover = tmp_path / "blobs" / "tmp" / "dead.part"
    leftover.write_bytes(b"half an upload")
    await processor.sweep_storage()
    assert not orphan.exists() and not leftover.exists()


async def test_a_failing_start_up_sweep_is_logged_and_maintenance_goes_on(files_app, tmp_path, caplog):
    processor = _processor(files_app, tmp_path / "blobs")
    shutil.rmtree(tmp_path / "blobs")  # the storage went away under the service
    caplog.set_level(logging.ERROR, logger="parley.files")
    task = asyncio.create_task(processor._maintain_forever())
    try:
        for _ in range(100):
            if any("storage sweep failed" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        failures = [r for r in caplog.records if "storage sweep failed" in r.getMessage()]
        assert failures and failures[0].exc_info is not None
        assert not task.done()  # vector store expiry still runs
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
