"""SandboxService over gRPC: each RPC converts, calls the domain as the verified caller, and
converts back. Errors and identity are handled by the shared interceptors."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from google.protobuf.empty_pb2 import Empty

from parley.sandbox.v1 import sandbox_service_pb2 as api
from parley.sandbox.v1 import sandbox_service_pb2_grpc as api_grpc
from services.runtime import errors
from services.runtime.interceptors import current_identity
from services.sandbox import convert
from services.sandbox.kernel import Stream
from services.sandbox.sandboxes import Sandboxes

CHUNK_BYTES = 1024 * 1024


class SandboxServicer(api_grpc.SandboxServiceServicer):
    def __init__(self, sandboxes: Sandboxes) -> None:
        self._sandboxes = sandboxes

    async def CreateSandbox(self, request, context):
        sandbox = await self._sandboxes.create(
            current_identity().user_id,
            limits=convert.limits_from_proto(request.limits) if request.HasField("limits") else None,
            idle_timeout=convert.duration_seconds(request.idle_timeout, "idle_timeout")
            if request.HasField("idle_timeout") else None,
            metadata=dict(request.metadata), session_id=request.session_id,
        )
        return convert.sandbox_to_proto(sandbox)

    async def GetSandbox(self, request, context):
        sandbox = self._sandboxes.get(current_identity().user_id, request.sandbox_id, allow_expired=True)
        return convert.sandbox_to_proto(sandbox)

    async def DeleteSandbox(self, request, context):
        if request.session_id and not request.sandbox_id:
            await self._sandboxes.delete_for_session(current_identity().user_id, request.session_id)
        else:
            await self._sandboxes.delete(current_identity().user_id, request.sandbox_id)
        return Empty()

    async def ExecuteCode(self, request, context):
        timeout = convert.duration_seconds(request.timeout, "timeout") if request.HasField("timeout") else None
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout or remaining, remaining)
        events = self._sandboxes.execute(current_identity().user_id, request.sandbox_id, request.code,
                                         timeout=timeout, max_inline_file_bytes=request.max_inline_file_bytes)
        async for event in events:
            if isinstance(event, Stream):
                if event.name == "stderr":
                    yield api.ExecuteCodeResponse(stderr=event.text)
                else:
                    yield api.ExecuteCodeResponse(stdout=event.text)
            else:
                yield api.ExecuteCodeResponse(result=convert.result_to_proto(event))

    async def UploadSandboxFile(self, request_iterator, context):
        iterator = request_iterator.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = None
        if first is None or first.WhichOneof("data") != "metadata":
            raise errors.InvalidArgument.for_field("metadata", "the first message must carry the metadata",
                                                   reason="METADATA_MISSING")

        async def chunks() -> AsyncIterator[bytes]:
            async for message in iterator:
                if message.WhichOneof("data") != "chunk":
                    raise errors.InvalidArgument.for_field("metadata", "only the first message may carry metadata",
                                                           reason="METADATA_REPEATED")
                yield message.chunk

        metadata = first.metadata
        file = await self._sandboxes.upload(current_identity().user_id, metadata.sandbox_id, metadata.path, chunks(),
                                            source_file_id=metadata.source_file_id)
        return convert.file_to_proto(file)

    async def ListSandboxFiles(self, request, context):
        if request.page_size < 0 or request.page_size > 1000:
            raise errors.InvalidArgument.for_field("page_size", "must be between 0 and 1000")
        size = request.page_size or 100
        files = await self._sandboxes.list_files(current_identity().user_id, request.sandbox_id, request.directory)
        # Paths are unique and sorted: the token is the last path of the page.
        start = 0
        if request.page_token:
            after = _decode_token(request.page_token)
            start = next((i for i, f in enumerate(files) if f.path > after), len(files))
        page = files[start:start + size]
        more = start + size < len(files)
        return api.ListSandboxFilesResponse(files=[convert.file_to_proto(f) for f in page],
                                            next_page_token=_encode_token(page[-1].path) if more and page else "")

    async def DownloadSandboxFile(self, request, context):
        fd, file = self._sandboxes.open_file(current_identity().user_id, request.sandbox_id, request.path)
        try:
            yield api.DownloadSandboxFileResponse(file=convert.file_to_proto(file))
            offset = 0
            while offset < file.size_bytes:
                chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK_BYTES, file.size_bytes - offset), offset)
                if not chunk:
                    break
                offset += len(chunk)
                yield api.DownloadSandboxFileResponse(chunk=chunk)
        finally:
            os.close(fd)


def _encode_token(path: str) -> str:
    import base64

    return base64.urlsafe_b64encode(path.encode()).decode()


def _decode_token(token: str) -> str:
    import base64
    import binascii

    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise errors.InvalidArgument.for_field("page_token", "is not a token this server issued",
                                               reason="INVALID_PAGE_TOKEN") from None
