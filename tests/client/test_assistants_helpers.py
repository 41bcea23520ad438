"""The assistants helpers of parley.client that need no server: function tools from Python
callables, answering a function call with a callable, typed run events."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Literal

from parley.assistants.v1 import assistants_pb2 as apb
from parley.client import (
    Citation,
    RunDone,
    RunStatus,
    RunStatusChanged,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    function_tool,
    parameters_of,
    run_request,
    typed_event,
)
from parley.client._runs import call_function
from parley.sessions.v1 import sessions_pb2


def book_table(restaurant: str, people: int, time: str = "19:00", vegan: bool = False,
               seating: Literal["inside", "outside"] = "inside", notes: str | None = None) -> dict:
    """Books a table."""
    return {"restaurant": restaurant, "people": people}


def test_function_tools_come_from_signatures_and_docstrings():
    schema = parameters_of(book_table)
    assert schema == {"type": "object", "required": ["restaurant", "people"], "properties": {
        "restaurant": {"type": "string"}, "people": {"type": "integer"}, "time": {"type": "string"},
        "vegan": {"type": "boolean"}, "seating": {"enum": ["inside", "outside"]}, "notes": {"type": "string"}}}
    tool = function_tool(book_table, cache_ttl=90)
    assert tool.function.name == "book_table" and tool.function.description == "Books a table."
    assert tool.function.cache_ttl.seconds == 90
    assert dict(tool.function.parameters)["required"] == ["restaurant", "people"]
    named = function_tool("lookup", description="Looks up", parameters={"type": "object", "properties": {}})
    assert named.function.name == "lookup" and not named.function.HasField("cache_ttl")


async def test_callables_answer_calls_sync_in_a_thread_async_awaited_failures_as_outputs():
    threads = []

    def sync_add(a: int, b: int) -> int:
        threads.append(threading.current_thread())
        return a + b

    async def async_echo(text: str) -> str:
        await asyncio.sleep(0)
        return text

    def broken() -> None:
        raise ValueError("no such table")

    functions = {"add": sync_add, "echo": async_echo, "broken": broken}
    assert await call_function(functions, ToolCall("1", name="add", arguments='{"a": 2, "b": 3}')) == "5"
    assert threads and threads[0] is not threading.main_thread()
    assert await call_function(functions, ToolCall("2", name="echo", arguments='{"text": "hi"}')) == "hi"
    assert json.loads(await call_function(functions, ToolCall("3", name="broken"))) == {
        "error": "ValueError: no such table"}
    assert json.loads(await call_function(functions, ToolCall("4", name="missing"))) == {
        "error": "function 'missing' is not available"}
    assert "error" in json.loads(await call_function(functions, ToolCall("5", name="add", arguments="{not json")))


def test_run_requests_from_keywords():
    new = run_request("asst", "Hello", variables={"name": "Ada"}, busy_session="cancel_active",
                      tool_choice="required", max_completion_tokens=64, file_ids=["file-1"])
    assert new.session.messages[0].content[0].text == "Hello" and not new.additional_messages
    assert new.session.messages[0].attachments[0].file_id == "file-1"
    assert dict(new.variables) == {"name": "Ada"}
    assert new.busy_session_strategy == apb.BUSY_SESSION_STRATEGY_CANCEL_ACTIVE
    assert new.tool_choice.type == apb.TOOL_CHOICE_TYPE_REQUIRED and new.max_completion_tokens == 64
    more = run_request("asst", "Again", session_id="sess", tool_choice="get_weather", last_messages=4)
    assert more.additional_messages[0].role == sessions_pb2.ROLE_USER and not more.HasField("session")
    assert more.tool_choice.function_name == "get_weather" and more.truncation_strategy.last_messages == 4
    assert more.busy_session_strategy == apb.BUSY_SESSION_STRATEGY_UNSPECIFIED  # the server's default: queue


def test_typed_events_carry_what_callers_read():
    run = apb.Run(id="run-1", status=apb.RUN_STATUS_REQUIRES_ACTION)
    run.required_action.submit_tool_outputs.tool_calls.add(id="c1", name="f", arguments='{"x": 1}')
    changed = typed_event(apb.RunEvent(sequence=4, run_id="run-1", run_status_changed=run))
    assert isinstance(changed, RunStatusChanged) and changed.status == RunStatus.REQUIRES_ACTION
    assert [(c.id, c.name, c.args) for c in changed.required_tool_calls] == [("c1", "f", {"x": 1})]
    annotation = apb.Annotation(text="【0†a.pdf】", start_index=6, end_index=15, file_citation=apb.FileCitation(
        file_id="file-a", filename="a.pdf", quote="the quote", page=3, score=0.8))
    delta = typed_event(apb.RunEvent(sequence=5, message_delta=apb.MessageDelta(
        step_id="s", text="Hello 【0†a.pdf】", annotations=[annotation])))
    assert isinstance(delta, TextDelta) and delta.text == "Hello 【0†a.pdf】"
    assert delta.citations == (Citation("file-a", "a.pdf", 3, "the quote", 0.8, "【0†a.pdf】", 6, 15),)
    fragment = typed_event(apb.RunEvent(sequence=6, tool_call_delta=apb.ToolCallDelta(
        step_id="s", index=1, id="c2", type=apb.TOOL_CALL_TYPE_FUNCTION, name="g", arguments='{"y"')))
    assert isinstance(fragment, ToolCallDelta) and (fragment.type, fragment.name) == ("function", "g")
    done = typed_event(apb.RunEvent(sequence=7, done=apb.RunDone(status=apb.RUN_STATUS_COMPLETED,
                                                                 usage=apb.Usage(total_tokens=9))))
    assert isinstance(done, RunDone) and done.status.ended and done.usage.total_tokens == 9
    assert RunStatus.of(99) == RunStatus.UNSPECIFIED  # a status newer than this client
