"""Files (an upload with its progress bar, then processed) and the main screens in both
themes: screenshots for docs/console.md, each screen checked with axe-core."""

from __future__ import annotations

import asyncio

import pytest

# Mostly blank lines: enough bytes to watch the upload at the throttled speed, little text to embed.
SLOW_UPLOAD = ("Opening hours: nine to five.\n" + "\n" * 200_000).encode()
STORY = "A resumable stream numbers its events, so a client that lost some asks for the rest."


async def test_a_file_upload_shows_progress_then_processed(console):
    report = await console.run("upload", filename="hours.txt", content=SLOW_UPLOAD.decode(), throughput=100_000)
    assert report["distinct"] >= 3
    files = (await console.call("GET", f"/vector_stores/{report['store']}/files"))["data"]
    assert [f["status"] for f in files] == ["completed"]
    stored = await console.call("GET", f"/files/{files[0]['id']}")
    assert stored["filename"] == "hours.txt" and stored["status"] == "processed" and stored["bytes"] == len(SLOW_UPLOAD)


@pytest.mark.parametrize("theme", ["light", "dark"])
async def test_the_main_screens_are_accessible_and_photographed(console, theme):
    store, uploaded = await console.store_with("refunds.txt", b"Refunds are accepted within 45 days of purchase.\n")
    model = console.model()
    console.script(model, {"tool_calls": [("call_s", "file_search", '{"query": "refunds"}'),
                                          ("call_w", "get_weather", '{"city": "Paris"}')]})
    assistant = await console.call("POST", "/assistants", {
        "model": model, "name": "Support", "instructions": "You answer questions about refunds.",
        "tools": [{"type": "file_search"}, {"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_resources": {"file_search": {"vector_store_ids": [store["id"]]}}})
    thread = await console.call("POST", "/parley/threads", {"title": "Refunds and weather",
                                                             "assistant_id": assistant["id"]})
    run = await console.call("POST", f"/threads/{thread['id']}/runs", {
        "assistant_id": assistant["id"],
        "additional_messages": [{"role": "user", "content": "Refunds? And the weather?"}]})
    for _ in range(300):
        current = await console.call("GET", f"/threads/{thread['id']}/runs/{run['id']}")
        if current["status"] == "requires_action":
            break
        await asyncio.sleep(0.1)
    console.script(model, {"text": "Refunds are accepted within 45 days 【0†source】, and it is sunny in Paris."})
    await console.call("POST", f"/threads/{thread['id']}/runs/{run['id']}/submit_tool_outputs", {
        "tool_outputs": [{"tool_call_id": "call_w", "output": '{"sky": "sunny", "celsius": 24}'}]})
    for _ in range(300):
        if (await console.call("GET", f"/threads/{thread['id']}/runs/{run['id']}"))["status"] == "completed":
            break
        await asyncio.sleep(0.1)
    await console.call("POST", "/parley/budget", {"limits": [{"period": "month", "unit": "usd", "amount": 25}]})
    stream_model = console.model()
    console.script(stream_model, {"text": STORY, "pace": 0.05})
    await console.run("screens", theme=theme, toolThread=thread["id"], model=stream_model, expected=STORY,
                      assistant=assistant["id"], store=store["id"], file=uploaded["id"], usageModel=model)
