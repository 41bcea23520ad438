"""The run's user, as the engine calls other services.

A run outlives the call that started it (and that call's 60-second identity), so the engine
holds the identity signing key and mints a short-lived identity of the run's user for its
own calls, as the files service does for embeddings. Trade-off (docs/assistants.md): the
engine can act as any user, so it is as trusted as the gateway; in exchange a run needs no
long-lived credential of the user and every backend keeps checking one identity format
under row-level security.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from services.runtime.identity import IdentityMinter

# What a run may do as its user: read and write its session, call models, search and store
# files. Never admin, never key management.
RUN_SCOPES = ("sessions", "llm", "files", "assistants")
# The engine's own identity for the queue calls that work across users.
ENGINE_USER = "parley-assistants-engine"
ENGINE_SCOPE = "assistants.engine"


class UserIdentity:
    def __init__(self, source: MintedIdentities, user_id: str) -> None:
        self._source = source
        self._user_id = user_id

    @property
    def user_id(self) -> str:
        return self._user_id

    def metadata(self, scopes: Sequence[str] = RUN_SCOPES) -> tuple[tuple[str, str], ...]:
        return self._source.metadata(self._user_id, tuple(scopes))


class MintedIdentities:
    """Mints identities, reusing each for half its lifetime (a signature per call would cost
    more than many calls)."""

    def __init__(self, minter: IdentityMinter, ttl_seconds: float, cache_size: int = 4096) -> None:
        self._minter = minter
        self._reuse = ttl_seconds / 2
        self._cache: OrderedDict[tuple[str, tuple[str, ...]], tuple[tuple[tuple[str, str], ...], float]] = OrderedDict()
        self._cache_size = cache_size

    def for_user(self, user_id: str) -> UserIdentity:
        return UserIdentity(self, user_id)

    def metadata(self, user_id: str, scopes: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        key = (user_id, scopes)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        metadata = self._minter.metadata(user_id, scopes)
        self._cache[key] = (metadata, now + self._reuse)
        self._cache.move_to_end(key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return metadata

    def engine(self) -> tuple[tuple[str, str], ...]:
        return self.metadata(ENGINE_USER, (ENGINE_SCOPE,))
