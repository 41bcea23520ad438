"""OpenAI-style ids, mapped reversibly onto Parley's UUIDs: prefix + the UUID's 32 hex digits.

A malformed id (wrong prefix, not hex) answers 404 like an id that does not exist — which is
what OpenAI answers for an unknown id — so probing ids tells nothing.
"""

from __future__ import annotations

import uuid

from services.rest.errors import ApiError

PREFIXES = {
    "assistant": "asst_", "thread": "thread_", "run": "run_", "message": "msg_", "file": "file-",
    "vector_store": "vs_", "step": "step_",
}
_NOUNS = {"assistant": "assistant", "thread": "thread", "run": "run", "message": "message", "file": "file",
          "vector_store": "vector store", "step": "run step"}


def public(kind: str, parley_id: str) -> str:
    if not parley_id:
        return ""
    try:
        return PREFIXES[kind] + uuid.UUID(parley_id).hex
    except ValueError:
        return PREFIXES[kind] + parley_id  # not a UUID: kept readable (never produced by Parley today)


def optional(kind: str, parley_id: str) -> str | None:
    return public(kind, parley_id) if parley_id else None


def internal(kind: str, public_id: str) -> str:
    prefix = PREFIXES[kind]
    if isinstance(public_id, str) and public_id.startswith(prefix) and len(public_id) == len(prefix) + 32:
        try:
            return str(uuid.UUID(hex=public_id[len(prefix):]))
        except ValueError:
            pass
    raise ApiError(404, f"No {_NOUNS[kind]} found with id '{str(public_id)[:100]}'.", code=f"{kind}_not_found")


def internal_or_400(kind: str, public_id, param: str) -> str:
    """For ids inside a request body: an id that cannot exist is a bad request naming the field."""
    try:
        return internal(kind, public_id)
    except ApiError as error:
        raise ApiError(400, error.message, param=param, code="invalid_id") from None
