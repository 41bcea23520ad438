"""file_search: the model's query goes to the files service's hybrid search over every
vector store of the run (the assistant's, the run's and the session's), and the best results
enter the prompt, labelled with citation markers, within a token budget."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from services.assistants.citations import GUIDANCE, marker
from services.assistants.tools.base import (
    FunctionSpec,
    SearchHit,
    ToolCall,
    ToolContext,
    ToolDeps,
    ToolError,
    ToolExecutor,
    ToolOutcome,
)
from services.runtime import errors

DEFAULT_RESULTS = 20
MAX_STORES_PER_SEARCH = 10
# Tokens are estimated at 4 characters each for the budget: counting every result exactly
# would cost a call per result, and the budget is a bound, not a precise fit.
CHARS_PER_TOKEN = 4


class FileSearch(ToolExecutor):
    kind = "file_search"

    def __init__(self, search, token_budget: int) -> None:
        # search(identity, vector_store_ids, query, max_results, score_threshold) -> results
        self._search = search
        self._budget = token_budget

    def function(self, tool: Mapping[str, Any]) -> FunctionSpec:
        return FunctionSpec(
            name="file_search",
            description="Search the user's files for passages relevant to a query. " + GUIDANCE,
            parameters={"type": "object", "properties": {"query": {
                "type": "string", "description": "What to look for, as a short natural-language query."}},
                "required": ["query"]},
        )

    async def execute(self, call: ToolCall, context: ToolContext) -> ToolOutcome:
        try:
            query = json.loads(call.arguments or "{}").get("query", "")
        except (ValueError, AttributeError):
            query = ""
        if not isinstance(query, str) or not query.strip():
            raise ToolError('file_search needs a JSON argument {"query": "..."} with a non-empty query')
        query = query.strip()[:4096]
        stores = list(dict.fromkeys(context.run.vector_store_ids))
        if not stores:
            return ToolOutcome(output="No files are available to search.", search_query=query)
        options = call.tool.get("file_search", {}) if call.tool else {}
        max_results = int(options.get("max_num_results") or DEFAULT_RESULTS)
        threshold = options.get("ranking_options", {}).get("score_threshold")
        results = []
        try:
            for begin in range(0, len(stores), MAX_STORES_PER_SEARCH):
                results += await self._search(context.identity, stores[begin:begin + MAX_STORES_PER_SEARCH], query,
                                              max_results, threshold)
        except (errors.NotFound, errors.FailedPrecondition) as exc:
            raise ToolError(f"file search failed: {exc.message}") from None
        results.sort(key=lambda r: r.score, reverse=True)
        hits, used = [], 0
        for result in results[:max_results]:
            cost = len(result.text) // CHARS_PER_TOKEN + 16
            if hits and used + cost > self._budget:
                break
            used += cost
            hits.append(SearchHit(file_id=result.file_id, filename=result.filename, score=result.score,
                                  text=result.text, page=result.page_number, vector_store_id=result.vector_store_id))
        return ToolOutcome(output="", search_query=query, search_hits=tuple(hits))


def format_results(hits, first_index: int) -> str:
    """The results as the model reads them, numbered from `first_index` (run-wide, so the
    markers of several searches never collide)."""
    if not hits:
        return "No results."
    parts = []
    for offset, hit in enumerate(hits):
        page = f", page {hit.page}" if hit.page else ""
        parts.append(f"{marker(first_index + offset, hit.filename)} (file {hit.filename}{page}, score {hit.score:.2f})\n"
                     f"{hit.text}")
    return "\n\n".join(parts)


def build(deps: ToolDeps) -> FileSearch:
    return FileSearch(deps.components["search"], deps.components.get("file_search_token_budget", 4000))
