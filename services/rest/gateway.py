"""The edge's one long-lived gRPC channel to the gateway, and how every call is made on it:
the caller's bearer credential forwarded as `authorization` metadata (the gateway
authenticates, scopes and limits; the edge never does), a deadline on every call, and a
client that goes away cancelling the call it was waiting for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from starlette.requests import Request

from parley.assistants.v1 import assistants_service_pb2_grpc
from parley.files.v1 import files_service_pb2_grpc
from parley.llm.v1 import llm_pb2, llm_service_pb2, llm_service_pb2_grpc
from parley.sessions.v1 import sessions_service_pb2_grpc
from services.rest.errors import ApiError, from_grpc

_FORWARDED = ("traceparent", "tracestate", "x-request-id")


class Gateway:
    def __init__(self, target: str, max_message_bytes: int, timeout: float) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
        ])
        self.timeout = timeout
        self.llm = llm_service_pb2_grpc.LLMServiceStub(self.channel)
        self.files = files_service_pb2_grpc.FileServiceStub(self.channel)
        self.sessions = sessions_service_pb2_grpc.SessionServiceStub(self.channel)
        self.assistants = assistants_service_pb2_grpc.AssistantServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    @staticmethod
    def metadata(request: Request) -> tuple[tuple[str, str], ...]:
        headers = request.headers
        pairs = [(name, headers[name]) for name in _FORWARDED if name in headers]
        credential = headers.get("authorization")
        if credential:
            pairs.append(("authorization", credential))
        return tuple(pairs)

    async def call(self, request: Request, method, message, timeout: float | None = None):
        """A unary call, cancelled if the HTTP client disconnects while it runs."""
        call = method(message, metadata=self.metadata(request), timeout=timeout or self.timeout)
        return await until_disconnect(request, call)

    def stream(self, request: Request, method, message, timeout: float | None = None):
        return method(message, metadata=self.metadata(request), timeout=timeout or self.timeout)

    async def all_models(self, request: Request) -> list[llm_pb2.Model]:
        """Every model the caller may use, all pages of ListModels."""
        models, token = [], ""
        while True:
            page = await self.call(request, self.llm.ListModels,
                                   llm_service_pb2.ListModelsRequest(page_size=100, page_token=token))
            models.extend(page.models)
            token = page.next_page_token
            if not token:
                return models


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, call):
    """Awaits `call`; if the client goes away first, cancels it (the gateway, and from it the
    backend and any vendor request, stop too)."""
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({call, watcher} if isinstance(call, asyncio.Future) else
                                     {asyncio.ensure_future(_await(call)), watcher},
                                     return_when=asyncio.FIRST_COMPLETED)
        result = next(iter(done - {watcher}), None)
        if result is None:
            call.cancel()
            raise ApiError(499, "The client closed the request.")
        return result.result()
    except grpc.aio.AioRpcError as error:
        raise from_grpc(error) from None
    finally:
        watcher.cancel()


async def _await(call):
    return await call


async def first_and_rest(call) -> tuple[object, AsyncIterator]:
    """The first message of a server stream (so that a failure before it becomes an HTTP error
    status) and an iterator over the rest."""
    iterator = call.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = None
    except grpc.aio.AioRpcError as error:
        raise from_grpc(error) from None
    return first, iterator
