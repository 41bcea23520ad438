"""The prompt of one model call of a run: instructions, the session's messages (with what
the model can read of their attachments), and the run's own tool rounds so far, truncated
as the run asks (LAST_MESSAGES, or AUTO: drop the oldest until it fits, counted with the llm
service's CountTokens)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from parley.assistants.v1 import assistants_pb2 as apb
from parley.llm.v1 import llm_pb2 as lpb
from parley.sessions.v1 import sessions_pb2 as spb
from services.assistants.citations import GUIDANCE
from services.assistants.ports import LLMPort, Who
from services.assistants.tools.base import FunctionSpec, SearchHit
from services.assistants.tools.file_search import format_results

_ROLES = {spb.ROLE_USER: lpb.ROLE_USER, spb.ROLE_ASSISTANT: lpb.ROLE_ASSISTANT, spb.ROLE_SYSTEM: lpb.ROLE_SYSTEM}
# Output tokens kept free in the context window when the run sets no completion limit.
DEFAULT_OUTPUT_RESERVE = 4096
MAX_TRUNCATION_ROUNDS = 6


class PromptTooLong(Exception):
    """Even the latest message alone does not fit the run's remaining prompt tokens."""


@dataclass
class Prompt:
    messages: list[lpb.ChatMessage]
    tools: list[lpb.Tool]
    tokens: int
    # Session messages dropped by truncation.
    dropped: int


def llm_tools(specs: Sequence[FunctionSpec]) -> list[lpb.Tool]:
    tools = []
    for spec in specs:
        function = lpb.FunctionDefinition(name=spec.name, description=spec.description, strict=spec.strict)
        if spec.parameters:
            function.parameters.update(dict(spec.parameters))
        tools.append(lpb.Tool(function=function))
    return tools


def session_message(message: spb.Message, filenames: dict[str, str],
                    images: dict[str, tuple[bytes, str]] | None = None) -> lpb.ChatMessage | None:
    role = _ROLES.get(message.role)
    if role is None:
        return None  # tool messages belong to the run that wrote them
    chat = lpb.ChatMessage(role=role)
    for part in message.content:
        kind = part.WhichOneof("part")
        if kind == "text":
            chat.content.append(lpb.ContentPart(text=part.text))
        elif kind == "image_url" and role == lpb.ROLE_USER:
            chat.content.append(lpb.ContentPart(image_url=lpb.ImageUrl(url=part.image_url.url,
                                                                       detail=int(part.image_url.detail))))
        elif kind == "image_file":
            image = (images or {}).get(part.image_file.file_id)
            if image is not None and role == lpb.ROLE_USER:
                chat.content.append(lpb.ContentPart(image_data=lpb.ImageData(
                    data=image[0], media_type=image[1], detail=int(part.image_file.detail))))
            else:  # a model without vision (or an assistant's image) gets a mention
                chat.content.append(lpb.ContentPart(text=f"[image file {part.image_file.file_id}]"))
    if message.attachments:
        # The model reads attached files through the tools they are attached for; it is told
        # which files those are.
        lines = []
        for attachment in message.attachments:
            name = filenames.get(attachment.file_id, attachment.file_id)
            tools = ", ".join(attachment.tools) or "no tool"
            lines.append(f"- {name} (file {attachment.file_id}; readable with {tools})")
        chat.content.append(lpb.ContentPart(text="Attached files:\n" + "\n".join(lines)))
    if not chat.content:
        return None
    return chat


def tool_round(detail_calls: Sequence[apb.ToolCallDetail], hits_before: int,
               hits: dict[str, Sequence[SearchHit]]) -> tuple[list[lpb.ChatMessage], int]:
    """The assistant's calls of one tool_calls step and their results, as the model saw them.
    Returns the messages and how many search results they numbered."""
    call_message = lpb.ChatMessage(role=lpb.ROLE_ASSISTANT)
    results: list[lpb.ChatMessage] = []
    numbered = 0
    for detail in detail_calls:
        kind = detail.WhichOneof("call")
        if kind == "function":
            name, arguments, output = detail.function.name, detail.function.arguments, detail.function.output
        elif kind == "file_search":
            name, arguments = "file_search", json.dumps({"query": detail.file_search.query})
            found = hits.get(detail.id, ())
            output = format_results(found, hits_before + numbered)
            numbered += len(found)
        elif kind == "code_interpreter":
            name, arguments = "code_interpreter", json.dumps({"code": detail.code_interpreter.input})
            output = "\n".join(o.logs for o in detail.code_interpreter.outputs if o.WhichOneof("output") == "logs")
            images = [o.image.file_id for o in detail.code_interpreter.outputs if o.WhichOneof("output") == "image"]
            if images:
                output += "\n" + "\n".join(f"[image file {file_id}]" for file_id in images)
            output = output.strip() or "(no output)"
        else:
            continue
        call_message.tool_calls.append(lpb.ToolCall(id=detail.id, name=name, arguments=arguments))
        results.append(lpb.ChatMessage(role=lpb.ROLE_TOOL, tool_call_id=detail.id,
                                       content=[lpb.ContentPart(text=output)]))
    if not call_message.tool_calls:
        return [], numbered
    return [call_message, *results], numbered


def hits_of(detail: apb.ToolCallDetail) -> list[SearchHit]:
    return [SearchHit(file_id=r.file_id, filename=r.filename, score=r.score, text=r.text, page=r.page)
            for r in detail.file_search.results]


async def build(
    llm: LLMPort, who: Who, run: apb.Run, *, session_messages: Sequence[spb.Message], steps: Sequence[apb.RunStep],
    specs: Sequence[FunctionSpec], filenames: dict[str, str], context_window: int, prompt_budget: int | None,
    output_reserve: int, images: dict[str, tuple[bytes, str]] | None = None,
) -> Prompt:
    system_text = run.instructions
    if any(s.name == "file_search" for s in specs):
        system_text = (system_text + "\n\n" if system_text else "") + GUIDANCE
    head = [lpb.ChatMessage(role=lpb.ROLE_SYSTEM, content=[lpb.ContentPart(text=system_text)])] if system_text else []
    history = [m for m in (session_message(m, filenames, images) for m in session_messages) if m is not None]
    if run.truncation_strategy.type == apb.TRUNCATION_TYPE_LAST_MESSAGES:
        history = history[-max(run.truncation_strategy.last_messages, 1):]
    rounds: list[lpb.ChatMessage] = []
    numbered = 0
    for step in steps:
        if step.WhichOneof("step_details") != "tool_calls":
            continue
        hits = {d.id: hits_of(d) for d in step.tool_calls.tool_calls if d.WhichOneof("call") == "file_search"}
        messages, count = tool_round(step.tool_calls.tool_calls, numbered, hits)
        rounds += messages
        numbered += count
    tools = llm_tools(specs)
    limit = max(context_window - output_reserve, 256) if context_window else None
    if prompt_budget is not None:
        limit = prompt_budget if limit is None else min(limit, prompt_budget)
    dropped = 0
    for _ in range(MAX_TRUNCATION_ROUNDS):
        messages = head + history + rounds
        size = sum(m.ByteSize() for m in messages) + sum(t.ByteSize() for t in tools)
        if limit is not None and size <= limit // 2:
            # A token is at least one byte of text in every tokenizer we meet, so a prompt of
            # half the limit in bytes fits without asking the llm service to count it.
            return Prompt(messages=messages, tools=tools, tokens=size, dropped=dropped)
        tokens = await llm.count_tokens(who, run.model, messages, tools)
        if limit is None or tokens <= limit:
            return Prompt(messages=messages, tools=tools, tokens=tokens, dropped=dropped)
        if len(history) <= 1:
            break
        # Drop the oldest messages in proportion to the excess (then count again).
        excess = tokens - limit
        sizes = [max(m.ByteSize() // 4, 1) for m in history]
        drop, freed = 0, 0
        while drop < len(history) - 1 and freed < excess:
            freed += sizes[drop]
            drop += 1
        history = history[max(drop, 1):]
        dropped += max(drop, 1)
    raise PromptTooLong(f"the prompt needs more than the {limit} tokens the run has left")
