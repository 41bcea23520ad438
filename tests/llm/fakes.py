"""Fake vendor servers speaking the vendors' real HTTP wire formats, for the real SDKs.

One `FakeVendor` per vendor flavour ("openai", "anthropic", "mistral") listens on a loopback
port. Behaviour is scripted per model name: `fake.script(model, step, ...)` queues steps
that the next requests for that model consume in order; a model without script gets a
default streamed answer. A step is a dict:

- `{"text": "...", "tool_calls": [(id, name, arguments), ...], "usage": (input, output, cached)}`
- `{"status": 429, "headers": {...}, "error": "message"}` — an HTTP error in the vendor's shape
- `{"hang": True}` — accept the request and answer nothing until the client hangs up
- `{"text": "...", "endless": True}` — stream deltas every 20 ms until the client hangs up
- `{"text": "...", "fail_midway": True}` — (OpenAI) stream the text, then an in-stream error
- `{"text": "...", "hang_after_first": True}` — stream the first chunk of the text, then send
  nothing more until the client hangs up (a vendor stalled mid-answer)
- `{"text": "...", "malformed": True}` — stream the text (none: nothing), then an SSE event
  whose data is not JSON, in the vendor's own framing, and end the response
- `"pace": seconds` in a text step — the pause between text chunks (default PACE), for a
  client that must see an answer arrive piece by piece

`GET /v1/models` lists `fake.models`. Every request body is kept in `fake.requests`, and every client hang-up seen in
`fake.disconnects` (as the model name, with the moment in `fake.disconnect_times`), so tests
can check what the SDKs sent and that a cancelled call closed the vendor connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict, deque

from aiohttp import web

DEFAULT_TEXT = "Hello from the fake vendor."
# Seconds between text chunks, like a model producing tokens (the service merges deltas that
# are already waiting, so an unpaced fake would arrive as one delta).
PACE = 0.01


class _HungUp(Exception):
    """The client closed a stalled request (already recorded)."""


def chunks_of(text: str, size: int = 4) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


class FakeVendor:
    def __init__(self, flavor: str) -> None:
        self.flavor = flavor
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.disconnects: list[str] = []
        self.disconnect_times: dict[str, float] = {}  # model -> time.monotonic() of its last hang-up
        self.disconnected = asyncio.Event()
        self._scripts: dict[str, deque] = defaultdict(deque)
        # What `GET /v1/models` lists (OpenAI and Anthropic flavours), and how often it was asked.
        self.models: list[str] = []
        self.model_list_requests = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- control -------------------------------------------------------------------------

    def script(self, model: str, *steps: dict) -> None:
        self._scripts[model].extend(steps)

    def requests_for(self, model: str) -> list[dict]:
        return [r for r in self.requests if r.get("model") == model]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeVendor:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        if self.flavor == "anthropic":
            app.router.add_post("/v1/messages", self._chat)
        else:
            app.router.add_post("/v1/chat/completions", self._chat)
            app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- handlers ------------------------------------------------------------------------

    def _next_step(self, model: str) -> dict:
        queue = self._scripts.get(model)
        return queue.popleft() if queue else {"text": DEFAULT_TEXT}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        model = body.get("model", "")
        step = self._next_step(model)
        if "status" in step:
            return self._error(step)
        if step.get("hang"):
            await self._wait_for_hangup(request, model)
            return web.Response(status=499)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            writer = {"openai": self._openai_stream, "anthropic": self._anthropic_stream,
                      "mistral": self._mistral_stream}[self.flavor]
            await writer(response, model, self._stalling(request, model, step))
            await response.write_eof()
        except _HungUp:
            pass
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            self._hung_up(model)
        return response

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        model = body.get("model", "")
        step = self._next_step(model)
        if "status" in step:
            return self._error(step)
        inputs = body.get("input") if self.flavor == "openai" else body.get("inputs")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        dims = body.get("dimensions") or 8
        data = [
            {"object": "embedding", "index": i, "embedding": [((len(text) + k) % 7) / 7.0 for k in range(dims)]}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(len(t.split()) for t in inputs)
        reply = {"object": "list", "data": data, "model": model,
                 "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        if self.flavor == "mistral":
            reply["id"] = "emb-1"
        return web.json_response(reply)

    async def _models(self, request: web.Request) -> web.Response:
        """The vendor's model list in its own shape (Anthropic's is paged with after_id)."""
        self.model_list_requests += 1
        if self.flavor == "anthropic":
            after = request.query.get("after_id")
            limit = int(request.query.get("limit", "20"))
            ids = self.models[self.models.index(after) + 1:] if after in self.models else list(self.models)
            page = ids[:limit]
            return web.json_response({
                "data": [{"type": "model", "id": i, "display_name": i, "created_at": "2024-02-29T00:00:00Z"}
                         for i in page],
                "has_more": len(ids) > limit, "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            })
        return web.json_response({"object": "list", "data": [
            {"id": i, "object": "model", "created": 1700000000, "owned_by": "fake"} for i in self.models]})

    def _error(self, step: dict) -> web.Response:
        status = step["status"]
        message = step.get("error", f"fake error {status}")
        if self.flavor == "anthropic":
            kind = {429: "rate_limit_error", 529: "overloaded_error", 400: "invalid_request_error"}.get(status, "api_error")
            body = {"type": "error", "error": {"type": kind, "message": message}}
        elif self.flavor == "mistral":
            body = {"object": "error", "message": message, "type": "invalid_request_error", "code": str(status)}
        else:
            body = {"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error",
                              "code": step.get("code")}}
        return web.json_response(body, status=status, headers=step.get("headers", {}))

    def _hung_up(self, model: str) -> None:
        self.disconnects.append(model)
        self.disconnect_times[model] = time.monotonic()
        self.disconnected.set()

    def _stalling(self, request: web.Request, model: str, step: dict) -> dict:
        """The step, its text cut to the first chunk and a `stall` coroutine added when it
        hangs after the first token."""
        if not step.get("hang_after_first"):
            return step

        async def stall() -> None:
            try:
                await self._wait_for_hangup(request, model)
            except asyncio.CancelledError:  # aiohttp cancels the handler of a closed request
                self._hung_up(model)
            raise _HungUp

        return {**step, "text": chunks_of(step.get("text") or "Hi")[0], "stall": stall}

    @staticmethod
    async def _malformed(response: web.StreamResponse, event: str | None = None) -> None:
        prefix = f"event: {event}\n" if event else ""
        await response.write(f'{prefix}data: {{"choices": [{{"delta": {{"content": "trunc\n\n'.encode())

    async def _wait_for_hangup(self, request: web.Request, model: str) -> None:
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.02)
        self._hung_up(model)

    async def _endless(self, response: web.StreamResponse, send) -> None:
        for _ in range(5000):  # bounded: 100 s at most
            await send("more ")
            await asyncio.sleep(0.02)
        raise ConnectionResetError

    # ---- wire formats ----------------------------------------------------------------------

    @staticmethod
    async def _sse(response: web.StreamResponse, data, event: str | None = None) -> None:
        payload = data if isinstance(data, str) else json.dumps(data)
        prefix = f"event: {event}\n" if event else ""
        await response.write(f"{prefix}data: {payload}\n\n".encode())

    async def _chat_text(self, response: web.StreamResponse, step: dict, send_choice) -> bool:
        """The text part of a chat-completions stream (OpenAI's and Mistral's alike); False when
        the step ends it with a malformed event."""
        await send_choice({"role": "assistant", "content": ""})
        if step.get("endless"):
            await self._endless(response, lambda text: send_choice({"content": text}))
        for piece in chunks_of(step.get("text", "")) if step.get("text") else []:
            await send_choice({"content": piece})
            await asyncio.sleep(step.get("pace", PACE))
        if step.get("stall"):
            await step["stall"]()
        if step.get("malformed"):
            await self._malformed(response)
            return False
        return True

    async def _openai_stream(self, response: web.StreamResponse, model: str, step: dict) -> None:
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": model}

        async def send_choice(delta: dict, finish: str | None = None) -> None:
            await self._sse(response, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                                             "logprobs": None}]})

        if not await self._chat_text(response, step, send_choice):
            return
        if step.get("fail_midway"):
            await self._sse(response, {"error": {"message": "upstream model crashed", "type": "server_error"}})
            return
        calls = step.get("tool_calls") or []
        # Parallel calls: headers first, then argument fragments interleaved between calls.
        for index, (call_id, name, _) in enumerate(calls):
            await send_choice({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                               "function": {"name": name, "arguments": ""}}]})
        fragments = [chunks_of(arguments, 5) for _, _, arguments in calls]
        for position in range(max((len(f) for f in fragments), default=0)):
            for index, pieces in enumerate(fragments):
                if position < len(pieces):
                    await send_choice({"tool_calls": [{"index": index, "function": {"arguments": pieces[position]}}]})
        await send_choice({}, step.get("finish", "tool_calls" if calls else "stop"))
        usage = step.get("usage", (11, 7, 0))
        await self._sse(response, {**base, "choices": [], "usage": {
            "prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[0] + usage[1],
            "prompt_tokens_details": {"cached_tokens": usage[2] if len(usage) > 2 else 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }})
        await self._sse(response, "[DONE]")

    async def _anthropic_stream(self, response: web.StreamResponse, model: str, step: dict) -> None:
        usage = step.get("usage", (11, 7, 0))
        cached = usage[2] if len(usage) > 2 else 0
        await self._sse(response, {"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": usage[0] - cached, "output_tokens": 1, "cache_read_input_tokens": cached,
                      "cache_creation_input_tokens": 0}}}, "message_start")
        index = 0
        if step.get("text") or step.get("endless"):
            await self._sse(response, {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}, "content_block_start")
            await self._sse(response, {"type": "ping"}, "ping")

            async def send_text(text: str) -> None:
                await self._sse(response, {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": text}}, "content_block_delta")

            if step.get("endless"):
                await self._endless(response, send_text)
            for piece in chunks_of(step["text"]):
                await send_text(piece)
                await asyncio.sleep(step.get("pace", PACE))
            if step.get("stall"):
                await step["stall"]()
            if step.get("malformed"):
                await self._malformed(response, "content_block_delta")
                return
            await self._sse(response, {"type": "content_block_stop", "index": 0}, "content_block_stop")
            index = 1
        elif step.get("malformed"):
            await self._malformed(response, "content_block_start")
            return
        for call_id, name, arguments in step.get("tool_calls") or []:
            await self._sse(response, {"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": call_id, "name": name, "input": {}}}, "content_block_start")
            for piece in chunks_of(arguments, 6):
                await self._sse(response, {"type": "content_block_delta", "index": index, "delta": {
                    "type": "input_json_delta", "partial_json": piece}}, "content_block_delta")
            await self._sse(response, {"type": "content_block_stop", "index": index}, "content_block_stop")
            index += 1
        stop = step.get("finish", "tool_use" if step.get("tool_calls") else "end_turn")
        await self._sse(response, {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                   "usage": {"output_tokens": usage[1]}}, "message_delta")
        await self._sse(response, {"type": "message_stop"}, "message_stop")

    async def _mistral_stream(self, response: web.StreamResponse, model: str, step: dict) -> None:
        base = {"id": "cmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": model}

        async def send_choice(delta: dict, finish: str | None = None, usage: dict | None = None) -> None:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage:
                chunk["usage"] = usage
            await self._sse(response, chunk)

        if not await self._chat_text(response, step, send_choice):
            return
        usage = step.get("usage", (11, 7))
        usage_body = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[0] + usage[1]}
        calls = step.get("tool_calls") or []
        if calls:
            # Mistral sends whole calls in one delta, each with index 0.
            await send_choice({"content": "", "tool_calls": [
                {"id": call_id, "type": "function", "index": 0, "function": {"name": name, "arguments": arguments}}
                for call_id, name, arguments in calls
            ]}, "tool_calls", usage_body)
        else:
            await send_choice({"content": ""}, step.get("finish", "stop"), usage_body)
        await self._sse(response, "[DONE]")
