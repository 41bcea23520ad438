"""Chatting in the browser: a streamed answer with its typing indicator, stop, a function call
answered by hand, a citation that links to its file, a reload and a network drop in the middle
of a run (resumed without repeated text), model output with HTML shown as text, sessions
(search, rename, delete), feedback and export, and the assistant editor with variables."""

from __future__ import annotations

import asyncio
import json

STORY = ("Resumable streams number every event. A client that loses its connection asks for the "
         "events after the last number it saw, and the server replays exactly those, once, in order.")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
REFUNDS = b"Refund policy.\n\nRefunds are accepted within 45 days of purchase, with the receipt.\n"


async def _runs(console, thread: str) -> list[dict]:
    return (await console.call("GET", f"/threads/{thread}/runs"))["data"]


async def test_a_streamed_answer_appears_progressively_with_a_typing_indicator(console):
    model = console.model()
    console.script(model, {"text": STORY, "pace": 0.04})
    report = await console.run("streaming", model=model, expected=STORY)
    assert report["lengths"] >= 3
    runs = await _runs(console, report["thread"])
    assert [r["status"] for r in runs] == ["completed"]


async def test_stop_cancels_the_run(console):
    model = console.model()
    console.script(model, {"text": "start ", "endless": True})
    report = await console.run("stop", model=model)
    runs = await _runs(console, report["thread"])
    assert [r["status"] for r in runs] == ["cancelled"]
    for _ in range(100):  # the engine closes the vendor request as it cancels
        if model.split("/")[1] in console.fake.disconnects:
            break
        await asyncio.sleep(0.1)
    assert model.split("/")[1] in console.fake.disconnects


async def test_a_function_call_answered_in_the_browser_completes_the_run(console):
    model = console.model()
    console.script(model, {"tool_calls": [("call_w", "get_weather", '{"city": "Paris"}')]},
                   {"text": "It is 21 degrees in Paris."})
    assistant = await console.call("POST", "/assistants", {"model": model, "name": "Weather", "tools": [WEATHER]})
    report = await console.run("function_call", assistant=assistant["id"], output='{"celsius": 21}',
                               expected="21 degrees in Paris")
    runs = await _runs(console, report["thread"])
    assert [r["status"] for r in runs] == ["completed"]
    second = console.fake.requests_for(model.split("/")[1])[-1]
    assert any(m.get("role") == "tool" and "celsius" in json.dumps(m) for m in second["messages"])


async def test_files_dropped_on_a_chat_upload_with_progress_and_go_with_the_message(console):
    model = console.model()
    console.script(model, {"text": "A note and a dot."})
    dot = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    notes = "Meeting notes.\n" + "\n" * 150_000
    report = await console.run("attachments", model=model, notes=notes, png=dot, throughput=100_000,
                               expected="A note and a dot.")
    question = (await console.call("GET", f"/parley/threads/{report['thread']}/messages"))["data"][0]
    kinds = [part["type"] for part in question["content"]]
    assert kinds == ["text", "image_file"] and len(question["attachments"]) == 1
    assert question["attachments"][0]["tools"] == [{"type": "file_search"}]
    sent = console.fake.requests_for(model.split("/")[1])[-1]["messages"]
    user = next(m for m in sent if m["role"] == "user")
    assert any(part.get("type") == "image_url" for part in user["content"])  # the image reached the model


async def test_a_citation_links_to_its_file(console):
    store, uploaded = await console.store_with("refunds.txt", REFUNDS)
    model = console.model()
    console.script(model, {"tool_calls": [("call_s", "file_search", '{"query": "refund days"}')]},
                   {"text": "Refunds are accepted within 45 days 【0†source】."})
    assistant = await console.call("POST", "/assistants", {
        "model": model, "name": "Support", "tools": [{"type": "file_search"}],
        "tool_resources": {"file_search": {"vector_store_ids": [store["id"]]}}})
    report = await console.run("citation", assistant=assistant["id"], file=uploaded["id"], filename="refunds.txt")
    assert report["url"].endswith(f"/files/{uploaded['id']}")


async def test_a_reload_in_the_middle_of_a_run_resumes_without_repeating_text(console):
    model = console.model()
    console.script(model, {"text": STORY, "pace": 0.05})
    report = await console.run("reload_resume", model=model, expected=STORY)
    assert 0 < report["before"] < len(STORY)
    stored = await console.call("GET", f"/parley/threads/{report['thread']}/messages")
    assert [m["content"][0]["text"]["value"] for m in stored["data"] if m["role"] == "assistant"] == [STORY]


async def test_a_network_drop_in_the_middle_of_a_run_resumes_without_repeating_text(console, cuttable_proxy):
    model = console.model()
    console.script(model, {"text": STORY, "pace": 0.05})
    report = await console.run("network_drop", origin=f"http://127.0.0.1:{cuttable_proxy.port}", model=model,
                               expected=STORY, control=f"{cuttable_proxy.control.url}/cut")
    assert cuttable_proxy.cuts == 1 and report["thread"]


async def test_model_output_with_html_is_shown_as_text(console):
    model = console.model()
    console.script(model, {"text": 'Look: <script>window.__pwned = 1</script> <img src=x onerror="window.__pwned = 2"> '
                                   "and **still Markdown**."})
    report = await console.run("script_injection", model=model)
    assert report["scripts"] == 0 and report["pwned"] is None


async def test_sessions_are_searched_renamed_and_deleted(console):
    for title in ("Shipping", "Refund policy", "Invoices", "Refunds, second"):
        await console.call("POST", "/parley/threads", {"title": title})
    await console.run("sessions", remaining=3)
    titles = [t["title"] for t in (await console.call("GET", "/parley/threads"))["data"]]
    assert titles == ["Refunds, renamed", "Invoices", "Shipping"]


async def test_feedback_and_export_from_the_browser(console):
    model = console.model()
    console.script(model, {"text": "Paris is the capital of France."})
    assistant = await console.call("POST", "/assistants", {"model": model, "name": "Geography"})
    thread = await console.call("POST", "/parley/threads", {"title": "Capitals", "assistant_id": assistant["id"]})
    run = await console.call("POST", f"/threads/{thread['id']}/runs", {
        "assistant_id": assistant["id"], "additional_messages": [{"role": "user", "content": "Capital of France?"}]})
    for _ in range(300):
        if (await console.call("GET", f"/threads/{thread['id']}/runs/{run['id']}"))["status"] == "completed":
            break
        await asyncio.sleep(0.1)
    report = await console.run("feedback_and_export", thread=thread["id"])
    assert "Paris is the capital of France." in report["markdown"] and report["markdownName"].endswith(".md")
    assert report["json"]["session"]["title"] == "Capitals" and report["jsonName"].endswith(".json")
    answer = (await console.call("GET", f"/parley/threads/{thread['id']}/messages"))["data"][1]
    assert answer["feedback"]["rating"] == "thumbs_up" and answer["feedback"]["comment"] == "Clear and short."


async def test_an_assistant_made_in_the_editor_runs_with_its_variables(console):
    store, _ = await console.store_with("manual.txt", b"The manual of the product.\n")
    model = console.model()
    console.script(model, {"text": "Hello Ada, about Parley."})
    report = await console.run("assistant_editor", model=model, storeName=store["name"], expected="Hello Ada")
    assistant = await console.call("GET", f"/assistants/{report['assistant']}")
    assert assistant["name"] == "Support bot" and assistant["model"] == model
    assert assistant["instructions"] == "You help {{customer}} with {{product}}."
    assert {t["type"] for t in assistant["tools"]} == {"file_search", "function"}
    assert assistant["tool_resources"]["file_search"]["vector_store_ids"] == [store["id"]]
    runs = await _runs(console, report["thread"])
    assert runs[0]["instructions"] == "You help Ada with Parley."
