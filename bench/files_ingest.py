"""Files benchmark: ingestion of a 100-page PDF — seconds from upload to `processed` and to
searchable, chunks per second, and the share of extraction, chunking, embedding and storage
— against the llm service's raw Embed throughput on the same chunks, measured in the same
run. Run with `python -m bench.files_ingest`.

The llm service runs as its own process (as in `make run`); the files service runs in this
process so that its per-phase timings can be read, and is called over gRPC on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import grpc

from bench._common import ServiceProcess
from parley.files.v1 import files_pb2 as pb
from parley.files.v1 import files_service_pb2 as api
from parley.files.v1 import files_service_pb2_grpc as api_grpc
from parley.llm.v1 import llm_pb2, llm_service_pb2, llm_service_pb2_grpc
from services.files.app import FilesSettings, build_app
from services.files.chunking import chunk_text, minilm_token_counter
from services.files.extract import Limits, extract
from services.files.worker import WorkerSettings
from services.runtime.config import ServerSettings
from services.runtime.db import start_embedded_postgres
from services.runtime.identity import IdentityMinter, IdentityVerifier, generate_private_key_pem, public_key_pem
from services.runtime.server import start_server

PAGES = 100
WORDS_PER_PAGE = 330  # a typical page of prose, about 2,000 characters

_TOPICS = ["the billing system", "router maintenance", "the warehouse", "customer onboarding", "data retention",
           "incident response", "the release process", "office safety", "supplier contracts", "travel policy"]
_VERBS = ["describes", "explains", "limits", "requires", "changes", "documents", "reviews", "replaces", "extends"]
_NOUNS = ["procedure", "threshold", "approval", "schedule", "inventory", "report", "escalation", "backup", "audit",
          "account", "invoice", "shipment", "policy", "checklist", "deadline", "exception", "budget", "contract"]


def document_pages(seed: int = 7) -> list[str]:
    """Readable, varied pseudo-prose: sentences built from a small grammar."""
    rnd = random.Random(seed)
    pages = []
    for number in range(1, PAGES + 1):
        topic = _TOPICS[number % len(_TOPICS)]
        words: list[str] = [f"Section {number}: {topic}."]
        count = 3
        while count < WORDS_PER_PAGE:
            sentence = (f"The {rnd.choice(_NOUNS)} for {topic} {rnd.choice(_VERBS)} the {rnd.choice(_NOUNS)} "
                        f"and the {rnd.choice(_NOUNS)} of each {rnd.choice(_NOUNS)} within {rnd.randint(2, 90)} days.")
            words.append(sentence)
            count += len(sentence.split())
        pages.append(" ".join(words))
    return pages


def make_pdf(pages: list[str]) -> bytes:
    from fpdf import FPDF

    document = FPDF()
    document.set_font("Helvetica", size=10)
    for text in pages:
        document.add_page()
        document.multi_cell(0, 5, text)
    return bytes(document.output())


class Suite:
    """An embedded PostgreSQL, the llm service as a process and the files service in this
    process, on loopback ports, with a minted identity for a bench user."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.private_key = generate_private_key_pem()
        (directory / "id.pem").write_bytes(self.private_key)
        (directory / "id.pub.pem").write_bytes(public_key_pem(self.private_key))
        self.minter = IdentityMinter(self.private_key, ttl_seconds=3600)
        self.metadata = self.minter.metadata("bench-user", ("files", "llm"))

    async def __aenter__(self) -> Suite:
        self.admin_url = start_embedded_postgres(self.directory / "pg")
        self._llm = ServiceProcess("llm", {
            "PARLEY_DATABASE_URL": self.admin_url, "PARLEY_STATE_DIR": str(self.directory),
            "PARLEY_IDENTITY_PUBLIC_KEY_FILE": str(self.directory / "id.pub.pem"),
        })
        await self._llm.__aenter__()
        self.llm_port = self._llm.port
        self.settings = replace(
            FilesSettings.from_env(), admin_url=self.admin_url, database_url=None,
            storage_dir=self.directory / "files", llm_target=f"127.0.0.1:{self.llm_port}",
            identity_private_key=self.private_key, worker=WorkerSettings(poll_seconds=0.2),
        )
        self.app = await build_app(self.settings)
        server_settings = ServerSettings(service="files", host="127.0.0.1", port=0, shutdown_grace=1.0,
                                         max_message_bytes=16 * 1024 * 1024,
                                         identity_public_key=public_key_pem(self.private_key))
        self.server = await start_server(self.app, server_settings,
                                         verifier=IdentityVerifier(public_key_pem(self.private_key)))
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = api_grpc.FileServiceStub(self.channel)
        self.llm_channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.llm_port}")
        self.llm = llm_service_pb2_grpc.LLMServiceStub(self.llm_channel)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.channel.close()
        await self.llm_channel.close()
        await self.server.stop(0.5)
        await self._llm.__aexit__(*exc)

    async def upload(self, data: bytes, filename: str) -> pb.File:
        def requests():
            yield api.UploadFileRequest(metadata=api.UploadFileMetadata(filename=filename,
                                                                        purpose=pb.FILE_PURPOSE_ASSISTANTS))
            for begin in range(0, len(data), 1024 * 1024):
                yield api.UploadFileRequest(chunk=data[begin:begin + 1024 * 1024])

        return await self.stub.UploadFile(requests(), metadata=self.metadata)

    async def wait_file(self, file_id: str) -> pb.File:
        while True:
            file = await self.stub.GetFile(api.GetFileRequest(file_id=file_id), metadata=self.metadata)
            if file.status in (pb.FILE_STATUS_PROCESSED, pb.FILE_STATUS_ERROR):
                return file
            await asyncio.sleep(0.02)

    async def wait_entry(self, store_id: str, file_id: str) -> pb.VectorStoreFile:
        while True:
            entry = await self.stub.GetVectorStoreFile(api.GetVectorStoreFileRequest(
                vector_store_id=store_id, file_id=file_id), metadata=self.metadata)
            if entry.status != pb.VECTOR_STORE_FILE_STATUS_IN_PROGRESS:
                return entry
            await asyncio.sleep(0.02)

    async def ingest(self, data: bytes, filename: str) -> tuple[pb.File, pb.VectorStoreFile, float, float]:
        """Upload, then add to a new store at once: (file, entry, s to processed, s to searchable)."""
        started = time.perf_counter()
        file = await self.upload(data, filename)
        store = await self.stub.CreateVectorStore(api.CreateVectorStoreRequest(file_ids=[file.id]), metadata=self.metadata)
        file = await self.wait_file(file.id)
        processed = time.perf_counter() - started
        entry = await self.wait_entry(store.id, file.id)
        return file, entry, processed, time.perf_counter() - started


async def main() -> None:
    logging.getLogger("parley").setLevel(logging.WARNING)
    pages = document_pages()
    pdf = make_pdf(pages)
    with tempfile.TemporaryDirectory(prefix="parley-bench-files-") as tmp:
        async with Suite(Path(tmp)) as suite:
            # Warm-up: the llm process loads the embedding model on its first call.
            warm_file, warm_entry, _, _ = await suite.ingest(b"A short warm-up document about lighthouses.\n", "warm.txt")
            assert warm_entry.status == pb.VECTOR_STORE_FILE_STATUS_COMPLETED, warm_entry.last_error.message
            suite.app.processor.timings.clear()

            file, entry, processed, searchable = await suite.ingest(pdf, "handbook.pdf")
            assert file.status == pb.FILE_STATUS_PROCESSED, file.status_reason
            assert entry.status == pb.VECTOR_STORE_FILE_STATUS_COMPLETED, entry.last_error.message
            phases: dict[str, float] = {}
            for timing in suite.app.processor.timings:
                for phase, seconds in timing.seconds.items():
                    phases[phase] = phases.get(phase, 0.0) + seconds
            chunks = entry.chunk_count

            # Baselines, same run: extraction alone (pypdf), and raw Embed of the same chunks
            # in the same batches, bypassing the llm cache.
            started = time.perf_counter()
            extracted = extract(pdf, "application/pdf", Limits())
            extraction_alone = time.perf_counter() - started
            texts = [c.text for c in chunk_text(extracted.text, extracted.page_starts, minilm_token_counter(),
                                                entry.chunking_strategy.max_chunk_size_tokens,
                                                entry.chunking_strategy.chunk_overlap_tokens)]
            batch = suite.settings.embed_batch_size
            started = time.perf_counter()
            for begin in range(0, len(texts), batch):
                await suite.llm.Embed(llm_service_pb2.EmbedRequest(
                    model="local/all-MiniLM-L6-v2", inputs=texts[begin:begin + batch],
                    cache_policy=llm_pb2.CACHE_POLICY_BYPASS), metadata=suite.minter.metadata("bench-user", ("llm",)))
            raw_embed = time.perf_counter() - started

    total = sum(phases.values())
    print(f"document: {PAGES}-page PDF, {len(pdf) / 1024:.0f} KiB, {file.text_chars:,} characters, "
          f"{chunks} chunks of at most {entry.chunking_strategy.max_chunk_size_tokens} tokens "
          f"(overlap {entry.chunking_strategy.chunk_overlap_tokens})")
    print(f"upload to processed (text extracted): {processed:.2f} s")
    print(f"upload to searchable (chunked, embedded, indexed): {searchable:.2f} s  "
          f"(target < 15 s: {'met' if searchable < 15 else 'missed'})")
    print(f"throughput: {chunks / searchable:.1f} chunks/s end to end")
    print("where the processing time went:")
    for phase in ("extraction", "chunking", "embedding", "storage"):
        print(f"  {phase:<10} {phases.get(phase, 0.0):6.2f} s  {phases.get(phase, 0.0) / total:6.1%}")
    print(f"  {'queueing and polling':<10} {searchable - total:6.2f} s  (upload RPC, hand-offs between jobs)")
    print(f"baseline, same run: raw Embed of the same {len(texts)} chunks in batches of {batch}: {raw_embed:.2f} s, "
          f"{len(texts) / raw_embed:.1f} chunks/s; pypdf extraction alone: {extraction_alone:.2f} s")
    print(f"ratio end-to-end / raw embedding time: {searchable / raw_embed:.2f}x "
          f"(1.00x would mean the pipeline adds nothing to the model's own time)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
