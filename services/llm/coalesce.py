"""Write-side coalescing of stream events: deltas that are already waiting when the previous
message has gone out are merged into one message, so a fast upstream costs one gRPC message
per write opportunity instead of one per token, and a slow one is forwarded delta by delta.

Nothing ever waits to be merged, so this adds no latency: the first delta leaves as soon as
it exists. Merging keeps the contract (concatenate the deltas; tool-call deltas of one index
in order; the final event last). The source runs in its own task, bounded by a small queue
(backpressure reaches the vendor connection), and is cancelled with the call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from services.llm.models import TextDelta, ToolCallDelta

_DONE = object()
MAX_MERGED = 256


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def merge(batch: list) -> list:
    out: list = []
    for event in batch:
        last = out[-1] if out else None
        if isinstance(event, TextDelta) and isinstance(last, TextDelta):
            out[-1] = TextDelta(last.text + event.text)
        elif (isinstance(event, ToolCallDelta) and isinstance(last, ToolCallDelta) and event.index == last.index
              and not event.id and not event.name):
            out[-1] = ToolCallDelta(index=last.index, id=last.id, name=last.name,
                                    arguments=last.arguments + event.arguments)
        else:
            out.append(event)
    return out


async def coalesced(source: AsyncIterator, queue_size: int = 64) -> AsyncIterator:
    queue: asyncio.Queue = asyncio.Queue(maxsize=queue_size)

    async def pump() -> None:
        try:
            async for event in source:
                await queue.put(event)
            await queue.put(_DONE)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 - handed to the consumer to raise
            await queue.put(_Failure(error))

    task = asyncio.get_running_loop().create_task(pump())
    try:
        while True:
            item = await queue.get()
            batch = []
            while item is not _DONE and not isinstance(item, _Failure):
                batch.append(item)
                if queue.empty() or len(batch) >= MAX_MERGED:
                    item = None
                    break
                item = queue.get_nowait()
            for event in merge(batch):
                yield event
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
