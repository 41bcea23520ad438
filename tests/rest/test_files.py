"""Files, vector stores (files, batches, search) and a file-search run with its citation,
through the edge with the official openai SDK."""

from __future__ import annotations

import openai
import pytest

REFUNDS = (b"Refund policy. Customers may return any purchase within 45 days for a full refund, "
           b"no questions asked. Shipping is free for orders over 50 euros.")
HOURS = b"Opening hours. The shop opens at nine and closes at six, every day except Sunday."


async def test_files_upload_list_retrieve_content_delete(client):
    uploaded = await client.files.create(file=("notes.txt", b"hello file", "text/plain"), purpose="assistants")
    assert uploaded.id.startswith("file-") and uploaded.bytes == 10 and uploaded.filename == "notes.txt"
    assert uploaded.purpose == "assistants"
    other = await client.files.create(file=("data.csv", b"a,b\n1,2\n", "text/csv"), purpose="user_data")
    assert (await client.files.retrieve(uploaded.id)).filename == "notes.txt"
    content = await client.files.content(uploaded.id)
    assert content.content == b"hello file"
    assert [f.id async for f in client.files.list(purpose="user_data")] == [other.id]
    assert {uploaded.id, other.id} <= {f.id async for f in client.files.list(limit=1)}
    assert (await client.files.delete(uploaded.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)
    with pytest.raises(openai.BadRequestError) as bad_purpose:
        await client.files.create(file=("x.txt", b"x", "text/plain"), purpose="nonsense")
    assert bad_purpose.value.body["param"] == "purpose"


async def test_an_upload_over_the_limit_is_refused_while_it_streams(client):
    with pytest.raises(openai.APIStatusError) as refused:
        await client.files.create(file=("big.txt", b"x" * (5 * 1024 * 1024), "text/plain"), purpose="assistants")
    assert refused.value.status_code == 413
    assert "big.txt" not in [f.filename async for f in client.files.list()]


async def test_vector_stores_upload_and_poll_search_and_batches(client):
    store = await client.vector_stores.create(name="policies", metadata={"team": "support"})
    assert store.id.startswith("vs_") and store.metadata == {"team": "support"}
    entry = await client.vector_stores.files.upload_and_poll(vector_store_id=store.id,
                                                             file=("refunds.txt", REFUNDS, "text/plain"))
    assert entry.status == "completed" and entry.vector_store_id == store.id
    hours = await client.files.create(file=("hours.txt", HOURS, "text/plain"), purpose="assistants")
    batch = await client.vector_stores.file_batches.create_and_poll(vector_store_id=store.id, file_ids=[hours.id])
    assert batch.status == "completed" and batch.file_counts.completed == 1
    assert [f.id async for f in client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id)] == [
        hours.id]
    assert {f.id async for f in client.vector_stores.files.list(store.id)} == {entry.id, hours.id}
    results = await client.vector_stores.search(store.id, query="how many days for a refund", max_num_results=2)
    assert results.data[0].filename == "refunds.txt" and "45 days" in results.data[0].content[0].text
    fetched = await client.vector_stores.retrieve(store.id)
    assert fetched.file_counts.completed == 2 and fetched.status == "completed"
    renamed = await client.vector_stores.update(store.id, name="renamed")
    assert renamed.name == "renamed"
    assert (await client.vector_stores.files.delete(hours.id, vector_store_id=store.id)).deleted
    assert [s.id async for s in client.vector_stores.list()][0] == store.id
    assert (await client.vector_stores.delete(store.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.retrieve(store.id)


async def test_a_file_search_run_cites_the_file(edge, client):
    store = await client.vector_stores.create(name="kb")
    entry = await client.vector_stores.files.upload_and_poll(vector_store_id=store.id,
                                                             file=("refunds.txt", REFUNDS, "text/plain"))
    model = edge.stack.model("openai")
    edge.stack.fakes["openai"].script(model.split("/")[1],
                                      {"tool_calls": [("call_s", "file_search", '{"query": "refund days"}')]},
                                      {"text": "Refunds are accepted within 45 days 【0†source】."})
    assistant = await client.beta.assistants.create(model=model, tools=[{"type": "file_search"}],
                                                    tool_resources={"file_search": {"vector_store_ids": [store.id]}})
    assert assistant.tool_resources.file_search.vector_store_ids == [store.id]
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "How long for a refund?"}])
    async with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream:
        await stream.until_done()
        final = (await stream.get_final_messages())[-1]
    text = final.content[0].text
    assert "45 days" in text.value
    citation = text.annotations[0]
    assert citation.type == "file_citation" and citation.file_citation.file_id == entry.id
    assert text.value[citation.start_index:citation.end_index] == citation.text
    # Parley's additions to a citation: the file's name and (for paged files) the page.
    assert citation.file_citation.file_name == "refunds.txt" and citation.file_citation.page is None
    stored = (await client.beta.threads.messages.list(thread.id)).data[0]
    assert stored.content[0].text.annotations[0].file_citation.file_id == entry.id
    assert stored.content[0].text.annotations[0].file_citation.file_name == "refunds.txt"
    steps = [s async for s in client.beta.threads.runs.steps.list(final.run_id, thread_id=thread.id, order="asc")]
    search = steps[0].step_details.tool_calls[0]
    assert search.type == "file_search" and search.file_search.results[0].file_name == "refunds.txt"


async def test_a_threads_tool_resources_reach_its_runs(edge, client):
    store = await client.vector_stores.create(name="thread-kb")
    entry = await client.vector_stores.files.upload_and_poll(vector_store_id=store.id,
                                                             file=("hours.txt", HOURS, "text/plain"))
    model = edge.stack.model("openai")
    edge.stack.fakes["openai"].script(model.split("/")[1],
                                      {"tool_calls": [("call_h", "file_search", '{"query": "opening hours"}')]},
                                      {"text": "The shop opens at nine 【0†source】."})
    assistant = await client.beta.assistants.create(model=model, tools=[{"type": "file_search"}])
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "When do you open?"}],
                                              tool_resources={"file_search": {"vector_store_ids": [store.id]}},
                                              metadata={"kept": "yes"})
    assert thread.tool_resources.file_search.vector_store_ids == [store.id] and thread.metadata == {"kept": "yes"}
    run = await client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed"
    message = (await client.beta.threads.messages.list(thread.id)).data[0]
    assert message.content[0].text.annotations[0].file_citation.file_id == entry.id
