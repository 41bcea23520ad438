from __future__ import annotations

from google.protobuf import struct_pb2

from parley.llm.v1 import llm_pb2 as pb
from parley.llm.v1 import llm_service_pb2 as api


def user(text: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=pb.ROLE_USER, content=[pb.ContentPart(text=text)])


def system(text: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=pb.ROLE_SYSTEM, content=[pb.ContentPart(text=text)])


def weather_tool(name: str = "get_weather") -> pb.Tool:
    params = struct_pb2.Struct()
    params.update({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    return pb.Tool(function=pb.FunctionDefinition(name=name, description="Current weather in a city", parameters=params))


async def collect(call) -> tuple[str, dict[int, dict], api.FinishEvent | None, list]:
    """(text, tool calls by index, finish event, raw events) of a StreamGenerate call."""
    text, calls, finish, events = [], {}, None, []
    async for event in call:
        events.append(event)
        kind = event.WhichOneof("event")
        if kind == "text_delta":
            text.append(event.text_delta.text)
        elif kind == "tool_call_delta":
            d = event.tool_call_delta
            call_state = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            call_state["id"] = call_state["id"] or d.id
            call_state["name"] = call_state["name"] or d.name
            call_state["arguments"] += d.arguments
        else:
            finish = event.finish
    return "".join(text), calls, finish, events
