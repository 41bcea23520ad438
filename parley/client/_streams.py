"""The helper that iterates token streams (run streams are in _runs.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

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
