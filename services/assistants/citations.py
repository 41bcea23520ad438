"""Citations: file_search results are shown to the model labelled with markers like
【3†report.pdf】; markers the answer repeats become FileCitation annotations (file id, name,
page, the quoted chunk and the marker's span), streamed with the delta whose text holds them.

Links to files the code interpreter produced in the run (`sandbox:/mnt/data/<path>`, as the
tool told the model) become FilePath annotations the same way, the span being the link.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import unquote

from parley.assistants.v1 import assistants_pb2 as apb
from services.assistants.tools.base import SearchHit

_MARKER = re.compile(r"【(\d+)(?::\d+)?†[^】]{0,200}】")
# A marker never gets longer than this; text held back waiting for its end is released then.
_MAX_MARKER_CHARS = 220
SANDBOX_LINK_PREFIX = "sandbox:/mnt/data/"
# A link runs to the first character that cannot be part of a path in Markdown prose.
_LINK = re.compile(re.escape(SANDBOX_LINK_PREFIX) + r"""[^\s()\[\]<>"'`]+""")
_MAX_LINK_CHARS = 400
# Punctuation after a link ends the sentence rather than the filename (unless a file has it).
_TRAILING = ".,;:!?*_"

GUIDANCE = (
    "When an answer uses a file_search result, cite it right after the sentence by repeating the "
    "result's marker exactly, for example 【0†source】."
)


def marker(index: int, filename: str) -> str:
    return f"【{index}†{filename or 'source'}】"


class CitationStream:
    """Turns the model's text deltas into (text, annotations) deltas: text that may be the
    start of a marker is held back until the marker is complete (or proves not to be one)."""

    def __init__(self, hits: Sequence[SearchHit], content_index: int = 0,
                 files: Mapping[str, str] | None = None) -> None:
        self._hits = hits
        # Produced files by their path under /mnt/data -> file id (FilePath annotations).
        self._files = files if files is not None else {}
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
        if self._files:
            found.extend(self._file_paths(text))
            found.sort(key=lambda a: a.start_index)
        self.annotations.extend(found)
        return found

    def _file_paths(self, text: str) -> list[apb.Annotation]:
        found = []
        for match in _LINK.finditer(text):
            link = match.group(0)
            while len(link) > len(SANDBOX_LINK_PREFIX):
                file_id = self._files.get(unquote(link[len(SANDBOX_LINK_PREFIX):]))
                if file_id or link[-1] not in _TRAILING:
                    break
                link = link[:-1]
            else:
                continue
            if not file_id:
                continue
            start = self._emitted + match.start()
            found.append(apb.Annotation(content_index=self._content_index, text=link, start_index=start,
                                        end_index=start + len(link), file_path=apb.FilePath(file_id=file_id)))
        return found

    def _hold_from(self, text: str) -> int:
        """Where the text's unfinished marker or link begins (len(text) when there is none)."""
        cut = len(text)
        if self._hits:
            start = text.rfind("【")
            if start != -1 and "】" not in text[start:] and len(text) - start < _MAX_MARKER_CHARS:
                cut = start
        if self._files:
            last = None
            for last in _LINK.finditer(text):
                pass
            if last is not None and last.end() == len(text) and len(text) - last.start() < _MAX_LINK_CHARS:
                cut = min(cut, last.start())
            for size in range(min(len(SANDBOX_LINK_PREFIX), len(text)), 0, -1):
                if text.endswith(SANDBOX_LINK_PREFIX[:size]):
                    cut = min(cut, len(text) - size)
                    break
        return cut

    def feed(self, text: str) -> tuple[str, list[apb.Annotation]]:
        text = self._held + text
        self._held = ""
        cut = self._hold_from(text)
        text, self._held = text[:cut], text[cut:]
        annotations = self._annotate(text) if self._hits or self._files else []
        self._emitted += len(text)
        return text, annotations

    def finish(self) -> tuple[str, list[apb.Annotation]]:
        text, self._held = self._held, ""
        annotations = self._annotate(text) if self._hits or self._files else []
        self._emitted += len(text)
        return text, annotations
