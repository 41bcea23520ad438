"""Runtime benchmark: what the shared request check (services/runtime/request_check.py) costs
per request, against protobuf's own parsing of the same request bytes measured in the same
run (every request is parsed once anyway). Server-streaming responses pay nothing per
message: the check runs once, before the servicer's generator is handed back unwrapped.
Run with `python -m bench.runtime_request_check`."""

from __future__ import annotations

import timeit

from google.protobuf import struct_pb2

from parley.files.v1 import files_service_pb2 as files_api
from parley.llm.v1 import llm_pb2
from parley.llm.v1 import llm_service_pb2 as llm_api
from services.runtime.request_check import check_request


def _user(text: str) -> llm_pb2.ChatMessage:
    return llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text=text)])


def _tool(i: int) -> llm_pb2.Tool:
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {f"p{j}": {"type": "number", "minimum": 0, "maximum": 10}
                                                    for j in range(5)}})
    return llm_pb2.Tool(function=llm_pb2.FunctionDefinition(name=f"f{i}", parameters=schema))


CASES = {
    "StreamGenerate, 1 message": llm_api.StreamGenerateRequest(model="openai/gpt-4o-mini", messages=[_user("hi")]),
    "StreamGenerate, 10 messages + 3 tools": llm_api.StreamGenerateRequest(
        model="openai/gpt-4o-mini", messages=[_user("hello " * 50) for _ in range(10)],
        tools=[_tool(i) for i in range(3)], temperature=0.5),
    "StreamGenerate, one 32 MiB prompt": llm_api.StreamGenerateRequest(model="m", messages=[_user("x" * (32 << 20))]),
    "StreamGenerate, 1000 messages": llm_api.StreamGenerateRequest(model="m", messages=[_user("hi")] * 1000),
    "UploadFile chunk, 1 MiB": files_api.UploadFileRequest(chunk=b"\0" * (1 << 20)),
}


def _best(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def main() -> None:
    print("| request | check | parse (baseline) | check / parse |")
    print("| --- | --- | --- | --- |")
    for name, request in CASES.items():
        data = request.SerializeToString()
        parse_cls = type(request)
        number = 20 if len(data) > 1 << 20 else 200
        parse = _best(lambda: parse_cls.FromString(data), number)
        check = _best(lambda: check_request(request), number)
        print(f"| {name} | {check * 1e6:.1f} µs | {parse * 1e6:.1f} µs | {check / parse:.2f}x |")


if __name__ == "__main__":
    main()
