"""`ParleyClient`: typed async methods over one gateway channel."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from parley.client._admin import Admin
from parley.client._assistants import Assistants
from parley.client._channel import open_channel
from parley.client._config import resolve_api_key, resolve_target
from parley.client._streams import TokenStream
from parley.files.v1 import files_pb2
from parley.files.v1 import files_service_pb2 as files_api
from parley.files.v1 import files_service_pb2_grpc as files_grpc
from parley.gateway.v1 import gateway_pb2
from parley.gateway.v1 import gateway_service_pb2 as keys_api
from parley.gateway.v1 import gateway_service_pb2_grpc as keys_grpc
from parley.llm.v1 import llm_pb2
from parley.llm.v1 import llm_service_pb2 as llm_api
from parley.llm.v1 import llm_service_pb2_grpc as llm_grpc
from parley.sessions.v1 import sessions_pb2
from parley.sessions.v1 import sessions_service_pb2 as sessions_api
from parley.sessions.v1 import sessions_service_pb2_grpc as sessions_grpc

UPLOAD_CHUNK_BYTES = 1024 * 1024
Prompt = str | Sequence[llm_pb2.ChatMessage]
SCOPES = {"llm": gateway_pb2.SCOPE_LLM, "sessions": gateway_pb2.SCOPE_SESSIONS, "files": gateway_pb2.SCOPE_FILES,
          "assistants": gateway_pb2.SCOPE_ASSISTANTS, "admin": gateway_pb2.SCOPE_ADMIN}


def user_message(text: str) -> llm_pb2.ChatMessage:
    return llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text=text)])


def system_message(text: str) -> llm_pb2.ChatMessage:
    return llm_pb2.ChatMessage(role=llm_pb2.ROLE_SYSTEM, content=[llm_pb2.ContentPart(text=text)])


def _messages(prompt: Prompt, system: str | None) -> list[llm_pb2.ChatMessage]:
    messages = [user_message(prompt)] if isinstance(prompt, str) else list(prompt)
    return ([system_message(system)] if system else []) + messages


class LLM:
    def __init__(self, channel, timeout: float | None) -> None:
        self.stub = llm_grpc.LLMServiceStub(channel)
        self._timeout = timeout

    async def generate(self, prompt: Prompt, *, model: str = "", system: str | None = None,
                       timeout: float | None = None, **options) -> llm_api.GenerateResponse:
        request = llm_api.GenerateRequest(model=model, messages=_messages(prompt, system), **options)
        return await self.stub.Generate(request, timeout=timeout or self._timeout)

    def stream(self, prompt: Prompt, *, model: str = "", system: str | None = None, timeout: float | None = None,
               **options) -> TokenStream:
        """`async for text in client.llm.stream("hi", model="local/echo")`; see TokenStream."""
        request = llm_api.StreamGenerateRequest(model=model, messages=_messages(prompt, system), **options)
        return TokenStream(self.stub.StreamGenerate(request, timeout=timeout))

    async def embed(self, inputs: Sequence[str], *, model: str = "", **options) -> llm_api.EmbedResponse:
        return await self.stub.Embed(llm_api.EmbedRequest(model=model, inputs=list(inputs), **options),
                                     timeout=self._timeout)

    async def list_models(self, *, provider: str = "", include_unconfigured: bool = False) -> list[llm_pb2.Model]:
        models, token = [], ""
        while True:
            page = await self.stub.ListModels(llm_api.ListModelsRequest(
                provider=provider, include_unconfigured=include_unconfigured, page_token=token, page_size=1000),
                timeout=self._timeout)
            models.extend(page.models)
            token = page.next_page_token
            if not token:
                return models

    async def count_tokens(self, text: str, *, model: str = "") -> int:
        reply = await self.stub.CountTokens(llm_api.CountTokensRequest(model=model, text=text), timeout=self._timeout)
        return reply.token_count

    async def get_usage(self, *, start: datetime | None = None, end: datetime | None = None,
                        group_by: Iterable[int] = (), models: Iterable[str] = ()) -> llm_api.GetUsageResponse:
        request = llm_api.GetUsageRequest(group_by=list(group_by), models=list(models), page_size=1000)
        if start:
            request.start_time.FromDatetime(start)
        if end:
            request.end_time.FromDatetime(end)
        return await self.stub.GetUsage(request, timeout=self._timeout)


class Sessions:
    def __init__(self, channel, timeout: float | None) -> None:
        self.stub = sessions_grpc.SessionServiceStub(channel)
        self._timeout = timeout

    async def create(self, title: str = "", *, metadata: dict[str, str] | None = None,
                     assistant_id: str = "") -> sessions_pb2.Session:
        return await self.stub.CreateSession(sessions_api.CreateSessionRequest(
            title=title, metadata=metadata or {}, assistant_id=assistant_id), timeout=self._timeout)

    async def get(self, session_id: str) -> sessions_pb2.Session:
        return await self.stub.GetSession(sessions_api.GetSessionRequest(session_id=session_id), timeout=self._timeout)

    async def list(self, *, page_size: int = 20, page_token: str = "",
                   title_contains: str = "") -> sessions_api.ListSessionsResponse:
        return await self.stub.ListSessions(sessions_api.ListSessionsRequest(
            page_size=page_size, page_token=page_token, title_contains=title_contains), timeout=self._timeout)

    async def delete(self, session_id: str) -> None:
        await self.stub.DeleteSession(sessions_api.DeleteSessionRequest(session_id=session_id), timeout=self._timeout)

    async def add_message(self, session_id: str, text: str, *,
                          role: int = sessions_pb2.ROLE_USER) -> sessions_pb2.Message:
        return await self.stub.CreateMessage(sessions_api.CreateMessageRequest(
            session_id=session_id, role=role, content=[sessions_pb2.ContentPart(text=text)]), timeout=self._timeout)

    async def messages(self, session_id: str, *, page_size: int = 100) -> AsyncIterator[sessions_pb2.Message]:
        token = ""
        while True:
            page = await self.stub.ListMessages(sessions_api.ListMessagesRequest(
                session_id=session_id, page_size=page_size, page_token=token), timeout=self._timeout)
            for message in page.messages:
                yield message
            token = page.next_page_token
            if not token:
                return

    async def export(self, session_id: str, *, markdown: bool = False) -> bytes:
        fmt = sessions_api.EXPORT_FORMAT_MARKDOWN if markdown else sessions_api.EXPORT_FORMAT_JSON
        chunks = [c.data async for c in self.stub.ExportSession(
            sessions_api.ExportSessionRequest(session_id=session_id, format=fmt))]
        return b"".join(chunks)


class Files:
    def __init__(self, channel, timeout: float | None) -> None:
        self.stub = files_grpc.FileServiceStub(channel)
        self._timeout = timeout

    async def upload(self, path: str | os.PathLike, *, purpose: int = files_pb2.FILE_PURPOSE_ASSISTANTS,
                     media_type: str = "", progress: Callable[[int, int], None] | None = None,
                     timeout: float | None = None) -> files_pb2.File:
        """Streams the file in 1 MiB chunks; `progress(sent, total)` after each."""
        path = Path(path)
        total = path.stat().st_size

        async def requests():
            yield files_api.UploadFileRequest(metadata=files_api.UploadFileMetadata(
                filename=path.name, media_type=media_type, purpose=purpose, size_bytes=total))
            sent = 0
            with path.open("rb") as source:
                while chunk := source.read(UPLOAD_CHUNK_BYTES):
                    sent += len(chunk)
                    yield files_api.UploadFileRequest(chunk=chunk)
                    if progress:
                        progress(sent, total)

        return await self.stub.UploadFile(requests(), timeout=timeout)

    async def list(self, *, page_size: int = 20, page_token: str = "") -> files_api.ListFilesResponse:
        return await self.stub.ListFiles(files_api.ListFilesRequest(page_size=page_size, page_token=page_token),
                                         timeout=self._timeout)

    async def delete(self, file_id: str) -> None:
        await self.stub.DeleteFile(files_api.DeleteFileRequest(file_id=file_id), timeout=self._timeout)


class ApiKeys:
    def __init__(self, channel, timeout: float | None) -> None:
        self.stub = keys_grpc.ApiKeyServiceStub(channel)
        self._timeout = timeout

    async def create(self, name: str, scopes: Iterable[str], *, ttl: timedelta | None = None,
                     expire_time: datetime | None = None, requests_per_minute: int = 0, concurrent_streams: int = 0,
                     tokens_per_minute: int = 0, redact_prompt_pii: bool = False) -> keys_api.CreateApiKeyResponse:
        request = keys_api.CreateApiKeyRequest(
            name=name, scopes=[SCOPES[s] for s in scopes], redact_prompt_pii=redact_prompt_pii,
            rate_limits=gateway_pb2.RateLimits(requests_per_minute=requests_per_minute,
                                               concurrent_streams=concurrent_streams,
                                               tokens_per_minute=tokens_per_minute))
        if ttl is not None:
            request.ttl.FromTimedelta(ttl)
        elif expire_time is not None:
            stamp = Timestamp()
            stamp.FromDatetime(expire_time)
            request.expire_time.CopyFrom(stamp)
        return await self.stub.CreateApiKey(request, timeout=self._timeout)

    async def list(self, *, state: int = 0) -> list[gateway_pb2.ApiKey]:
        keys, token = [], ""
        while True:
            page = await self.stub.ListApiKeys(keys_api.ListApiKeysRequest(state=state, page_size=100,
                                                                           page_token=token), timeout=self._timeout)
            keys.extend(page.api_keys)
            token = page.next_page_token
            if not token:
                return keys

    async def revoke(self, key_id: str) -> gateway_pb2.ApiKey:
        return await self.stub.RevokeApiKey(keys_api.RevokeApiKeyRequest(api_key_id=key_id), timeout=self._timeout)

    async def rotate(self, key_id: str, *, grace: timedelta | None = None) -> keys_api.RotateApiKeyResponse:
        request = keys_api.RotateApiKeyRequest(api_key_id=key_id)
        if grace is not None:
            request.grace_period.CopyFrom(Duration(seconds=int(grace.total_seconds())))
        return await self.stub.RotateApiKey(request, timeout=self._timeout)


class ParleyClient:
    """An async client of a Parley gateway.

        async with ParleyClient() as parley:            # PARLEY_TARGET, PARLEY_API_KEY
            async for text in parley.llm.stream("Hello", model="local/echo"):
                print(text, end="")

    `target` and `api_key` default to `PARLEY_TARGET` (127.0.0.1:50051) and `PARLEY_API_KEY`
    (or the development key in `.parley/dev-api-key`). Idempotent calls are retried on
    UNAVAILABLE by the channel itself. The generated stubs are there too: `parley.llm.stub`.
    """

    def __init__(self, target: str | None = None, api_key: str | None = None, *, tls: bool = False,
                 root_certificates: bytes | None = None, timeout: float | None = 60.0, retries: bool = True) -> None:
        self.target = resolve_target(target)
        self.channel = open_channel(self.target, resolve_api_key(api_key), tls=tls,
                                    root_certificates=root_certificates, retries=retries)
        self.llm = LLM(self.channel, timeout)
        self.sessions = Sessions(self.channel, timeout)
        self.files = Files(self.channel, timeout)
        self.keys = ApiKeys(self.channel, timeout)
        self.assistants = Assistants(self.channel, timeout)
        self.admin = Admin(self.channel, timeout)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> ParleyClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
