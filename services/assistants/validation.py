"""Checks of assistant and run options that need no other service, each naming its field;
and the ones that do (models, vector stores, files), through the ports."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from google.protobuf import json_format

from parley.assistants.v1 import assistants_pb2 as apb
from services.assistants.ports import FilesPort, LLMPort, Who
from services.runtime import errors
from services.runtime.errors import FieldViolation
from services.runtime.validation import metadata_violations, text_violations

MAX_TOOLS = 128
NAME_MAX_CHARS = 256
DESCRIPTION_MAX_CHARS = 512
MODEL_MAX_CHARS = 256
INSTRUCTIONS_MAX_CHARS = 256_000
FUNCTION_DESCRIPTION_MAX_CHARS = 1024
MAX_VECTOR_STORES = 8
MAX_CODE_FILES = 20
MAX_CACHE_TTL_SECONDS = 24 * 3600
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Built-in tools are offered to models as functions of these names.
BUILTIN_FUNCTIONS = ("file_search", "code_interpreter")


def _enum(value: int, enum_descriptor, field: str) -> list[FieldViolation]:
    if value not in enum_descriptor.values_by_number:
        names = ", ".join(v.name for v in enum_descriptor.values)
        return [FieldViolation(field, f"must be one of {names}")]
    return []


def _number(value: float, field: str, low: float, high: float) -> list[FieldViolation]:
    if math.isnan(value) or not low <= value <= high:
        return [FieldViolation(field, f"must be between {low:g} and {high:g}")]
    return []


def tool_violations(tools: Sequence[apb.Tool], field: str, *, available: Iterable[str]) -> tuple[
        list[FieldViolation], list[str]]:
    """Violations, and the built-in kinds the tools need that this engine lacks."""
    found: list[FieldViolation] = []
    missing: list[str] = []
    available = set(available)
    if len(tools) > MAX_TOOLS:
        found.append(FieldViolation(field, f"has {len(tools)} tools; at most {MAX_TOOLS} are allowed"))
        return found, missing
    names: set[str] = set()
    for i, tool in enumerate(tools):
        path = f"{field}[{i}]"
        kind = tool.WhichOneof("tool")
        if kind is None:
            found.append(FieldViolation(path, "must set one kind of tool (function, file_search or code_interpreter)"))
            continue
        if kind in BUILTIN_FUNCTIONS and kind not in available and kind not in missing:
            missing.append(kind)
        if kind == "function":
            function = tool.function
            if not _FUNCTION_NAME.match(function.name):
                found.append(FieldViolation(f"{path}.function.name",
                                            "must be 1 to 64 characters among a-z, A-Z, 0-9, '_' and '-'"))
            elif function.name in names:
                found.append(FieldViolation(f"{path}.function.name", f"{function.name!r} is not unique among the tools"))
            elif function.name in BUILTIN_FUNCTIONS:
                found.append(FieldViolation(f"{path}.function.name", f"{function.name!r} is the name of a built-in tool"))
            names.add(function.name)
            found += text_violations(function.description, f"{path}.function.description",
                                     max_chars=FUNCTION_DESCRIPTION_MAX_CHARS)
            if function.HasField("parameters"):
                schema = json_format.MessageToDict(function.parameters)
                if schema.get("type") != "object":
                    found.append(FieldViolation(f"{path}.function.parameters",
                                                'must be a JSON Schema of an object ({"type": "object", ...})'))
                elif "properties" in schema and not isinstance(schema["properties"], dict):
                    found.append(FieldViolation(f"{path}.function.parameters.properties", "must be an object"))
            if function.HasField("cache_ttl"):
                ttl = function.cache_ttl
                if ttl.seconds < 0 or ttl.nanos < 0 or ttl.nanos >= 1_000_000_000 or \
                        ttl.seconds + ttl.nanos / 1e9 > MAX_CACHE_TTL_SECONDS:
                    found.append(FieldViolation(f"{path}.function.cache_ttl", "must be between 0 and 24 hours"))
        elif kind == "file_search":
            options = tool.file_search
            if len(options.vector_store_ids) > MAX_VECTOR_STORES:
                found.append(FieldViolation(f"{path}.file_search.vector_store_ids",
                                            f"has more than {MAX_VECTOR_STORES} vector stores"))
            if not 0 <= options.max_num_results <= 50:
                found.append(FieldViolation(f"{path}.file_search.max_num_results",
                                            "must be between 1 and 50 (0 for the default of 20)"))
            if options.ranking_options.HasField("score_threshold"):
                found += _number(options.ranking_options.score_threshold,
                                 f"{path}.file_search.ranking_options.score_threshold", 0, 1)
        if kind in BUILTIN_FUNCTIONS:
            if kind in names:
                found.append(FieldViolation(path, f"{kind} is listed more than once"))
            names.add(kind)
    return found, missing


def resources_violations(resources: apb.ToolResources, field: str) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if len(resources.code_interpreter.file_ids) > MAX_CODE_FILES:
        found.append(FieldViolation(f"{field}.code_interpreter.file_ids", f"has more than {MAX_CODE_FILES} files"))
    if len(resources.file_search.vector_store_ids) > MAX_VECTOR_STORES:
        found.append(FieldViolation(f"{field}.file_search.vector_store_ids",
                                    f"has more than {MAX_VECTOR_STORES} vector stores"))
    return found


def response_format_violations(value: apb.ResponseFormat, field: str) -> list[FieldViolation]:
    found = _enum(value.type, apb.ResponseFormatType.DESCRIPTOR, f"{field}.type")
    if value.type == apb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        if not _FUNCTION_NAME.match(value.json_schema.name):
            found.append(FieldViolation(f"{field}.json_schema.name",
                                        "is required: 1 to 64 characters among a-z, A-Z, 0-9, '_' and '-'"))
        if not value.json_schema.HasField("schema"):
            found.append(FieldViolation(f"{field}.json_schema.schema", "is required for RESPONSE_FORMAT_TYPE_JSON_SCHEMA"))
    return found


def options_violations(message, prefix: str, *, fields: Iterable[str]) -> list[FieldViolation]:
    """Text limits and sampling ranges of an Assistant-like message, for the named fields."""
    fields = set(fields)
    found: list[FieldViolation] = []
    for name, limit, single in (("name", NAME_MAX_CHARS, True), ("description", DESCRIPTION_MAX_CHARS, False),
                                ("model", MODEL_MAX_CHARS, True), ("instructions", INSTRUCTIONS_MAX_CHARS, False),
                                ("additional_instructions", INSTRUCTIONS_MAX_CHARS, False)):
        if name in fields:
            value = getattr(message, name)
            found += text_violations(value, f"{prefix}{name}", max_chars=limit, single_line=single)
            if "\x00" in value:
                found.append(FieldViolation(f"{prefix}{name}", "must not contain NUL characters"))
    if "temperature" in fields and message.HasField("temperature"):
        found += _number(message.temperature, f"{prefix}temperature", 0, 2)
    if "top_p" in fields and message.HasField("top_p"):
        found += _number(message.top_p, f"{prefix}top_p", 0, 1)
    if "metadata" in fields:
        found += metadata_violations(dict(message.metadata), f"{prefix}metadata")
    if "response_format" in fields and message.HasField("response_format"):
        found += response_format_violations(message.response_format, f"{prefix}response_format")
    if "tool_resources" in fields:
        found += resources_violations(message.tool_resources, f"{prefix}tool_resources")
    return found


async def resolve_model(llm: LLMPort, who: Who, model: str, field: str) -> str:
    """The resolved `provider/model` id; an unknown model is INVALID_ARGUMENT on `field`."""
    try:
        resolved = await llm.get_model(who, model)
    except (errors.NotFound, errors.InvalidArgument) as exc:
        raise errors.InvalidArgument.for_field(field, f"is not a model the llm service knows: {exc.message}",
                                               reason="MODEL_NOT_FOUND") from None
    return resolved.id or model


async def check_vector_stores(files: FilesPort, who: Who, ids: Iterable[str]) -> None:
    """Every id must name one of the caller's vector stores (NOT_FOUND otherwise, as files says)."""
    for vector_store_id in dict.fromkeys(ids):
        await files.get_vector_store(who, vector_store_id)


async def check_files(files: FilesPort, who: Who, ids: Iterable[str]) -> None:
    for file_id in dict.fromkeys(ids):
        await files.get_file(who, file_id)


def unavailable_tools(missing: Sequence[str]) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        f"this engine cannot run the {', '.join(missing)} tool (its executor is not installed)",
        reason="TOOL_UNAVAILABLE", metadata={"tools": ",".join(missing)})
