"""Extraction of the tabular and plain formats through the service, and the chunker's
guarantees on its own: chunks fit the model's window as the model counts it, overlap as
asked, never straddle a page, and cover the whole text."""

from __future__ import annotations

import json

from parley.files.v1 import files_pb2 as pb
from parley.files.v1 import files_service_pb2 as api
from services.files.chunking import chunk_text, minilm_token_counter
from services.files.extract import extract_csv, extract_html, extract_json
from tests.files.conftest import search, upload, wait_entry, wait_file


def test_csv_json_and_html_become_readable_text():
    csv_text = extract_csv(b"name;city;badge\nAda;London;A-17\nGrace;Arlington;G-42\n").text
    assert "name: Grace; city: Arlington; badge: G-42" in csv_text
    json_text = extract_json(json.dumps({"fleet": [{"ship": "Endeavour", "crew": 94}]}).encode()).text
    assert json_text.splitlines() == ["fleet[0].ship: Endeavour", "fleet[0].crew: 94"]
    html_text = extract_html(b"<html><head><title>T</title><style>p{}</style></head><body><p>One</p><p>Two &amp; three</p>"
                             b"<script>hidden()</script></body></html>").text
    assert html_text.splitlines() == ["T", "One", "Two & three"]


def test_chunks_fit_overlap_and_respect_pages():
    counter = minilm_token_counter()
    pages = ["Alpha " + "sentence about the first page. " * 120, "Beta " + "words on the second page, " * 90, "Gamma end."]
    text = "\n\n".join(pages)
    starts, offset = [], 0
    for page in pages:
        starts.append(offset)
        offset += len(page) + 2
    chunks = chunk_text(text, starts, counter, 128, 32)
    assert all(c.tokens <= 128 and counter.count(c.text) <= 128 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:  # each chunk lies wholly on its page
        page_text = pages[chunk.page_number - 1]
        assert chunk.text in page_text
    assert {c.page_number for c in chunks} == {1, 2, 3}
    assert chunks[-1].text == "Gamma end."
    # Consecutive chunks of one page overlap; every word of the text is in some chunk.
    first_page = [c for c in chunks if c.page_number == 1]
    assert first_page[0].text[-40:] in first_page[1].text
    joined = " ".join(c.text for c in chunks)
    assert all(word in joined for word in set(text.split()))


async def test_csv_json_and_markdown_are_searchable(stub, as_user):
    me = as_user("formats")
    files = [
        await upload(stub, me, b"part,bin,quantity\nflange gasket,B-12,40\nhex bolt,C-07,900\n", "stock.csv"),
        await upload(stub, me, json.dumps({"vessels": [{"name": "Kestrel", "home_port": "Aberdeen"}]}).encode(), "fleet.json"),
        await upload(stub, me, b"# Rota\n\n* Monday: **Ingrid** opens the archive\n", "rota.md"),
    ]
    for file in files:
        assert (await wait_file(stub, me, file.id)).status == pb.FILE_STATUS_PROCESSED
    assert [f.media_type for f in files] == ["text/csv", "application/json", "text/markdown"]
    store = await stub.CreateVectorStore(api.CreateVectorStoreRequest(file_ids=[f.id for f in files]), metadata=me)
    for file in files:
        assert (await wait_entry(stub, me, store.id, file.id)).status == pb.VECTOR_STORE_FILE_STATUS_COMPLETED
    text_mode = pb.RankingOptions(mode=pb.RANKING_MODE_TEXT)
    found = await search(stub, me, [store.id], "hex bolt", ranking_options=text_mode)
    assert found.results[0].file_id == files[0].id and "bin: C-07" in found.results[0].text
    found = await search(stub, me, [store.id], "Aberdeen", ranking_options=text_mode)
    assert found.results[0].file_id == files[1].id and "vessels[0].home_port: Aberdeen" in found.results[0].text
    found = await search(stub, me, [store.id], "who unlocks the archive at the start of the week")
    assert found.results[0].file_id == files[2].id
