"""Assistants: validated, then stored in the run store as the caller."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from google.protobuf.field_mask_pb2 import FieldMask

from parley.assistants.v1 import assistants_pb2 as apb
from parley.runstore.v1 import runstore_service_pb2 as rs
from services.assistants import validation as check
from services.assistants.ports import FilesPort, LLMPort, RunStorePort, Who
from services.runtime import errors

UPDATABLE = ("name", "description", "model", "instructions", "tools", "tool_resources", "temperature", "top_p",
             "response_format", "metadata")


class Assistants:
    def __init__(self, store: RunStorePort, llm: LLMPort, files: FilesPort, tool_kinds: Iterable[str]) -> None:
        self._store = store
        self._llm = llm
        self._files = files
        self._tool_kinds = tuple(tool_kinds)

    async def _validate(self, who: Who, assistant: apb.Assistant, fields: Sequence[str], prefix: str) -> None:
        violations = check.options_violations(assistant, prefix, fields=fields)
        missing: list[str] = []
        if "tools" in fields:
            found, missing = check.tool_violations(assistant.tools, f"{prefix}tools", available=self._tool_kinds)
            violations += found
        if "model" in fields and not assistant.model:
            violations.append(errors.FieldViolation(f"{prefix}model", "is required"))
        errors.collect(violations)
        if missing:
            raise check.unavailable_tools(missing)
        if "model" in fields:
            await check.resolve_model(self._llm, who, assistant.model, f"{prefix}model")
        if "tool_resources" in fields:
            await check.check_vector_stores(self._files, who, assistant.tool_resources.file_search.vector_store_ids)
            await check.check_files(self._files, who, assistant.tool_resources.code_interpreter.file_ids)
        if "tools" in fields:
            await check.check_vector_stores(
                self._files, who, [v for t in assistant.tools if t.HasField("file_search")
                                   for v in t.file_search.vector_store_ids])

    async def create(self, who: Who, assistant: apb.Assistant) -> apb.Assistant:
        await self._validate(who, assistant, UPDATABLE, "")
        return await self._store.call(who, "CreateAssistant", rs.CreateAssistantRequest(assistant=assistant))

    async def get(self, who: Who, assistant_id: str) -> apb.Assistant:
        return await self._store.call(who, "GetAssistant", rs.GetAssistantRequest(assistant_id=assistant_id))

    async def list(self, who: Who, page_size: int, page_token: str) -> rs.ListAssistantsResponse:
        return await self._store.call(who, "ListAssistants", rs.ListAssistantsRequest(
            page_size=page_size, page_token=page_token))

    async def update(self, who: Who, assistant: apb.Assistant, paths: Sequence[str]) -> apb.Assistant:
        unknown = [p for p in paths if p not in UPDATABLE]
        if unknown:
            raise errors.InvalidArgument.for_field(
                "update_mask", f"unknown path {unknown[0]!r}; updatable: {', '.join(UPDATABLE)}")
        fields = list(paths) or [f.name for f, _ in assistant.ListFields() if f.name in UPDATABLE]
        if not fields:
            raise errors.InvalidArgument.for_field("update_mask", "names no field to update", reason="EMPTY_UPDATE")
        # The assistant must exist (and be the caller's) before other services are asked.
        await self.get(who, assistant.id)
        await self._validate(who, assistant, fields, "assistant.")
        return await self._store.call(who, "UpdateAssistant", rs.UpdateAssistantRequest(
            assistant=assistant, update_mask=FieldMask(paths=fields)))

    async def delete(self, who: Who, assistant_id: str) -> None:
        await self._store.call(who, "DeleteAssistant", rs.DeleteAssistantRequest(assistant_id=assistant_id))
