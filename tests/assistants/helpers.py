"""Small helpers for the assistants tests: create assistants, run and collect events."""

from __future__ import annotations

import asyncio

from google.protobuf import struct_pb2

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as api
from parley.sessions.v1 import sessions_pb2 as spb


def user_message(text: str, attachments=()) -> spb.Message:
    return spb.Message(role=spb.ROLE_USER, content=[spb.ContentPart(text=text)], attachments=list(attachments))


def function_tool(name: str, properties: dict | None = None, cache_seconds: int = 0) -> apb.Tool:
    parameters = struct_pb2.Struct()
    parameters.update({"type": "object", "properties": properties or {"city": {"type": "string"}}})
    tool = apb.Tool(function=apb.FunctionTool(name=name, description=f"the {name} function", parameters=parameters))
    if cache_seconds:
        tool.function.cache_ttl.seconds = cache_seconds
    return tool


async def new_assistant(stub, md, model: str, **fields) -> apb.Assistant:
    return await stub.CreateAssistant(api.CreateAssistantRequest(model=model, **fields), metadata=md)


async def collect(stream, timeout: float = 60.0) -> list[apb.RunEvent]:
    async def read():
        return [response.event async for response in stream]

    return await asyncio.wait_for(read(), timeout)


async def stream_run(stub, md, timeout: float = 60.0, **fields) -> list[apb.RunEvent]:
    return await collect(stub.StreamRun(api.StreamRunRequest(run=api.CreateRunRequest(**fields)), metadata=md),
                         timeout)


def kinds(events) -> list[str]:
    return [e.WhichOneof("event") for e in events]


def statuses(events) -> list[int]:
    return [e.run_status_changed.status for e in events if e.HasField("run_status_changed")]


def text_of(events) -> str:
    return "".join(e.message_delta.text for e in events if e.HasField("message_delta"))


def assert_numbered(events, start: int = 1) -> None:
    assert [e.sequence for e in events] == list(range(start, start + len(events)))


async def wait_for_status(stub, md, run_id: str, wanted, timeout: float = 30.0) -> apb.Run:
    wanted = set(wanted) if isinstance(wanted, (set, list, tuple)) else {wanted}
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = await stub.GetRun(api.GetRunRequest(run_id=run_id), metadata=md)
        if run.status in wanted:
            return run
        assert asyncio.get_running_loop().time() < deadline, f"run stayed {apb.RunStatus.Name(run.status)}"
        await asyncio.sleep(0.1)
