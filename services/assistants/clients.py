"""The engine's gRPC clients of sessions (SessionService, RunStoreService), llm and files:
the implementations of `ports`, and the only engine modules besides the servicer that import
grpc. A backend's failure comes back as the ParleyError of the same code, reason, metadata
and field violations, so callers see the real cause (another user's session is NOT_FOUND
here as there), never a raw upstream status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from parley.files.v1 import files_pb2 as fpb
from parley.files.v1 import files_service_pb2 as fapi
from parley.files.v1 import files_service_pb2_grpc as fgrpc
from parley.llm.v1 import llm_pb2 as lpb
from parley.llm.v1 import llm_service_pb2 as lapi
from parley.llm.v1 import llm_service_pb2_grpc as lgrpc
from parley.runstore.v1 import runstore_service_pb2 as rs
from parley.runstore.v1 import runstore_service_pb2_grpc as rsgrpc
from parley.sessions.v1 import sessions_pb2 as spb
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from services.assistants.identity import MintedIdentities
from services.runtime import errors
from services.runtime.errors import FieldViolation
from services.runtime.status import error_details, from_rpc_error
from services.runtime.telemetry import client_interceptors

_ERRORS: dict[grpc.StatusCode, type[errors.ParleyError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ABORTED: errors.Aborted,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
}
MiB = 1024 * 1024
CALL_TIMEOUT = 30.0


def translate(exc: grpc.aio.AioRpcError, service: str) -> errors.ParleyError:
    code = exc.code()
    reason, metadata, violations, retry_after = "", {}, [], None
    status = from_rpc_error(exc)
    if status is not None:
        details = error_details(status)
        info = details.get("ErrorInfo")
        if info is not None:
            reason, metadata = info.reason, dict(info.metadata)
        bad = details.get("BadRequest")
        if bad is not None:
            violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
        retry = details.get("RetryInfo")
        if retry is not None:
            retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    cls = _ERRORS.get(code)
    message = exc.details() or code.name
    if cls is None:  # unavailable, internal, unknown, cancelled: the backend is the problem
        return errors.Unavailable(f"the {service} service is unavailable ({code.name})",
                                  reason=f"{service.upper()}_UNAVAILABLE", retry_after=1.0)
    return cls(message, reason=reason or code.name, field_violations=violations, metadata=metadata,
               retry_after=retry_after)


def _channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target, interceptors=client_interceptors(),
        options=[("grpc.max_receive_message_length", 64 * MiB), ("grpc.max_send_message_length", 64 * MiB),
                 ("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_permit_without_calls", 1)],
    )


class RunStoreClient:
    def __init__(self, target: str, identities: MintedIdentities) -> None:
        self._channel = _channel(target)
        self._stub = rsgrpc.RunStoreServiceStub(self._channel)
        self._identities = identities

    async def close(self) -> None:
        await self._channel.close()

    async def call(self, who, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(request, metadata=who.metadata(), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "sessions") from None

    async def watch(self, who, request: rs.WatchRunEventsRequest) -> AsyncIterator[rs.WatchRunEventsResponse]:
        call = self._stub.WatchRunEvents(request, metadata=who.metadata())
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "sessions") from None
        finally:
            call.cancel()

    async def claim(self, request: rs.ClaimRunsRequest) -> rs.ClaimRunsResponse:
        try:
            return await self._stub.ClaimRuns(request, metadata=self._identities.engine(), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "sessions") from None

    async def renew(self, request: rs.RenewRunLeasesRequest) -> rs.RenewRunLeasesResponse:
        try:
            return await self._stub.RenewRunLeases(request, metadata=self._identities.engine(), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "sessions") from None


class SessionsClient:
    def __init__(self, target: str) -> None:
        self._channel = _channel(target)
        self._stub = sgrpc.SessionServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: str, request, who):
        try:
            return await getattr(self._stub, method)(request, metadata=who.metadata(), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "sessions") from None

    async def create_session(self, who, title: str, metadata: dict[str, str], assistant_id: str) -> spb.Session:
        return await self._call("CreateSession", sapi.CreateSessionRequest(
            title=title, metadata=metadata, assistant_id=assistant_id), who)

    async def get_session(self, who, session_id: str) -> spb.Session:
        return await self._call("GetSession", sapi.GetSessionRequest(session_id=session_id), who)

    async def set_session_metadata(self, who, session: spb.Session, metadata: dict[str, str]) -> spb.Session:
        return await self._call("UpdateSession", sapi.UpdateSessionRequest(
            session=spb.Session(id=session.id, metadata=metadata), update_mask=FieldMask(paths=["metadata"])), who)

    async def delete_session(self, who, session_id: str) -> None:
        await self._call("DeleteSession", sapi.DeleteSessionRequest(session_id=session_id), who)

    async def delete_message(self, who, session_id: str, message_id: str) -> None:
        await self._call("DeleteMessage", sapi.DeleteMessageRequest(session_id=session_id, message_id=message_id), who)

    async def create_message(self, who, session_id: str, message: spb.Message) -> spb.Message:
        return await self._call("CreateMessage", sapi.CreateMessageRequest(
            session_id=session_id, role=message.role, content=message.content, attachments=message.attachments,
            tool_calls=message.tool_calls, tool_call_id=message.tool_call_id, metadata=message.metadata,
            assistant_id=message.assistant_id, run_id=message.run_id), who)

    async def list_messages(self, who, session_id: str) -> list[spb.Message]:
        messages: list[spb.Message] = []
        token = ""
        while True:
            page = await self._call("ListMessages", sapi.ListMessagesRequest(
                session_id=session_id, page_size=100, page_token=token, order=sapi.SORT_ORDER_ASCENDING), who)
            messages.extend(page.messages)
            token = page.next_page_token
            if not token:
                return messages


class LLMClient:
    def __init__(self, target: str) -> None:
        self._channel = _channel(target)
        self._stub = lgrpc.LLMServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def get_model(self, who, model: str) -> lpb.Model:
        try:
            return await self._stub.GetModel(lapi.GetModelRequest(model_id=model), metadata=who.metadata(),
                                             timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "llm") from None

    async def count_tokens(self, who, model: str, messages: Sequence[lpb.ChatMessage], tools: Sequence[lpb.Tool]) -> int:
        try:
            reply = await self._stub.CountTokens(lapi.CountTokensRequest(model=model, messages=messages, tools=tools),
                                                 metadata=who.metadata(), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "llm") from None
        return int(reply.token_count)

    async def stream(self, who, request: lapi.StreamGenerateRequest) -> AsyncIterator[lapi.StreamGenerateResponse]:
        # Cancelling the consumer cancels this call, and the llm service closes the vendor's.
        call = self._stub.StreamGenerate(request, metadata=who.metadata())
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "llm") from None
        finally:
            call.cancel()


class FilesClient:
    def __init__(self, target: str) -> None:
        self._channel = _channel(target)
        self._stub = fgrpc.FileServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: str, request, who, timeout: float = CALL_TIMEOUT):
        try:
            return await getattr(self._stub, method)(request, metadata=who.metadata(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "files") from None

    async def get_vector_store(self, who, vector_store_id: str) -> fpb.VectorStore:
        return await self._call("GetVectorStore", fapi.GetVectorStoreRequest(vector_store_id=vector_store_id), who)

    async def create_vector_store(self, who, name: str, file_ids: Sequence[str], metadata: dict[str, str]) -> fpb.VectorStore:
        return await self._call("CreateVectorStore", fapi.CreateVectorStoreRequest(
            name=name, file_ids=list(file_ids), metadata=metadata), who, timeout=120.0)

    async def add_vector_store_file(self, who, vector_store_id: str, file_id: str) -> None:
        await self._call("AddVectorStoreFile", fapi.AddVectorStoreFileRequest(
            vector_store_id=vector_store_id, file_id=file_id), who, timeout=120.0)

    async def get_file(self, who, file_id: str) -> fpb.File:
        return await self._call("GetFile", fapi.GetFileRequest(file_id=file_id), who)

    async def search(self, who, vector_store_ids: Sequence[str], query: str, max_results: int,
                     score_threshold: float | None) -> list[fpb.SearchResult]:
        request = fapi.SearchVectorStoreRequest(vector_store_ids=list(vector_store_ids), query=query,
                                                max_num_results=max_results)
        if score_threshold is not None:
            request.score_threshold = score_threshold
        reply = await self._call("SearchVectorStore", request, who, timeout=60.0)
        return list(reply.results)

    async def download(self, who, file_id: str) -> tuple[str, bytes]:
        call = self._stub.DownloadFile(fapi.DownloadFileRequest(file_id=file_id), metadata=who.metadata(),
                                       timeout=120.0)
        filename, parts = "", []
        try:
            async for response in call:
                if response.HasField("file"):
                    filename = response.file.filename
                else:
                    parts.append(response.chunk)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "files") from None
        return filename, b"".join(parts)

    async def upload(self, who, filename: str, data: bytes, media_type: str) -> str:
        async def requests():
            yield fapi.UploadFileRequest(metadata=fapi.UploadFileMetadata(
                filename=filename, media_type=media_type, purpose=fpb.FILE_PURPOSE_ASSISTANTS_OUTPUT,
                size_bytes=len(data)))
            for begin in range(0, len(data), MiB):
                yield fapi.UploadFileRequest(chunk=data[begin:begin + MiB])
                await asyncio.sleep(0)

        try:
            reply = await self._stub.UploadFile(requests(), metadata=who.metadata(), timeout=120.0)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "files") from None
        return reply.id
