"""Parley's own endpoints under /v1/parley, over raw HTTP on the real edge, gateway and
services: threads with titles and their search, messages with feedback, feedback, export, a
run's resumable event stream (and the `id:` lines of every run stream), run variables,
usage and budgets."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Http:
    """JSON calls with one user's key; `call` returns (status, body)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session, self.base_url = session, base_url

    async def call(self, method: str, path: str, body=None, **options) -> tuple[int, dict]:
        async with self.session.request(method, self.base_url + path, json=body, **options) as response:
            return response.status, await response.json()

    async def ok(self, method: str, path: str, body=None, **options) -> dict:
        status, reply = await self.call(method, path, body, **options)
        assert status == 200, reply
        return reply

    async def events(self, path: str, headers: dict | None = None) -> list[tuple[str | None, str, str]]:
        """An SSE stream read to its end: (id, event, data) per event."""
        async with self.session.get(self.base_url + path, headers=headers or {}) as response:
            assert response.status == 200, await response.text()
            assert response.headers["content-type"].startswith("text/event-stream")
            return parse_sse(await response.text())


def parse_sse(text: str) -> list[tuple[str | None, str, str]]:
    events = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            events.append((fields.get("id"), fields.get("event", "message"), fields["data"]))
    return events


@pytest.fixture
async def http(edge):
    key = await edge.key()
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {key}"}) as session:
        yield Http(session, edge.base_url)


def text_of(events) -> str:
    return "".join(part["text"]["value"] for _, name, data in events if name == "thread.message.delta"
                   for part in json.loads(data)["delta"]["content"])


async def test_threads_have_titles_and_are_searched_by_title(edge, http):
    made = [await http.ok("POST", "/parley/threads", {"title": title}) for title in
            ("Refund policy", "Shipping times", "refunds again")]
    assert made[0]["object"] == "parley.thread" and made[0]["title"] == "Refund policy"
    assert made[0]["id"].startswith("thread_") and made[0]["status"] == "active" and made[0]["message_count"] == 0
    found = await http.ok("GET", "/parley/threads?query=REFUND&limit=1")
    assert [t["title"] for t in found["data"]] == ["refunds again"] and found["next_page_token"]
    rest = await http.ok("GET", f"/parley/threads?query=REFUND&limit=1&page_token={found['next_page_token']}")
    assert [t["title"] for t in rest["data"]] == ["Refund policy"] and rest["next_page_token"] is None
    # The OpenAI-shaped thread is the same thread.
    assert (await http.ok("GET", f"/threads/{made[1]['id']}"))["id"] == made[1]["id"]
    renamed = await http.ok("POST", f"/parley/threads/{made[1]['id']}", {"title": "Delivery times"})
    assert renamed["title"] == "Delivery times"
    assert (await http.ok("GET", f"/parley/threads/{made[1]['id']}"))["title"] == "Delivery times"
    archived = await http.ok("POST", f"/parley/threads/{made[1]['id']}", {"status": "archived"})
    assert archived["status"] == "archived" and archived["title"] == "Delivery times"
    # Another user sees none of it.
    other_key = await edge.key()
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {other_key}"}) as other_session:
        other = Http(other_session, edge.base_url)
        assert (await other.ok("GET", "/parley/threads?query=refund"))["data"] == []
        status, _ = await other.call("GET", f"/parley/threads/{made[0]['id']}")
        assert status == 404
    # Bad input: clear 400s naming the parameter.
    for path, param in [("/parley/threads?limit=0", "limit"), ("/parley/threads?status=gone", "status"),
                        ("/parley/threads?page_token=forged", "page_token")]:
        status, reply = await http.call("GET", path)
        assert status == 400 and reply["error"]["param"] == param, reply
    status, reply = await http.call("POST", f"/parley/threads/{made[0]['id']}", {"title": "two\nlines"})
    assert status == 400 and reply["error"]["param"] == "thread.title"
    status, reply = await http.call("POST", f"/parley/threads/{made[0]['id']}", {})
    assert status == 400


async def test_a_run_s_events_resume_after_any_sequence_without_repeats(edge, http):
    model = edge.stack.model("openai")
    answer = "Resumable streams give every event once, in order, whatever the client lost."
    edge.stack.fakes["openai"].script(model.split("/")[1], {"text": answer})
    assistant = await http.ok("POST", "/assistants", {"model": model})
    thread = await http.ok("POST", "/parley/threads", {"title": "resume"})
    run = await http.ok("POST", f"/threads/{thread['id']}/runs", {
        "assistant_id": assistant["id"], "additional_messages": [{"role": "user", "content": "go"}]})
    path = f"/parley/threads/{thread['id']}/runs/{run['id']}/events"
    everything = await http.events(path)  # follows the run to its end
    names = [name for _, name, _ in everything]
    assert names[0] == "thread.run.created" and names[-1] == "done" and "thread.run.completed" in names
    assert text_of(everything) == answer
    sequences = [int(i) for i, _, _ in everything if i is not None]
    assert sequences == sorted(set(sequences)) and sequences[0] >= 1
    # Resuming after each sequence gives exactly the rest: the same events, none twice.
    for cut in (sequences[0], sequences[len(sequences) // 2], sequences[-1]):
        position = max(index for index, (i, _, _) in enumerate(everything) if i == str(cut))
        expected = everything[position + 1:]
        assert await http.events(f"{path}?after_sequence={cut}") == expected
        assert await http.events(path, headers={"last-event-id": str(cut)}) == expected
        assert text_of(everything[:position + 1]) + text_of(expected) == answer
    status, reply = await http.call("GET", f"{path}?after_sequence=abc")
    assert status == 400 and reply["error"]["param"] == "after_sequence"
    other_thread = await http.ok("POST", "/parley/threads", {"title": "another"})
    status, _ = await http.call("GET", f"/parley/threads/{other_thread['id']}/runs/{run['id']}/events")
    assert status == 404


async def test_every_run_stream_names_its_run_event_sequences(edge, http):
    """`id:` on the OpenAI-shaped streams too (the SDKs ignore it), so a client that lost a
    stream can continue it from the events endpoint."""
    model = edge.stack.model("openai")
    edge.stack.fakes["openai"].script(model.split("/")[1], {"text": "Numbered events."})
    assistant = await http.ok("POST", "/assistants", {"model": model})
    thread = await http.ok("POST", "/threads", {"messages": [{"role": "user", "content": "hi"}]})
    async with http.session.post(f"{http.base_url}/threads/{thread['id']}/runs",
                                 json={"assistant_id": assistant["id"], "stream": True}) as response:
        streamed = parse_sse(await response.text())
    run_id = json.loads(streamed[0][2])["id"]
    replay = await http.events(f"/parley/threads/{thread['id']}/runs/{run_id}/events")
    assert [i for i, _, _ in streamed if i] == [i for i, _, _ in replay if i]
    assert streamed == replay


async def test_messages_carry_feedback_and_threads_export(edge, http):
    model = edge.stack.model("openai")
    edge.stack.fakes["openai"].script(model.split("/")[1], {"text": "Paris is the capital of France."})
    assistant = await http.ok("POST", "/assistants", {"model": model})
    thread = await http.ok("POST", "/parley/threads", {"title": "Capitals"})
    run = await http.ok("POST", f"/threads/{thread['id']}/runs", {
        "assistant_id": assistant["id"], "additional_messages": [{"role": "user", "content": "Capital of France?"}]})
    await http.events(f"/parley/threads/{thread['id']}/runs/{run['id']}/events")
    listed = await http.ok("GET", f"/parley/threads/{thread['id']}/messages")
    assert [m["role"] for m in listed["data"]] == ["user", "assistant"]
    answer = listed["data"][1]
    assert answer["content"][0]["text"]["value"] == "Paris is the capital of France." and answer["feedback"] is None
    # The id a run-written message has in streams and listings is the one feedback takes.
    rated = await http.ok("POST", f"/parley/threads/{thread['id']}/messages/{answer['id']}/feedback",
                          {"rating": "thumbs_down", "comment": "Too short."})
    assert rated["rating"] == "thumbs_down" and rated["comment"] == "Too short."
    again = await http.ok("POST", f"/parley/threads/{thread['id']}/messages/{answer['id']}/feedback",
                          {"rating": "thumbs_up"})
    assert again["rating"] == "thumbs_up" and again["comment"] == ""
    listed = await http.ok("GET", f"/parley/threads/{thread['id']}/messages")
    assert listed["data"][1]["feedback"]["rating"] == "thumbs_up"
    for body, param in [({"rating": "meh"}, "rating"), ({}, "rating"), ({"comment": 3}, "comment")]:
        status, reply = await http.call("POST", f"/parley/threads/{thread['id']}/messages/{answer['id']}/feedback",
                                        body)
        assert status == 400 and reply["error"]["param"] == param, reply
    status, _ = await http.call("POST", f"/parley/threads/{thread['id']}/messages/msg_{'0' * 32}/feedback",
                                {"rating": "thumbs_up"})
    assert status == 404

    async with http.session.get(f"{http.base_url}/parley/threads/{thread['id']}/export?format=markdown") as response:
        assert response.status == 200 and response.headers["content-type"].startswith("text/markdown")
        assert response.headers["content-disposition"].startswith("attachment; filename=")
        markdown = await response.text()
    assert "Capitals" in markdown and "Capital of France?" in markdown and "Paris is the capital" in markdown
    async with http.session.get(f"{http.base_url}/parley/threads/{thread['id']}/export?format=json") as response:
        assert response.status == 200 and response.headers["content-type"].startswith("application/json")
        document = json.loads(await response.read())
    assert document["session"]["title"] == "Capitals" and len(document["messages"]) == 2
    status, reply = await http.call("GET", f"/parley/threads/{thread['id']}/export?format=pdf")
    assert status == 400 and reply["error"]["param"] == "format"
    status, _ = await http.call("GET", f"/parley/threads/thread_{'0' * 32}/export")
    assert status == 404


async def test_runs_fill_template_variables(edge, http):
    model = edge.stack.model("openai")
    fake = edge.stack.fakes["openai"]
    fake.script(model.split("/")[1], {"text": "Hello Ada."})
    assistant = await http.ok("POST", "/assistants", {"model": model, "instructions": "You help {{customer}}."})
    thread = await http.ok("POST", "/threads", {"messages": [{"role": "user", "content": "hi"}]})
    run = await http.ok("POST", f"/threads/{thread['id']}/runs", {"assistant_id": assistant["id"],
                                                                  "variables": {"customer": "Ada"}})
    assert run["instructions"] == "You help Ada."
    await http.events(f"/parley/threads/{thread['id']}/runs/{run['id']}/events")
    system = fake.requests_for(model.split("/")[1])[-1]["messages"][0]
    assert system["role"] == "system" and "You help Ada." in json.dumps(system)
    status, reply = await http.call("POST", f"/threads/{thread['id']}/runs", {"assistant_id": assistant["id"]})
    assert status == 400 and "customer" in reply["error"]["message"]
    status, reply = await http.call("POST", f"/threads/{thread['id']}/runs", {"assistant_id": assistant["id"],
                                                                            "variables": {"customer": 7}})
    assert status == 400 and reply["error"]["param"] == "variables"


async def test_models_with_their_capabilities(edge, http):
    models = {m["id"]: m for m in (await http.ok("GET", "/parley/models"))["data"]}
    chat = models["openai/m0"]
    assert chat["object"] == "parley.model" and chat["provider"] == "openai" and chat["context_window"] == 16000
    assert {"streaming", "tools", "vision"} <= set(chat["capabilities"]) and chat["availability"] == "available"
    assert "embeddings" in models["local/all-MiniLM-L6-v2"]["capabilities"]


async def test_usage_by_model_and_day_and_budgets(edge, http):
    model = edge.stack.model("openai")
    edge.stack.fakes["openai"].script(model.split("/")[1], {"text": "Counted.", "usage": (120, 30, 0)})
    await http.ok("POST", "/chat/completions", {"model": model, "messages": [{"role": "user", "content": "count"}]})

    async def report():
        return await http.ok("GET", "/parley/usage?days=7&group_by=model,day")

    usage = await report()
    for _ in range(200):  # the ledger is written in batches, about once a second
        if any(row.get("model") == model for row in usage["rows"]):
            break
        await asyncio.sleep(0.1)
        usage = await report()
    row = next(row for row in usage["rows"] if row.get("model") == model)
    assert row["input_tokens"] == 120 and row["output_tokens"] == 30 and row["requests"] == 1
    assert len(row["day"]) == 10 and usage["total"]["total_tokens"] >= 150
    assert usage["group_by"] == ["model", "day"]
    status, reply = await http.call("GET", "/parley/usage?group_by=planet")
    assert status == 400 and reply["error"]["param"] == "group_by"
    status, reply = await http.call("GET", "/parley/usage?days=0")
    assert status == 400 and reply["error"]["param"] == "days"
    status, reply = await http.call("GET", "/parley/usage?all_users=true")  # not an admin key
    assert status == 403

    assert (await http.ok("GET", "/parley/budget"))["limits"] == []
    budget = await http.ok("POST", "/parley/budget", {"limits": [
        {"period": "day", "unit": "usd", "amount": 2.5}, {"period": "month", "unit": "tokens", "amount": 10000}]})
    by_period = {limit["period"]: limit for limit in budget["limits"]}
    assert by_period["day"]["unit"] == "usd" and by_period["day"]["amount"] == 2.5
    assert by_period["month"]["unit"] == "tokens" and by_period["month"]["amount"] == 10000
    assert by_period["month"]["resets_at"] > by_period["month"]["period_start"]
    assert {limit["period"] for limit in (await http.ok("GET", "/parley/budget"))["limits"]} == {"day", "month"}
    for body, param in [({"limits": [{"period": "year", "amount": 1}]}, "limits[0].period"),
                        ({"limits": [{"period": "day", "unit": "tokens", "amount": 1.5}]}, "limits[0].amount"),
                        ({}, "limits")]:
        status, reply = await http.call("POST", "/parley/budget", body)
        assert status == 400 and reply["error"]["param"] == param, reply
    assert (await http.ok("POST", "/parley/budget", {"limits": []}))["limits"] == []
