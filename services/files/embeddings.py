"""Embeddings as the files domain sees them: the `Embedder` interface, the facts it needs about
a model, and the bounded caches an embedder keeps. No transport here: the implementation over
the llm service's gRPC API is `services.files.llm_embedder.LLMEmbedder`, wired in by the app,
and tests or other deployments may hand in any other `Embedder`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


@dataclass(frozen=True)
class ModelInfo:
    id: str
    dimensions: int
    # Tokens one input may have (the model's context window).
    window: int


class Embedder(Protocol):
    async def model_info(self, user_id: str, model: str) -> ModelInfo: ...

    async def embed(self, user_id: str, model: str, texts: list[str], *, interactive: bool = False,
                    timeout: float | None = None) -> list[list[float]]: ...


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """Least-recently-used, at most `max_entries`: callers choose the keys (any model name, any
    query text), so nothing they send may grow memory without limit."""

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[K, V] = OrderedDict()
        self.max_entries = max_entries

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
