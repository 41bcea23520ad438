"""A generated multi-page PDF, a Word document and an HTML page go through upload, text
extraction, chunking, embedding with the real local model and indexing, and are then found
by questions worded differently from their text, with the right file and page."""

from __future__ import annotations

from parley.files.v1 import files_pb2, files_service_pb2
from tests.files import documents
from tests.files.conftest import search, sha256, upload, wait_entry, wait_file

FILLER = ("This section of the handbook is kept for reference and is reviewed every year by the editorial team. "
          "Readers should consult the index for related topics and the glossary for definitions. ") * 6

PDF_PAGES = [
    "Company history. The firm was founded in a small workshop and grew into a regional supplier. " + FILLER,
    "Router maintenance. To reset the router, hold the recessed button on the back panel for ten seconds "
    "until the status light blinks amber; every custom setting is erased and the defaults come back. " + FILLER,
    "Billing terms. Invoices are payable within thirty days. Payments received after the due date accrue "
    "interest of 1.5 percent per month on the outstanding balance. " + FILLER,
    "Office locations. The head office is near the central station; branch offices serve the northern "
    "districts. " + FILLER,
]
DOCX_PAGES = [
    ["Field notes, volume one.", "The survey covered the coastal marshes during the spring tides."],
    ["Salmon runs.", "Each autumn the Atlantic salmon leave the ocean and swim up the rivers where they hatched, "
                     "to spawn in the gravel beds of the headwaters."],
]
HTML_PARAGRAPHS = [
    "Photosynthesis takes place in the chloroplasts of leaf cells, where chlorophyll absorbs sunlight.",
    "The captured energy splits water and fixes carbon dioxide into sugars that feed the plant.",
]


async def test_pdf_docx_and_html_are_found_by_paraphrase_with_pages(stub, as_user):
    me = as_user("e2e-alice")
    pdf_bytes = documents.pdf(PDF_PAGES)
    pdf = await upload(stub, me, pdf_bytes, "handbook.pdf", "application/pdf", attributes={
        "department": files_pb2.AttributeValue(string_value="support")})
    assert pdf.status in (files_pb2.FILE_STATUS_UPLOADED, files_pb2.FILE_STATUS_PROCESSING)
    assert pdf.sha256 == sha256(pdf_bytes) and pdf.size_bytes == len(pdf_bytes)
    word = await upload(stub, me, documents.docx(DOCX_PAGES), "notes.docx")
    page = await upload(stub, me, documents.html("Plant biology", HTML_PARAGRAPHS), "biology.html", "text/html")

    pdf = await wait_file(stub, me, pdf.id)
    word = await wait_file(stub, me, word.id)
    page = await wait_file(stub, me, page.id)
    assert pdf.status == files_pb2.FILE_STATUS_PROCESSED, pdf.status_reason
    assert (pdf.media_type, pdf.page_count) == ("application/pdf", 4)
    assert word.media_type == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert (word.status, word.page_count) == (files_pb2.FILE_STATUS_PROCESSED, 2)
    assert (page.status, page.media_type) == (files_pb2.FILE_STATUS_PROCESSED, "text/html")

    store = await stub.CreateVectorStore(files_service_pb2.CreateVectorStoreRequest(
        name="knowledge", file_ids=[pdf.id, word.id, page.id]), metadata=me)
    assert store.embedding_model == "local/all-MiniLM-L6-v2"
    assert store.file_counts.total == 3
    for file_id in (pdf.id, word.id, page.id):
        entry = await wait_entry(stub, me, store.id, file_id)
        assert entry.status == files_pb2.VECTOR_STORE_FILE_STATUS_COMPLETED, entry.last_error.message
        assert entry.chunk_count > 0
        assert entry.chunking_strategy.max_chunk_size_tokens == 256
    store = await stub.GetVectorStore(files_service_pb2.GetVectorStoreRequest(vector_store_id=store.id), metadata=me)
    assert store.status == files_pb2.VECTOR_STORE_STATUS_COMPLETED
    assert store.file_counts.completed == 3 and store.usage_bytes > 0

    found = await search(stub, me, [store.id], "How can I restore the network box to its factory configuration?",
                         max_num_results=3)
    best = found.results[0]
    assert (best.file_id, best.filename, best.page_number) == (pdf.id, "handbook.pdf", 2)
    assert "recessed button" in best.text
    assert best.attributes["department"].string_value == "support"
    assert 0 < best.score <= 1

    found = await search(stub, me, [store.id], "what penalty applies when a bill is paid late", max_num_results=3)
    assert (found.results[0].file_id, found.results[0].page_number) == (pdf.id, 3)

    found = await search(stub, me, [store.id], "where do fish travel to lay their eggs", max_num_results=3)
    assert (found.results[0].file_id, found.results[0].page_number) == (word.id, 2)

    found = await search(stub, me, [store.id], "how do plants turn light into food", max_num_results=3)
    assert found.results[0].file_id == page.id
    assert found.results[0].page_number == 0
    assert "do not index me" not in found.results[0].text  # scripts are not text
    assert found.embedding_time.ToNanoseconds() > 0 or found.retrieval_time.ToNanoseconds() > 0
