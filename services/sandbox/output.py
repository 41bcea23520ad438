"""Bounded output: what an execution prints is kept up to a limit, then dropped with a
marker, so a program printing gigabytes costs a counter, never memory."""

from __future__ import annotations


def truncation_marker(limit: int) -> str:
    return f"\n[output truncated: more than {limit} bytes; the rest was dropped]\n"


class OutputLimiter:
    """Counts stdout and stderr together against one limit of UTF-8 bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = 0
        # Everything the code produced, kept or not (a flood is stopped past a multiple).
        self.produced = 0
        self.truncated = False

    def add(self, text: str) -> str:
        """The part of `text` to pass on: all of it, a cut piece ending in the marker, or ""."""
        size = len(text.encode("utf-8", "replace"))
        self.produced += size
        if self.truncated or not text:
            return ""
        if self.kept + size <= self.limit:
            self.kept += size
            return text
        room = self.limit - self.kept
        piece = text.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
        self.kept = self.limit
        self.truncated = True
        return piece + truncation_marker(self.limit)
