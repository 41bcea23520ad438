"""file_search over a real uploaded document: the model's query goes to the files service's
hybrid search, the results reach the model with citation markers, and the answer carries
annotations naming the file, its page and the quoted chunk at the marker's exact span. Files
attached to a message are indexed into the session's own store on the fly."""

from __future__ import annotations

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as api
from parley.files.v1 import files_service_pb2 as fapi
from parley.sessions.v1 import sessions_pb2 as spb
from tests.assistants.helpers import new_assistant, statuses, stream_run, text_of, user_message
from tests.files.conftest import upload, wait_entry, wait_file
from tests.files.documents import pdf

POLICY_PAGES = [
    "Shipping. Orders leave the warehouse within two business days of payment.",
    "Refunds. A refund is paid to the original card within fourteen days after the returned item arrives.",
]


async def test_a_file_search_answer_cites_file_page_and_quote(stack, engine_channel, backends, user):
    me = user()
    md, stub = stack.direct(me), stack.engine.stub(engine_channel)
    _, files = backends
    document = await upload(files, md, pdf(POLICY_PAGES), "policy.pdf")
    store = await files.CreateVectorStore(fapi.CreateVectorStoreRequest(name="policies", file_ids=[document.id]),
                                          metadata=md)
    await wait_entry(files, md, store.id, document.id)

    model = stack.model("openai")
    name = model.split("/")[1]
    answer = "Refunds arrive within fourteen days【0†policy.pdf】."
    stack.fakes["openai"].script(name, {"tool_calls": [("fs_1", "file_search", '{"query": "refund days card"}')]},
                                 {"text": answer})
    assistant = await new_assistant(
        stub, md, model, tools=[apb.Tool(file_search=apb.FileSearchTool(max_num_results=3))],
        tool_resources=apb.ToolResources(file_search=apb.FileSearchResources(vector_store_ids=[store.id])))
    events = await stream_run(stub, md, assistant_id=assistant.id,
                              session=api.NewSession(messages=[user_message("How long do refunds take?")]))
    assert statuses(events)[-1] == apb.RUN_STATUS_COMPLETED
    assert text_of(events) == answer
    cited = [a for e in events if e.HasField("message_delta") for a in e.message_delta.annotations]
    assert len(cited) == 1
    citation = cited[0]
    marker = "【0†policy.pdf】"
    assert citation.text == marker
    assert (citation.start_index, citation.end_index) == (answer.index(marker), answer.index(marker) + len(marker))
    assert citation.file_citation.file_id == document.id and citation.file_citation.filename == "policy.pdf"
    assert citation.file_citation.page == 2 and "fourteen days" in citation.file_citation.quote

    # The model read the chunk under its marker; the step records the query and results.
    sent = stack.fakes["openai"].requests_for(name)[-1]["messages"]
    tool_output = next(m["content"] for m in sent if m["role"] == "tool")
    assert marker in tool_output and "fourteen days" in tool_output
    run_id = events[-1].run_id
    steps = (await stub.ListRunSteps(api.ListRunStepsRequest(run_id=run_id), metadata=md)).run_steps
    search = steps[0].tool_calls.tool_calls[0].file_search
    assert search.query == "refund days card"
    assert search.results[0].file_id == document.id and search.results[0].page == 2
    assert steps[1].message_creation.annotations == cited


async def test_files_attached_to_a_message_are_searched(stack, engine_channel, backends, user):
    me = user()
    md, stub = stack.direct(me), stack.engine.stub(engine_channel)
    _, files = backends
    note = await upload(files, md, b"The launch code word is marmalade. It was chosen in April.", "note.txt")
    await wait_file(files, md, note.id)
    model = stack.model("anthropic")
    name = model.split("/")[1]
    stack.fakes["anthropic"].script(name, {"tool_calls": [("toolu_1", "file_search", '{"query": "launch code word"}')]},
                                    {"text": "It is marmalade【0†note.txt】."})
    assistant = await new_assistant(stub, md, model, tools=[apb.Tool(file_search=apb.FileSearchTool())])
    message = user_message("What is the code word?", attachments=[spb.Attachment(file_id=note.id,
                                                                              tools=["file_search"])])
    events = await stream_run(stub, md, assistant_id=assistant.id, session=api.NewSession(messages=[message]),
                              timeout=120)
    assert statuses(events)[-1] == apb.RUN_STATUS_COMPLETED
    annotation = next(a for e in events if e.HasField("message_delta") for a in e.message_delta.annotations)
    assert annotation.file_citation.file_id == note.id and "marmalade" in annotation.file_citation.quote
    sent = stack.fakes["anthropic"].requests_for(name)[0]
    assert "note.txt" in str(sent["messages"][0]["content"])  # the model is told what is attached
