"""The llm service's request rules, on the domain requests: what a caller may ask for at
all, whichever model serves it (what a particular model can serve is `capabilities`). Every
failure is a FieldViolation; `errors.collect` raises them together as INVALID_ARGUMENT."""

from __future__ import annotations

import re

from services.llm.models import ChatRequest, EmbedRequest, FunctionTool, ImagePart, Message, Role
from services.runtime.errors import FieldViolation, collect
from services.runtime.validation import metadata_violations

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MEDIA_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_TOOLS = 128
MAX_STOP = 4
MAX_EMBED_INPUTS = 2048


def message_violations(m: Message, path: str) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if m.role is None:
        found.append(FieldViolation(f"{path}.role", "is required"))
    for j, part in enumerate(m.content):
        if not isinstance(part, ImagePart):
            continue
        where = f"{path}.content[{j}]"
        if part.url or not (part.data or part.media_type):
            if not part.url.startswith(("http://", "https://", "data:image/")):
                found.append(FieldViolation(f"{where}.image_url.url", "must be an http(s) or data:image URL"))
        else:
            if part.media_type not in MEDIA_TYPES:
                found.append(FieldViolation(f"{where}.image_data.media_type", f"must be one of {sorted(MEDIA_TYPES)}"))
            if not part.data or len(part.data) > MAX_IMAGE_BYTES:
                found.append(FieldViolation(f"{where}.image_data.data", "must hold 1 byte to 20 MiB"))
    if m.has_images and m.role != Role.USER:
        found.append(FieldViolation(f"{path}.content", "images are accepted in user messages only"))
    if m.tool_calls and m.role != Role.ASSISTANT:
        found.append(FieldViolation(f"{path}.tool_calls", "only assistant messages call tools"))
    for j, call in enumerate(m.tool_calls):
        if not call.id or not NAME.match(call.name):
            found.append(FieldViolation(f"{path}.tool_calls[{j}]", "needs an id and a valid function name"))
    if m.role == Role.TOOL and not m.tool_call_id:
        found.append(FieldViolation(f"{path}.tool_call_id", "is required for tool messages"))
    if not m.content and not m.tool_calls and m.role != Role.TOOL:
        found.append(FieldViolation(f"{path}.content", "is required"))
    if m.name and not NAME.match(m.name):
        found.append(FieldViolation(f"{path}.name", "must be 1 to 64 characters of [A-Za-z0-9_-]"))
    return found


def _tool_violations(tools: tuple[FunctionTool, ...]) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if len(tools) > MAX_TOOLS:
        found.append(FieldViolation("tools", f"at most {MAX_TOOLS} tools"))
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not NAME.match(tool.name) or tool.name in names:
            found.append(FieldViolation(f"tools[{i}].function.name", "must be unique, 1 to 64 characters of [A-Za-z0-9_-]"))
        names.add(tool.name)
    return found


def check_chat_request(r: ChatRequest) -> None:
    found: list[FieldViolation] = []
    if not r.messages:
        found.append(FieldViolation("messages", "at least one message is required"))
    for i, message in enumerate(r.messages):
        found += message_violations(message, f"messages[{i}]")
    found += _tool_violations(r.tools)
    if r.tool_choice is not None:
        if r.tool_choice.function and r.tool_choice.function not in {t.name for t in r.tools}:
            found.append(FieldViolation("tool_choice.function_name", "must name one of the request's tools"))
        elif not r.tool_choice.function and r.tool_choice.mode == "required" and not r.tools:
            found.append(FieldViolation("tool_choice", "requires tools"))
    if r.temperature is not None and not 0 <= r.temperature <= 2:
        found.append(FieldViolation("temperature", "must be between 0 and 2"))
    if r.top_p is not None and not 0 <= r.top_p <= 1:
        found.append(FieldViolation("top_p", "must be between 0 and 1"))
    if r.max_tokens is not None and r.max_tokens <= 0:
        found.append(FieldViolation("max_tokens", "must be positive"))
    if len(r.stop) > MAX_STOP or any(not s for s in r.stop):
        found.append(FieldViolation("stop", f"up to {MAX_STOP} non-empty sequences"))
    fmt = r.response_format
    if fmt.type == "json_schema" and (not NAME.match(fmt.name) or fmt.schema is None):
        found.append(FieldViolation("response_format.json_schema", "needs a name and a schema"))
    found += metadata_violations(r.metadata)
    if r.max_queue_time is not None and r.max_queue_time < 0:
        found.append(FieldViolation("max_queue_time", "must not be negative"))
    collect(found)


def check_embed_request(r: EmbedRequest) -> None:
    found: list[FieldViolation] = []
    if not 1 <= len(r.inputs) <= MAX_EMBED_INPUTS:
        found.append(FieldViolation("inputs", f"1 to {MAX_EMBED_INPUTS} texts are required"))
    for i, text in enumerate(r.inputs):
        if not text:
            found.append(FieldViolation(f"inputs[{i}]", "must not be empty"))
    if r.dimensions is not None and r.dimensions <= 0:
        found.append(FieldViolation("dimensions", "must be positive"))
    found += metadata_violations(r.metadata)
    collect(found)


def check_messages(messages: tuple[Message, ...]) -> None:
    """CountTokens' messages: the same rules as a chat request's."""
    found: list[FieldViolation] = []
    for i, message in enumerate(messages):
        found += message_violations(message, f"messages[{i}]")
    collect(found)
