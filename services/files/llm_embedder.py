"""The llm service as the files service sees it: embeddings and model facts, over gRPC (the
`Embedder` the app wires in; the domain knows only `services.files.embeddings`).

Background processing runs long after the upload's call (and its 60-second identity) has
ended, so the files service holds the identity private key and mints a short-lived token
per user for each call it makes to llm; see docs/files.md for the trade-off.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from parley.llm.v1 import llm_pb2, llm_service_pb2, llm_service_pb2_grpc
from services.files.embeddings import BoundedCache, ModelInfo
from services.runtime import errors
from services.runtime.identity import IdentityMinter
from services.runtime.status import error_details, from_rpc_error
from services.runtime.telemetry import client_interceptors

log = logging.getLogger("parley.files.llm")

# The scopes the files service asks for on a user's behalf: embeddings and model facts only.
LLM_SCOPES = ("llm",)


_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.ABORTED}


def _translate(exc: grpc.aio.AioRpcError, what: str) -> errors.ParleyError:
    """An llm failure as the files service's own error (never the raw upstream status)."""
    code, details = exc.code(), exc.details() or ""
    reason = ""
    status = from_rpc_error(exc)
    if status is not None:
        info = error_details(status).get("ErrorInfo")
        reason = getattr(info, "reason", "")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidArgument(f"{what}: {details}", reason=reason or "EMBEDDING_REJECTED")
    if code == grpc.StatusCode.NOT_FOUND:
        return errors.InvalidArgument(f"{what}: {details}", reason=reason or "EMBEDDING_MODEL_UNKNOWN")
    if code in (grpc.StatusCode.RESOURCE_EXHAUSTED,):
        return errors.ResourceExhausted(f"{what}: {details}", reason=reason or "EMBEDDING_LIMITED")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return errors.FailedPrecondition(f"{what}: {details}", reason=reason or "EMBEDDING_UNAVAILABLE")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.DeadlineExceeded(f"{what}: the llm service did not answer in time", reason="EMBEDDING_TIMEOUT")
    return errors.Unavailable(f"{what}: the llm service is unavailable ({code.name})", reason="EMBEDDING_UNAVAILABLE",
                              retry_after=1.0)


class LLMEmbedder:
    """Embedder over the llm service's gRPC API, with a small cache of model facts and of
    query embeddings (embeddings are deterministic)."""

    def __init__(self, target: str, minter: IdentityMinter, *, batch_size: int = 64, retries: int = 3,
                 call_timeout: float = 120.0, query_cache_size: int = 1024, model_cache_size: int = 256) -> None:
        self._channel = grpc.aio.insecure_channel(
            target,
            interceptors=client_interceptors(),
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                     ("grpc.max_send_message_length", 64 * 1024 * 1024)],
        )
        self._stub = llm_service_pb2_grpc.LLMServiceStub(self._channel)
        self._minter = minter
        self.batch_size = batch_size
        self._retries = retries
        self._timeout = call_timeout
        # Keyed by what callers ask for (any model name resolves or fails, and only answers
        # are kept), so both caches are bounded.
        self._models: BoundedCache[str, ModelInfo] = BoundedCache(model_cache_size)
        self._queries: BoundedCache[tuple[str, str], list[float]] = BoundedCache(query_cache_size)

    async def close(self) -> None:
        await self._channel.close()

    def _metadata(self, user_id: str):
        return self._minter.metadata(user_id, LLM_SCOPES)

    async def model_info(self, user_id: str, model: str) -> ModelInfo:
        cached = self._models.get(model)
        if cached is not None:
            return cached
        try:
            reply = await self._stub.GetModel(llm_service_pb2.GetModelRequest(model_id=model),
                                              metadata=self._metadata(user_id), timeout=30.0)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, f"embedding model {model!r}") from None
        if llm_pb2.MODEL_CAPABILITY_EMBEDDINGS not in reply.capabilities or reply.embedding_dimensions <= 0:
            raise errors.InvalidArgument.for_field("embedding_model", f"{reply.id} is not an embedding model",
                                                   reason="NOT_AN_EMBEDDING_MODEL")
        info = ModelInfo(id=reply.id, dimensions=reply.embedding_dimensions, window=int(reply.context_window))
        self._models.put(model, info)
        self._models.put(reply.id, info)
        return info

    def cached_query(self, model: str, text: str) -> list[float] | None:
        return self._queries.get((model, text))

    async def embed(self, user_id: str, model: str, texts: list[str], *, interactive: bool = False,
                    timeout: float | None = None) -> list[list[float]]:
        """Vectors for `texts`, in order, in batches. Inputs that would not fit the model's
        window fail (truncate is off): chunks are sized so that this never happens."""
        if interactive and len(texts) == 1:
            cached = self.cached_query(model, texts[0])
            if cached is not None:
                return [cached]
        vectors: list[list[float]] = []
        for begin in range(0, len(texts), self.batch_size):
            batch = texts[begin:begin + self.batch_size]
            request = llm_service_pb2.EmbedRequest(
                model=model, inputs=batch, truncate=False,
                priority=llm_pb2.PRIORITY_HIGH if interactive else llm_pb2.PRIORITY_LOW,
                metadata={"caller": "files"},
            )
            reply = await self._call_embed(user_id, request, timeout)
            if len(reply.embeddings) != len(batch):
                raise errors.Internal("the llm service returned a wrong number of embeddings", reason="EMBEDDING_MISMATCH")
            vectors.extend(list(e.values) for e in reply.embeddings)
        if interactive and len(texts) == 1:
            self._queries.put((model, texts[0]), vectors[0])
        return vectors

    async def _call_embed(self, user_id: str, request, timeout: float | None):
        delay = 0.5
        for attempt in range(self._retries + 1):
            try:
                return await self._stub.Embed(request, metadata=self._metadata(user_id),
                                              timeout=timeout if timeout is not None else self._timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE or attempt == self._retries or timeout is not None:
                    raise _translate(exc, "embedding failed") from None
                log.warning("Embed failed with %s; retrying in %.1fs", exc.code().name, delay)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")
