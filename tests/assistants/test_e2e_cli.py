"""The `parley` CLI's assistants commands as subprocesses against the running stack (the
shared assistants stack: the real gateway, the engine process, the fake vendors)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

from parley.client import RunStatus, TextDelta
from tests.assistants.test_e2e_runs import REPORT_PAGES, e2e, text_of  # noqa: F401 - e2e: this module's stack
from tests.files.documents import pdf


async def cli(e2e, *args: str, user: str = "dana", stdin: str | None = None) -> subprocess.CompletedProcess:  # noqa: F811
    env = {**os.environ, "PARLEY_TARGET": f"127.0.0.1:{e2e.gateway_port}", "PARLEY_API_KEY": await e2e.secret(user)}
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "parley.cli", *args], env=env, input=stdin,
                                   capture_output=True, text=True, timeout=120)


async def test_cli_assistants_create_list_show_update_delete(e2e, tmp_path):  # noqa: F811
    functions = tmp_path / "functions.json"
    functions.write_text(json.dumps([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]))
    created = await cli(e2e, "assistants", "create", "cli", "helper", "-m", "openai/e2e-cli-crud", "-i",
                        "Be helpful.", "--functions", str(functions), "--metadata", "team=docs")
    assert created.returncode == 0, created.stderr
    assistant_id = created.stdout.strip()
    listed = await cli(e2e, "assistants", "list")
    assert assistant_id in listed.stdout and "cli helper" in listed.stdout and "openai/e2e-cli-crud" in listed.stdout
    shown = await cli(e2e, "assistants", "show", assistant_id)
    assert "tool: function get_weather" in shown.stdout and "Be helpful." in shown.stdout
    updated = await cli(e2e, "--json", "assistants", "update", assistant_id, "-i", "Be brief.", "--name", "renamed")
    assert updated.returncode == 0, updated.stderr
    body = json.loads(updated.stdout)
    assert body["instructions"] == "Be brief." and body["name"] == "renamed"
    assert body["tools"][0]["function"]["name"] == "get_weather"  # not named by the update: kept
    deleted = await cli(e2e, "assistants", "delete", assistant_id)
    assert deleted.returncode == 0, deleted.stderr
    gone = await cli(e2e, "assistants", "show", assistant_id)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
    other = await cli(e2e, "assistants", "list", user="erin")
    assert assistant_id not in other.stdout


async def test_cli_run_shows_tool_calls_then_submit_steps_list_and_watch(e2e):  # noqa: F811
    e2e.fakes["openai"].script("e2e-cli-tools", {"tool_calls": [("call_cli", "get_weather", '{"city": "Oslo"}')]},
                               {"text": "It is 4 degrees in Oslo."})
    parley = await e2e.client("dana")
    from tests.assistants.test_e2e_runs import get_weather

    assistant = await parley.assistants.create("cli-tools", model="openai/e2e-cli-tools", tools=[get_weather])
    ran = await cli(e2e, "run", "-a", assistant.id, "Weather", "in", "Oslo?")
    assert ran.returncode == 3, ran.stderr  # waiting for the function's output
    assert '[function get_weather] {"city": "Oslo"}' in ran.stderr and "call_cli" in ran.stderr
    run_id = ran.stderr.split("parley runs submit ")[1].split()[0]
    submitted = await cli(e2e, "runs", "submit", run_id, 'call_cli={"temperature": 4}')
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == "It is 4 degrees in Oslo."
    assert "completed" in submitted.stderr
    shown = await cli(e2e, "runs", "show", run_id)
    assert "completed" in shown.stdout and "openai/e2e-cli-tools" in shown.stdout
    session_id = next(line.split(": ")[1] for line in shown.stdout.splitlines() if "session:" in line)
    listed = await cli(e2e, "runs", "list", "-s", session_id)
    assert run_id in listed.stdout and "completed" in listed.stdout
    steps = await cli(e2e, "runs", "steps", run_id)
    assert "tool_calls" in steps.stdout and "message_creation" in steps.stdout
    assert '{"temperature": 4}' in steps.stdout
    watched = await cli(e2e, "runs", "watch", run_id)
    assert watched.returncode == 0 and watched.stdout.strip() == "It is 4 degrees in Oslo."
    as_json = await cli(e2e, "--json", "runs", "watch", run_id)
    sequences = [json.loads(line)["sequence"] for line in as_json.stdout.splitlines()]
    assert [int(s) for s in sequences] == list(range(1, len(sequences) + 1))


async def test_cli_run_with_file_search_prints_its_sources(e2e, tmp_path):  # noqa: F811
    parley = await e2e.client("dana")
    path = tmp_path / "handbook.pdf"
    path.write_bytes(pdf(REPORT_PAGES))
    uploaded = await parley.files.upload(path)
    store = await e2e.vector_store(parley, "handbook", [uploaded.id])
    e2e.fakes["openai"].script("e2e-cli-search",
                               {"tool_calls": [("call_fs", "file_search", '{"query": "refund days"}')]},
                               {"text": e2e.cite("You have 45 days", 0) + "."})
    created = await cli(e2e, "assistants", "create", "reader", "-m", "openai/e2e-cli-search", "--file-search",
                        "--vector-store", store)
    assert created.returncode == 0, created.stderr
    ran = await cli(e2e, "run", "-a", created.stdout.strip(), "How long to return things?")
    assert ran.returncode == 0, ran.stderr
    assert "You have 45 days" in ran.stdout
    assert re.search(r"\[file_search\] 'refund days' → [1-9]\d* results", ran.stderr), ran.stderr
    sources = ran.stdout.split("Sources:")[1]
    assert "handbook.pdf, page 2" in sources and "within 45 days for a full refund" in sources


async def test_cli_chat_with_an_assistant_keeps_one_session(e2e):  # noqa: F811
    fake = e2e.fakes["openai"]
    fake.script("e2e-cli-chat", {"text": "Hello Dana."}, {"text": "You said your name is Dana."})
    parley = await e2e.client("dana")
    assistant = await parley.assistants.create("chatty", model="openai/e2e-cli-chat")
    chat = await cli(e2e, "chat", "-a", assistant.id, stdin="My name is Dana.\nWhat is my name?\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.splitlines() == ["Hello Dana.", "You said your name is Dana."]
    session_id = chat.stderr.split("[session ")[1].split("]")[0]
    messages = [m async for m in parley.sessions.messages(session_id)]
    assert ["".join(p.text for p in m.content) for m in messages] == [
        "My name is Dana.", "Hello Dana.", "What is my name?", "You said your name is Dana."]
    # The second turn's prompt held the whole conversation.
    second = fake.requests_for("e2e-cli-chat")[-1]["messages"]
    assert [text_of(m["content"]) for m in second if m["role"] in ("user", "assistant")][-3:] == [
        "My name is Dana.", "Hello Dana.", "What is my name?"]
    again = await cli(e2e, "chat", "-a", assistant.id, "--session", session_id, "-q", "Still there?")
    assert again.returncode == 0, again.stderr
    assert len([m async for m in parley.sessions.messages(session_id)]) == 6


async def test_cli_cancels_a_running_run(e2e):  # noqa: F811
    e2e.fakes["openai"].script("e2e-cli-cancel", {"endless": True})
    parley = await e2e.client("dana")
    assistant = await parley.assistants.create("endless", model="openai/e2e-cli-cancel")
    stream = parley.assistants.stream_run(assistant.id, "Never stop")
    async for event in stream:
        if isinstance(event, TextDelta):
            break
    cancelled = await cli(e2e, "runs", "cancel", stream.run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() in ("cancelling", "cancelled")
    result = await parley.assistants.watch_run(stream.run_id, after_sequence=stream.last_sequence).result()
    assert result.status == RunStatus.CANCELLED
    stream.cancel()
    refused = await cli(e2e, "runs", "cancel", stream.run_id, user="erin")
    assert refused.returncode == 1 and "NOT_FOUND" in refused.stderr
