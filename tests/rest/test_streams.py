"""The edge's streams on the wire: heartbeats on idle, a client that hangs up stops the model
call of a chat completion, but not a run (as over gRPC)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def _wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    async def poll():
        while not await predicate():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what}") from None


async def test_a_hung_up_chat_stream_closes_the_vendor_request(edge):
    model = edge.stack.model("openai")
    fake = edge.stack.fakes["openai"]
    fake.script(model.split("/")[1], {"text": "start ", "endless": True})
    key = await edge.key()
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {key}"}) as http:
        response = await http.post(f"{edge.base_url}/chat/completions", json={
            "model": model, "stream": True, "messages": [{"role": "user", "content": "go on forever"}]})
        assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
        seen = 0
        async for line in response.content:
            if line.startswith(b"data: "):
                chunk = json.loads(line[6:])
                assert chunk["object"] == "chat.completion.chunk"
                seen += 1
            if seen >= 5:
                break
        response.close()  # hang up mid-stream

    async def vendor_saw_it():
        return model.split("/")[1] in fake.disconnects

    await _wait_for(vendor_saw_it, "the vendor request to be closed")


async def test_an_idle_run_stream_sends_heartbeats_and_a_hang_up_leaves_the_run_going(edge, client):
    model = edge.stack.model("openai")
    edge.stack.fakes["openai"].script(model.split("/")[1], {"hang": True})
    assistant = await client.beta.assistants.create(model=model)
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "take your time"}])
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {client.api_key}"}) as http:
        response = await http.post(f"{edge.base_url}/threads/{thread.id}/runs",
                                   json={"assistant_id": assistant.id, "stream": True})
        assert response.status == 200
        lines, run_id = [], None
        async for line in response.content:
            lines.append(line)
            if line.startswith(b"data: {") and run_id is None:
                run_id = json.loads(line[6:])["id"]
            if lines.count(b": keep-alive\n") >= 2:
                break
        response.close()
    assert run_id and run_id.startswith("run_")
    assert b"event: thread.run.created\n" in lines and b": keep-alive\n" in lines
    await asyncio.sleep(1.0)
    run = await client.beta.threads.runs.retrieve(run_id, thread_id=thread.id)
    assert run.status in ("queued", "in_progress")  # the hang-up did not stop it
    cancelled = await client.beta.threads.runs.cancel(run_id, thread_id=thread.id)
    assert cancelled.status in ("cancelling", "cancelled")
