"""Citations: file_search results are shown to the model labelled with markers like
【3†report.pdf】; markers the answer repeats become FileCitation annotations (file id, name,
page, the quoted chunk and the marker's span), streamed with the delta whose text holds them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from parley.assistants.v1 import assistants_pb2 as apb
from services.assistants.tools.base import SearchHit

_MARKER = re.compile(r"【(\d+)(?::\d+)?†[^】]{0,200}】")
# A marker never gets longer than this; text held back waiting for its end is released then.
_MAX_MARKER_CHARS = 220

GUIDANCE = (
    "When an answer uses a file_search result, cite it right after the sentence by repeating the "
    "result's marker exactly, for example 【0†source】."
)


def marker(index: int, filename: str) -> str:
    return f"【{index}†{filename or 'source'}】"


class CitationStream:
    """Turns the model's text deltas into (text, annotations) deltas: text that may be the
    start of a marker is held back until the marker is complete (or proves not to be one)."""

    def __init__(self, hits: Sequence[SearchHit], content_index: int = 0) -> None:
        self._hits = hits
        self._content_index = content_index
        self._held = ""
        self._emitted = 0  # code points of the part already sent
        self.annotations: list[apb.Annotation] = []

    def _annotate(self, text: str) -> list[apb.Annotation]:
        found = []
        for match in _MARKER.finditer(text):
            index = int(match.group(1))
            if not 0 <= index < len(self._hits):
                continue
            hit = self._hits[index]
            annotation = apb.Annotation(
                content_index=self._content_index, text=match.group(0),
                start_index=self._emitted + match.start(), end_index=self._emitted + match.end(),
                file_citation=apb.FileCitation(file_id=hit.file_id, filename=hit.filename, quote=hit.text,
                                               page=hit.page, score=hit.score),
            )
            found.append(annotation)
        self.annotations.extend(found)
        return found

    def feed(self, text: str) -> tuple[str, list[apb.Annotation]]:
        text = self._held + text
        self._held = ""
        if self._hits:
            start = text.rfind("【")
            if start != -1 and "】" not in text[start:] and len(text) - start < _MAX_MARKER_CHARS:
                text, self._held = text[:start], text[start:]
        annotations = self._annotate(text) if self._hits else []
        self._emitted += len(text)
        return text, annotations

    def finish(self) -> tuple[str, list[apb.Annotation]]:
        text, self._held = self._held, ""
        annotations = self._annotate(text) if self._hits else []
        self._emitted += len(text)
        return text, annotations
