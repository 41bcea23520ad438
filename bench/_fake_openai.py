"""A fake OpenAI-compatible upstream for the benchmarks: `python -m bench._fake_openai PORT`.

Streams chat completions as fast as it can, in OpenAI's wire format (chunks, then a usage
chunk from `stream_options.include_usage`, then `[DONE]`). The model name says how many
tokens to stream: "fake-200" streams 200 one-word deltas; "fake-200-p5" waits 5 ms between
them (a paced model, for measuring live tails). A request that offers tools and does not end
with a tool's result is answered with one call of its first tool (a run then waits for the
caller's tool outputs); with the result, the model streams its text as usual.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys

from aiohttp import web

_BASE = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000}


def _chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    body = {**_BASE, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


_cache: dict[str, list[bytes]] = {}


def _pace(model: str) -> float:
    last = model.rsplit("-", 1)[-1]
    return int(last[1:]) / 1000 if last.startswith("p") and last[1:].isdigit() else 0.0


def _stream(model: str) -> list[bytes]:
    if model not in _cache:
        name = model.rsplit("-", 1)[0] if _pace(model) else model
        tokens = int(name.rsplit("-", 1)[-1])
        parts = [_chunk(model, {"role": "assistant", "content": ""})]
        parts += [_chunk(model, {"content": f"tok{i} "}) for i in range(tokens)]
        parts.append(_chunk(model, {}, "stop"))
        usage = {**_BASE, "model": model, "choices": [],
                 "usage": {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}}
        parts.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
        parts.append(b"data: [DONE]\n\n")
        _cache[model] = parts
    return _cache[model]


_call_ids = itertools.count(1)


def _tool_call(model: str, function: str) -> list[bytes]:
    call = {"index": 0, "id": f"call_{next(_call_ids)}", "type": "function",
            "function": {"name": function, "arguments": ""}}
    usage = {**_BASE, "model": model, "choices": [],
             "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}}
    return [_chunk(model, {"role": "assistant", "content": None, "tool_calls": [call]}),
            _chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": '{"order": "A-1"}'}}]}),
            _chunk(model, {}, "tool_calls"),
            b"data: " + json.dumps(usage).encode() + b"\n\n",
            b"data: [DONE]\n\n"]


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    pace = _pace(body["model"])
    tools, messages = body.get("tools"), body.get("messages") or [{}]
    if tools and messages[-1].get("role") != "tool":
        parts = _tool_call(body["model"], tools[0]["function"]["name"])
    else:
        parts = _stream(body["model"])
    try:
        for part in parts:
            await response.write(part)
            if pace:
                await asyncio.sleep(pace)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the caller hung up mid-stream (a cancelled run, a benchmark's live tail): expected here
    return response


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
