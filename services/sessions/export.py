"""A session as a JSON or Markdown document, rendered incrementally so that a session of any
length streams out in bounded memory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone

from services.sessions.models import ExportFormat, Message, Session

CHUNK_BYTES = 64 * 1024
FORMAT_VERSION = 1


def _time(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def session_json(session: Session) -> dict:
    return {
        "id": str(session.id),
        "title": session.title,
        "status": session.status.name.lower(),
        "metadata": session.metadata,
        "assistant_id": session.assistant_id,
        "create_time": _time(session.create_time),
        "update_time": _time(session.update_time),
        "message_count": session.message_count,
    }


def message_json(message: Message) -> dict:
    entry: dict = {
        "id": str(message.id),
        "role": message.role.name.lower(),
        "content": [part.to_json() for part in message.content],
        "create_time": _time(message.create_time),
    }
    if message.attachments:
        entry["attachments"] = [{"file_id": a.file_id, "tools": list(a.tools)} for a in message.attachments]
    if message.tool_calls:
        entry["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls]
    if message.tool_call_id:
        entry["tool_call_id"] = message.tool_call_id
    if message.metadata:
        entry["metadata"] = message.metadata
    if message.assistant_id:
        entry["assistant_id"] = message.assistant_id
    if message.run_id:
        entry["run_id"] = message.run_id
    if message.feedback is not None:
        entry["feedback"] = {
            "rating": message.feedback.rating.name.lower() if message.feedback.rating else None,
            "comment": message.feedback.comment,
        }
    return entry


def _markdown_message(message: Message) -> str:
    heading = message.role.name.capitalize()
    if message.role.name == "TOOL":
        heading += f" (answer to {message.tool_call_id})"
    lines = [f"### {heading} · {_time(message.create_time)}", ""]
    for part in message.content:
        if part.type == "text":
            lines += [part.text, ""]
        elif part.type == "image_url":
            lines += [f"![image]({part.url if not part.url.startswith('data:') else 'data: URL omitted'})", ""]
        else:
            lines += [f"![image](file:{part.file_id})", ""]
    for call in message.tool_calls:
        lines += [f"Tool call `{call.name}` ({call.id}):", "", "```json", call.arguments, "```", ""]
    if message.attachments:
        lines += ["Attachments: " + ", ".join(f"`{a.file_id}`" for a in message.attachments), ""]
    if message.feedback is not None:
        rating = message.feedback.rating.name.lower().replace("_", " ") if message.feedback.rating else "no rating"
        comment = f": {message.feedback.comment}" if message.feedback.comment else ""
        lines += [f"> Feedback: {rating}{comment}", ""]
    return "\n".join(lines) + "\n"


async def _pieces(fmt: ExportFormat, session: Session, messages: AsyncIterator[Message]) -> AsyncIterator[str]:
    if fmt == ExportFormat.JSON:
        header = {"format_version": FORMAT_VERSION, "exported_at": _time(datetime.now(timezone.utc)),
                  "session": session_json(session)}
        yield json.dumps(header, ensure_ascii=False)[:-1] + ', "messages": ['
        first = True
        async for message in messages:
            yield ("" if first else ", ") + json.dumps(message_json(message), ensure_ascii=False)
            first = False
        yield "]}\n"
    else:
        yield f"# {session.title or 'Untitled session'}\n\n"
        yield (f"- Session: `{session.id}`\n- Status: {session.status.name.lower()}\n"
               f"- Created: {_time(session.create_time)}\n- Messages: {session.message_count}\n\n")
        async for message in messages:
            yield _markdown_message(message)


async def render_export(fmt: ExportFormat, session: Session, messages: AsyncIterator[Message]) -> AsyncIterator[bytes]:
    buffer = bytearray()
    async for piece in _pieces(fmt, session, messages):
        buffer += piece.encode()
        while len(buffer) >= CHUNK_BYTES:
            yield bytes(buffer[:CHUNK_BYTES])
            del buffer[:CHUNK_BYTES]
    if buffer:
        yield bytes(buffer)
