"""The services the engine calls, as interfaces the domain owns. `clients` implements them
over gRPC; the domain only sees these methods, protobuf messages and ParleyErrors.

Each call takes `who`: the identity of the run's user (`identity.UserIdentity`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from parley.files.v1 import files_pb2 as fpb
from parley.llm.v1 import llm_pb2 as lpb
from parley.llm.v1 import llm_service_pb2 as lapi
from parley.runstore.v1 import runstore_service_pb2 as rs
from parley.sessions.v1 import sessions_pb2 as spb

Who = Any  # identity.UserIdentity


class RunStorePort(Protocol):
    async def call(self, who: Who, method: str, request: Any) -> Any:
        """A unary RunStoreService call by method name (e.g. "GetRun")."""
        ...

    def watch(self, who: Who, request: rs.WatchRunEventsRequest) -> AsyncIterator[rs.WatchRunEventsResponse]: ...

    async def claim(self, request: rs.ClaimRunsRequest) -> rs.ClaimRunsResponse: ...

    async def renew(self, request: rs.RenewRunLeasesRequest) -> rs.RenewRunLeasesResponse: ...


class SessionsPort(Protocol):
    async def create_session(self, who: Who, title: str, metadata: dict[str, str], assistant_id: str) -> spb.Session: ...

    async def get_session(self, who: Who, session_id: str) -> spb.Session: ...

    async def set_session_metadata(self, who: Who, session: spb.Session, metadata: dict[str, str]) -> spb.Session: ...

    async def create_message(self, who: Who, session_id: str, message: spb.Message) -> spb.Message: ...

    async def delete_session(self, who: Who, session_id: str) -> None: ...

    async def delete_message(self, who: Who, session_id: str, message_id: str) -> None: ...

    async def list_messages(self, who: Who, session_id: str) -> list[spb.Message]:
        """Every message of the session, oldest first."""
        ...


class LLMPort(Protocol):
    async def get_model(self, who: Who, model: str) -> lpb.Model: ...

    async def count_tokens(self, who: Who, model: str, messages: Sequence[lpb.ChatMessage],
                           tools: Sequence[lpb.Tool]) -> int: ...

    def stream(self, who: Who, request: lapi.StreamGenerateRequest) -> AsyncIterator[lapi.StreamGenerateResponse]: ...


class FilesPort(Protocol):
    async def get_vector_store(self, who: Who, vector_store_id: str) -> fpb.VectorStore: ...

    async def create_vector_store(self, who: Who, name: str, file_ids: Sequence[str],
                                  metadata: dict[str, str]) -> fpb.VectorStore: ...

    async def add_vector_store_file(self, who: Who, vector_store_id: str, file_id: str) -> None: ...

    async def get_file(self, who: Who, file_id: str) -> fpb.File: ...

    async def search(self, who: Who, vector_store_ids: Sequence[str], query: str, max_results: int,
                     score_threshold: float | None) -> list[fpb.SearchResult]: ...

    async def download(self, who: Who, file_id: str) -> tuple[str, bytes]: ...

    async def upload(self, who: Who, filename: str, data: bytes, media_type: str) -> str: ...


__all__ = ["FilesPort", "LLMPort", "RunStorePort", "SessionsPort", "Who"]
