"""Client-streaming uploads shared by every service that takes files: the first message carries
the metadata, every later one a chunk of bytes (a `oneof data { metadata; chunk }`)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from services.runtime import errors


async def metadata_then_chunks(requests: AsyncIterable[Any], *, oneof: str = "data", metadata: str = "metadata",
                               chunk: str = "chunk") -> tuple[Any, AsyncIterator[bytes]]:
    """(the first message's metadata, the bytes of the messages after it, read as consumed).
    A stream that does not start with metadata, or repeats it, is INVALID_ARGUMENT."""
    iterator = requests.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = None
    if first is None or first.WhichOneof(oneof) != metadata:
        raise errors.InvalidArgument.for_field(metadata, "the first message must carry the metadata",
                                               reason="METADATA_MISSING")

    async def chunks() -> AsyncIterator[bytes]:
        async for message in iterator:
            if message.WhichOneof(oneof) != chunk:
                raise errors.InvalidArgument.for_field(metadata, "only the first message may carry metadata",
                                                       reason="METADATA_REPEATED")
            yield getattr(message, chunk)

    return getattr(first, metadata), chunks()
