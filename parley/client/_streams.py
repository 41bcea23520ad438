"""Helpers that iterate token streams and run streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from parley.assistants.v1 import assistants_pb2, assistants_service_pb2
from parley.llm.v1 import llm_service_pb2


@dataclass
class ToolCallSoFar:
    id: str = ""
    name: str = ""
    arguments: str = ""


class TokenStream:
    """A StreamGenerate call as text: `async for text in stream: ...`, then `stream.finish`
    holds the final event (finish reason, usage, cost, model) and `stream.tool_calls` the
    tool calls assembled from their deltas. `cancel()` stops the call (and the vendor's)."""

    def __init__(self, call) -> None:
        self._call = call
        self.finish: llm_service_pb2.FinishEvent | None = None
        self.tool_calls: dict[int, ToolCallSoFar] = {}

    def __aiter__(self) -> AsyncIterator[str]:
        return self._texts()

    async def events(self) -> AsyncIterator[llm_service_pb2.StreamGenerateResponse]:
        async for event in self._call:
            kind = event.WhichOneof("event")
            if kind == "tool_call_delta":
                delta = event.tool_call_delta
                call = self.tool_calls.setdefault(delta.index, ToolCallSoFar())
                call.id = call.id or delta.id
                call.name = call.name or delta.name
                call.arguments += delta.arguments
            elif kind == "finish":
                self.finish = event.finish
            yield event

    async def _texts(self) -> AsyncIterator[str]:
        async for event in self.events():
            if event.WhichOneof("event") == "text_delta":
                yield event.text_delta.text

    async def text(self) -> str:
        """The whole answer, once the stream has ended."""
        return "".join([piece async for piece in self])

    def cancel(self) -> None:
        self._call.cancel()


class RunStream:
    """The events of a run (StreamRun, SubmitToolOutputs or WatchRun), in order, each once.

    If the connection breaks before the run is done, it resumes with WatchRun after the last
    sequence received (on any gateway replica), up to `resume_attempts` times."""

    def __init__(self, stub, call, *, run_id: str = "", after_sequence: int = 0, resume_attempts: int = 5) -> None:
        self._stub = stub
        self._call = call
        self.run_id = run_id
        self.last_sequence = after_sequence
        self._resume_attempts = resume_attempts
        self.run: assistants_pb2.Run | None = None

    def __aiter__(self) -> AsyncIterator[assistants_pb2.RunEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[assistants_pb2.RunEvent]:
        attempts = 0
        call = self._call
        while True:
            try:
                async for response in call:
                    event = response.event
                    if event.sequence and event.sequence <= self.last_sequence:
                        continue
                    self.last_sequence = event.sequence or self.last_sequence
                    self.run_id = self.run_id or event.run_id
                    if event.WhichOneof("event") == "run_status_changed":
                        self.run = event.run_status_changed
                    yield event
                    if event.WhichOneof("event") == "done":
                        return
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or not self.run_id or attempts >= self._resume_attempts:
                    raise
                attempts += 1
                await asyncio.sleep(min(0.2 * 2 ** attempts, 5.0))
                call = self._stub.WatchRun(assistants_service_pb2.WatchRunRequest(
                    run_id=self.run_id, after_sequence=self.last_sequence))
                self._call = call

    async def text(self) -> str:
        """The text of the messages the run writes, once it is done."""
        parts: list[str] = []
        async for event in self:
            if event.WhichOneof("event") == "message_delta":
                parts.append(event.message_delta.text)
        return "".join(parts)

    def cancel(self) -> None:
        self._call.cancel()
