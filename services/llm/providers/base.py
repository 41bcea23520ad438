"""The one interface every provider implements, and the one error type they raise.

A provider translates the provider-neutral request into its vendor's format and the vendor's
stream back into `StreamEvent`s, in one place per vendor. It never retries (SDK retries are
off too): the service's retry loop decides, from `ProviderError.retryable` and
`retry_after`, whether and when to try again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from services.llm.models import ChatRequest, StreamEvent


@dataclass
class EmbeddingBatch:
    vectors: list[list[float]]
    input_tokens: int


class ProviderError(Exception):
    """A vendor call failed. `kind` is one of: rate_limited, overloaded, server, connection,
    timeout (retryable), bad_request, too_large, auth, not_found (not retryable).
    `message` is safe to show callers: no keys, no prompt text."""

    RETRYABLE = frozenset({"rate_limited", "overloaded", "server", "connection", "timeout"})

    def __init__(self, kind: str, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in self.RETRYABLE

    def __str__(self) -> str:
        return self.message


class LLMProvider(Protocol):
    """generate (via stream), stream and embed for one vendor."""

    name: str

    def stream(self, model: str, request: ChatRequest, *, max_tokens: int, timeout: float | None) -> AsyncIterator[StreamEvent]:
        """The answer as events, ending with one ProviderFinish. Raises ProviderError. Closing
        the iterator (or cancelling the task consuming it) closes the vendor request."""
        ...

    async def embed(self, model: str, inputs: list[str], *, dimensions: int | None, truncate: bool,
                    timeout: float | None) -> EmbeddingBatch:
        ...

    async def aclose(self) -> None: ...


async def first_model_ids(pages, limit: int) -> list[str]:
    """The ids of the first `limit` models of an SDK's (auto-paging) model list."""
    found: list[str] = []
    async for model in pages:
        found.append(model.id)
        if len(found) >= limit:
            break
    return found


def parse_retry_after(headers) -> float | None:
    """Seconds from Retry-After (seconds or HTTP date) or retry-after-ms, if present."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms:
            return max(float(ms) / 1000.0, 0.0)
        value = headers.get("retry-after")
    except Exception:  # noqa: BLE001 - headers of unknown shape
        return None
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    from datetime import datetime, timezone

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def malformed_stream() -> ProviderError:
    """A response the vendor sent whole but that is not its wire format (an SSE event whose data
    is not JSON, or JSON of the wrong shape): the vendor's fault, and worth another attempt."""
    return ProviderError("server", "the provider sent a malformed stream chunk")


def kind_for_status(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status == 529 or status == 503:
        return "overloaded"
    if status >= 500 or status == 408:
        return "server" if status != 408 else "timeout"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 413:
        return "too_large"
    return "bad_request"
