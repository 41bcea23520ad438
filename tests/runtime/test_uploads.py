"""The shared metadata-then-chunks split of client-streaming uploads."""

from __future__ import annotations

import pytest

from parley.files.v1 import files_service_pb2 as api
from services.runtime.errors import InvalidArgument
from services.runtime.uploads import metadata_then_chunks


async def _stream(*messages):
    for message in messages:
        yield message


def _meta(name: str = "a.txt") -> api.UploadFileRequest:
    return api.UploadFileRequest(metadata=api.UploadFileMetadata(filename=name))


async def test_metadata_first_then_the_bytes_in_order():
    metadata, chunks = await metadata_then_chunks(_stream(_meta(), api.UploadFileRequest(chunk=b"ab"),
                                                          api.UploadFileRequest(chunk=b"cd")))
    assert metadata.filename == "a.txt"
    assert [c async for c in chunks] == [b"ab", b"cd"]


@pytest.mark.parametrize("messages", [(), (api.UploadFileRequest(chunk=b"x"), _meta())])
async def test_a_stream_without_metadata_first_is_refused(messages):
    with pytest.raises(InvalidArgument) as caught:
        await metadata_then_chunks(_stream(*messages))
    assert caught.value.reason == "METADATA_MISSING"


async def test_metadata_twice_is_refused_when_reached():
    _, chunks = await metadata_then_chunks(_stream(_meta(), api.UploadFileRequest(chunk=b"x"), _meta("b")))
    with pytest.raises(InvalidArgument) as caught:
        [c async for c in chunks]
    assert caught.value.reason == "METADATA_REPEATED"
