"""Vector stores and their files: create, read, update, list with pagination, remove and
delete; counts and usage; chunking sizes; attribute filters, thresholds, several stores at
once, and what deleting a file does to the stores it was in."""

from __future__ import annotations

import asyncpg
import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from parley.files.v1 import files_pb2 as pb
from parley.files.v1 import files_service_pb2 as api
from services.files.chunking import minilm_token_counter
from tests.conftest import expect_error
from tests.files.conftest import search, upload, wait_entry, wait_file

S = lambda v: pb.AttributeValue(string_value=v)  # noqa: E731
N = lambda v: pb.AttributeValue(number_value=v)  # noqa: E731
B = lambda v: pb.AttributeValue(bool_value=v)  # noqa: E731

LONG_TEXT = " ".join(f"Paragraph {i} describes the tidal observatory, its instruments and the keepers' duties."
                     for i in range(120))


async def test_store_lifecycle_counts_and_file_management(stub, as_user):
    me = as_user("vs-owner")
    a = await upload(stub, me, LONG_TEXT.encode(), "observatory.txt")
    b = await upload(stub, me, b"Short note about lighthouse lenses.\n", "lenses.md")
    store = await stub.CreateVectorStore(api.CreateVectorStoreRequest(
        name="coast", metadata={"team": "survey"}, expires_after=pb.ExpirationPolicy(days=7),
        chunking_strategy=pb.ChunkingStrategy(type=pb.CHUNKING_STRATEGY_TYPE_STATIC, max_chunk_size_tokens=120,
                                              chunk_overlap_tokens=20)), metadata=me)
    assert store.expires_after.days == 7 and store.HasField("expire_time")
    assert store.status == pb.VECTOR_STORE_STATUS_COMPLETED and store.file_counts.total == 0
    added = await stub.AddVectorStoreFile(api.AddVectorStoreFileRequest(vector_store_id=store.id, file_id=a.id),
                                          metadata=me)
    assert added.status == pb.VECTOR_STORE_FILE_STATUS_IN_PROGRESS and added.filename == "observatory.txt"
    assert added.chunking_strategy.max_chunk_size_tokens == 120
    await expect_error(stub.AddVectorStoreFile(api.AddVectorStoreFileRequest(vector_store_id=store.id, file_id=a.id),
                                               metadata=me), grpc.StatusCode.ALREADY_EXISTS)
    await stub.AddVectorStoreFile(api.AddVectorStoreFileRequest(
        vector_store_id=store.id, file_id=b.id, attributes={"kind": S("note")}), metadata=me)
    entry = await wait_entry(stub, me, store.id, a.id)
    assert entry.status == pb.VECTOR_STORE_FILE_STATUS_COMPLETED
    counter = minilm_token_counter()
    assert counter.count(LONG_TEXT) > 120 * entry.chunk_count / 2
    assert entry.chunk_count > 10 and entry.usage_bytes > 0
    await wait_entry(stub, me, store.id, b.id)

    # Every chunk fits the requested size, counted with the model's own tokenizer.
    found = await search(stub, me, [store.id], "tidal observatory instruments", max_num_results=50)
    assert found.results and all(counter.count(r.text) <= 120 for r in found.results)

    store = await stub.GetVectorStore(api.GetVectorStoreRequest(vector_store_id=store.id), metadata=me)
    assert (store.file_counts.completed, store.file_counts.total) == (2, 2)
    assert store.usage_bytes >= entry.usage_bytes

    page = await stub.ListVectorStoreFiles(api.ListVectorStoreFilesRequest(vector_store_id=store.id, page_size=1),
                                           metadata=me)
    assert len(page.files) == 1 and page.next_page_token
    rest = await stub.ListVectorStoreFiles(api.ListVectorStoreFilesRequest(
        vector_store_id=store.id, page_size=1, page_token=page.next_page_token), metadata=me)
    assert {page.files[0].id, rest.files[0].id} == {a.id, b.id} and not rest.next_page_token
    assert rest.files[0].id == a.id  # newest first
    assert [f.id for f in (await stub.ListVectorStoreFiles(api.ListVectorStoreFilesRequest(
        vector_store_id=store.id, status=pb.VECTOR_STORE_FILE_STATUS_FAILED), metadata=me)).files] == []

    updated = await stub.UpdateVectorStore(api.UpdateVectorStoreRequest(
        vector_store=pb.VectorStore(id=store.id, name="coastline"), update_mask=FieldMask(paths=["name", "expires_after"])),
        metadata=me)
    assert updated.name == "coastline" and not updated.HasField("expires_after") and updated.metadata == {"team": "survey"}
    _, fields = await expect_error(stub.UpdateVectorStore(api.UpdateVectorStoreRequest(
        vector_store=pb.VectorStore(id=store.id), update_mask=FieldMask(paths=["embedding_model"])), metadata=me),
        grpc.StatusCode.INVALID_ARGUMENT)
    assert fields == ["update_mask"]

    await stub.RemoveVectorStoreFile(api.RemoveVectorStoreFileRequest(vector_store_id=store.id, file_id=b.id), metadata=me)
    assert (await stub.GetFile(api.GetFileRequest(file_id=b.id), metadata=me)).id == b.id  # the file stays
    assert all(r.file_id != b.id for r in (await search(stub, me, [store.id], "lighthouse lenses")).results)

    # Deleting a file takes it out of every store, chunks and all.
    await stub.DeleteFile(api.DeleteFileRequest(file_id=a.id), metadata=me)
    store = await stub.GetVectorStore(api.GetVectorStoreRequest(vector_store_id=store.id), metadata=me)
    assert (store.file_counts.total, store.usage_bytes) == (0, 0)
    assert not (await search(stub, me, [store.id], "tidal observatory")).results
    await expect_error(stub.GetFile(api.GetFileRequest(file_id=a.id), metadata=me), grpc.StatusCode.NOT_FOUND)

    await stub.DeleteVectorStore(api.DeleteVectorStoreRequest(vector_store_id=store.id), metadata=me)
    await expect_error(stub.GetVectorStore(api.GetVectorStoreRequest(vector_store_id=store.id), metadata=me),
                       grpc.StatusCode.NOT_FOUND)


async def test_listing_files_by_purpose_with_pages(stub, as_user):
    me = as_user("vs-lister")
    ids = [(await upload(stub, me, f"file {i}\n".encode(), f"f{i}.txt")).id for i in range(3)]
    data = await upload(stub, me, b"kept for later\n", "data.txt", purpose=pb.FILE_PURPOSE_USER_DATA)
    first = await stub.ListFiles(api.ListFilesRequest(page_size=2), metadata=me)
    second = await stub.ListFiles(api.ListFilesRequest(page_size=2, page_token=first.next_page_token), metadata=me)
    assert [f.id for f in first.files] + [f.id for f in second.files] == [data.id, *reversed(ids)]
    assert not second.next_page_token
    only = await stub.ListFiles(api.ListFilesRequest(purpose=pb.FILE_PURPOSE_USER_DATA), metadata=me)
    assert [f.id for f in only.files] == [data.id]
    reason, _ = await expect_error(stub.ListFiles(api.ListFilesRequest(
        page_size=2, page_token=first.next_page_token, purpose=pb.FILE_PURPOSE_USER_DATA), metadata=me),
        grpc.StatusCode.INVALID_ARGUMENT)
    assert reason == "PAGE_TOKEN_MISMATCH"
    downloaded = [m async for m in stub.DownloadFile(api.DownloadFileRequest(file_id=data.id), metadata=me)]
    assert downloaded[0].file.filename == "data.txt" and b"".join(m.chunk for m in downloaded[1:]) == b"kept for later\n"


async def test_filters_thresholds_and_several_stores(stub, as_user):
    me = as_user("vs-filters")
    docs = {
        "alpha.txt": ("Quarterly revenue grew in the northern region thanks to new customers.", {"region": S("north"), "year": N(2023), "public": B(True)}),
        "beta.txt": ("Quarterly revenue fell in the southern region after a supplier failed.", {"region": S("south"), "year": N(2024), "public": B(False)}),
        "gamma.txt": ("Quarterly revenue was flat in the eastern region.", {"region": S("east"), "year": N(2025)}),
    }
    store_a = await stub.CreateVectorStore(api.CreateVectorStoreRequest(name="a"), metadata=me)
    store_b = await stub.CreateVectorStore(api.CreateVectorStoreRequest(name="b"), metadata=me)
    ids = {}
    for i, (name, (text, attributes)) in enumerate(docs.items()):
        file = await upload(stub, me, text.encode(), name, attributes=attributes)
        ids[name] = file.id
        target = store_a if i < 2 else store_b
        await stub.AddVectorStoreFile(api.AddVectorStoreFileRequest(vector_store_id=target.id, file_id=file.id), metadata=me)
        await wait_entry(stub, me, target.id, file.id)

    both = [store_a.id, store_b.id]
    found = await search(stub, me, both, "quarterly revenue by region")
    assert {r.file_id for r in found.results} == set(ids.values())
    assert {r.vector_store_id for r in found.results} == set(both)
    scores = [r.score for r in found.results]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)

    def names(response):
        return {next(n for n, i in ids.items() if i == r.file_id) for r in response.results}

    cmp = lambda key, op, **kw: pb.Filter(comparison=pb.ComparisonFilter(key=key, op=op, **kw))  # noqa: E731
    assert names(await search(stub, me, both, "revenue", filters=cmp("region", pb.COMPARISON_OPERATOR_EQ, value=S("south")))) == {"beta.txt"}
    assert names(await search(stub, me, both, "revenue", filters=cmp("year", pb.COMPARISON_OPERATOR_GTE, value=N(2024)))) == {"beta.txt", "gamma.txt"}
    assert names(await search(stub, me, both, "revenue", filters=cmp("region", pb.COMPARISON_OPERATOR_IN, values=[S("north"), S("east")]))) == {"alpha.txt", "gamma.txt"}
    # NE and NIN never match a file without the key.
    assert names(await search(stub, me, both, "revenue", filters=cmp("public", pb.COMPARISON_OPERATOR_NE, value=B(True)))) == {"beta.txt"}
    assert names(await search(stub, me, both, "revenue", filters=cmp("public", pb.COMPARISON_OPERATOR_NIN, values=[B(False)]))) == {"alpha.txt"}
    compound = pb.Filter(compound=pb.CompoundFilter(op=pb.COMPOUND_OPERATOR_OR, filters=[
        cmp("region", pb.COMPARISON_OPERATOR_EQ, value=S("north")),
        pb.Filter(compound=pb.CompoundFilter(op=pb.COMPOUND_OPERATOR_AND, filters=[
            cmp("year", pb.COMPARISON_OPERATOR_GT, value=N(2024)), cmp("region", pb.COMPARISON_OPERATOR_LT, value=S("f"))]))]))
    assert names(await search(stub, me, both, "revenue", filters=compound)) == {"alpha.txt", "gamma.txt"}
    _, fields = await expect_error(search(stub, me, both, "revenue", filters=cmp("public", pb.COMPARISON_OPERATOR_GT, value=B(True))),
                                   grpc.StatusCode.INVALID_ARGUMENT)
    assert fields == ["filters.comparison.value"]
    # NaN and infinities match nothing and are no jsonb literal (they answered INTERNAL).
    for bad in (float("nan"), float("inf"), float("-inf")):
        for op, kwargs, field in [
            (pb.COMPARISON_OPERATOR_EQ, {"value": N(bad)}, "filters.comparison.value"),
            (pb.COMPARISON_OPERATOR_GT, {"value": N(bad)}, "filters.comparison.value"),
            (pb.COMPARISON_OPERATOR_NIN, {"values": [N(1), N(bad)]}, "filters.comparison.values[1]"),
        ]:
            _, fields = await expect_error(search(stub, me, both, "revenue", filters=cmp("year", op, **kwargs)),
                                           grpc.StatusCode.INVALID_ARGUMENT)
            assert fields == [field]

    everything = await search(stub, me, both, "quarterly revenue by region")
    cut = everything.results[1].score
    thresholded = await search(stub, me, both, "quarterly revenue by region", score_threshold=cut)
    assert [r.file_id for r in thresholded.results] == [r.file_id for r in everything.results[:2]]
    assert len((await search(stub, me, both, "quarterly revenue", max_num_results=1)).results) == 1
    vector_only = await search(stub, me, both, "money earned", ranking_options=pb.RankingOptions(mode=pb.RANKING_MODE_VECTOR))
    assert vector_only.results
    text_only = await search(stub, me, both, "supplier", ranking_options=pb.RankingOptions(mode=pb.RANKING_MODE_TEXT))
    assert [r.file_id for r in text_only.results] == [ids["beta.txt"]]
    assert text_only.embedding_time.ToNanoseconds() == 0


async def test_search_and_store_validation(stub, as_user):
    me = as_user("vs-validation")
    store = await stub.CreateVectorStore(api.CreateVectorStoreRequest(), metadata=me)
    for kwargs, field in (
        (dict(query=""), "query"),
        (dict(query="x", max_num_results=51), "max_num_results"),
        (dict(query="x", score_threshold=1.5), "score_threshold"),
        (dict(query="x", ranking_options=pb.RankingOptions(vector_weight=0, text_weight=0)), "ranking_options"),
        (dict(query="x", ranking_options=pb.RankingOptions(rrf_k=0)), "ranking_options.rrf_k"),
    ):
        _, fields = await expect_error(stub.SearchVectorStore(api.SearchVectorStoreRequest(
            vector_store_ids=[store.id], **kwargs), metadata=me), grpc.StatusCode.INVALID_ARGUMENT)
        assert fields == [field]
    _, fields = await expect_error(stub.SearchVectorStore(api.SearchVectorStoreRequest(query="x"), metadata=me),
                                   grpc.StatusCode.INVALID_ARGUMENT)
    assert fields == ["vector_store_ids"]
    for strategy, field in (
        (pb.ChunkingStrategy(type=pb.CHUNKING_STRATEGY_TYPE_STATIC, max_chunk_size_tokens=800), "chunking_strategy.max_chunk_size_tokens"),
        (pb.ChunkingStrategy(type=pb.CHUNKING_STRATEGY_TYPE_STATIC, max_chunk_size_tokens=99), "chunking_strategy.max_chunk_size_tokens"),
        (pb.ChunkingStrategy(type=pb.CHUNKING_STRATEGY_TYPE_STATIC, max_chunk_size_tokens=200, chunk_overlap_tokens=101), "chunking_strategy.chunk_overlap_tokens"),
    ):
        _, fields = await expect_error(stub.CreateVectorStore(api.CreateVectorStoreRequest(chunking_strategy=strategy),
                                                              metadata=me), grpc.StatusCode.INVALID_ARGUMENT)
        assert fields == [field]
    _, fields = await expect_error(stub.CreateVectorStore(api.CreateVectorStoreRequest(
        expires_after=pb.ExpirationPolicy(days=400)), metadata=me), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields == ["expires_after.days"]
    await expect_error(stub.CreateVectorStore(api.CreateVectorStoreRequest(embedding_model="local/echo"), metadata=me),
                       grpc.StatusCode.INVALID_ARGUMENT)


async def test_expired_store_refuses_work_and_loses_its_chunks(stub, as_user, admin_url):
    me = as_user("vs-expiry")
    file = await upload(stub, me, b"Ephemeral notes on migrating geese.\n", "geese.txt")
    store = await stub.CreateVectorStore(api.CreateVectorStoreRequest(
        file_ids=[file.id], expires_after=pb.ExpirationPolicy(days=1)), metadata=me)
    await wait_entry(stub, me, store.id, file.id)
    assert (await search(stub, me, [store.id], "geese")).results
    conn = await asyncpg.connect(admin_url)
    try:  # two idle days pass
        await conn.execute("UPDATE files.vector_stores SET last_active_time = now() - interval '2 days' WHERE id = $1",
                           __import__("uuid").UUID(store.id))
        await conn.fetchval("SELECT files.expire_vector_stores()")
    finally:
        await conn.close()
    got = await stub.GetVectorStore(api.GetVectorStoreRequest(vector_store_id=store.id), metadata=me)
    assert got.status == pb.VECTOR_STORE_STATUS_EXPIRED
    reason, _ = await expect_error(search(stub, me, [store.id], "geese"), grpc.StatusCode.FAILED_PRECONDITION)
    assert reason == "VECTOR_STORE_EXPIRED"
    await expect_error(stub.AddVectorStoreFile(api.AddVectorStoreFileRequest(vector_store_id=store.id, file_id=file.id),
                                               metadata=me), grpc.StatusCode.FAILED_PRECONDITION)
    await stub.DeleteVectorStore(api.DeleteVectorStoreRequest(vector_store_id=store.id), metadata=me)
    assert (await wait_file(stub, me, file.id)).status == pb.FILE_STATUS_PROCESSED
