"""Protobuf ⇄ domain conversions for the sessions service, and nothing else."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from parley.sessions.v1 import sessions_pb2 as pb
from parley.sessions.v1 import sessions_service_pb2 as api
from services.sessions.models import (
    Attachment,
    ContentPart,
    Feedback,
    Message,
    NewMessage,
    NewSession,
    Session,
    SessionPatch,
    ToolCall,
)


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def session_to_proto(session: Session) -> pb.Session:
    return pb.Session(
        id=str(session.id),
        user_id=session.user_id,
        title=session.title,
        status=int(session.status),
        metadata=session.metadata,
        assistant_id=session.assistant_id,
        create_time=timestamp(session.create_time),
        update_time=timestamp(session.update_time),
        message_count=session.message_count,
    )


def feedback_to_proto(feedback: Feedback) -> pb.Feedback:
    return pb.Feedback(
        message_id=str(feedback.message_id),
        rating=int(feedback.rating) if feedback.rating else 0,
        comment=feedback.comment,
        create_time=timestamp(feedback.create_time),
        update_time=timestamp(feedback.update_time),
    )


def _part_to_proto(part: ContentPart) -> pb.ContentPart:
    if part.type == "text":
        return pb.ContentPart(text=part.text)
    if part.type == "image_url":
        return pb.ContentPart(image_url=pb.ImageUrl(url=part.url, detail=part.detail))
    return pb.ContentPart(image_file=pb.ImageFile(file_id=part.file_id, detail=part.detail))


def message_to_proto(message: Message) -> pb.Message:
    result = pb.Message(
        id=str(message.id),
        session_id=str(message.session_id),
        role=int(message.role),
        content=[_part_to_proto(p) for p in message.content],
        attachments=[pb.Attachment(file_id=a.file_id, tools=a.tools) for a in message.attachments],
        tool_calls=[pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in message.tool_calls],
        tool_call_id=message.tool_call_id,
        metadata=message.metadata,
        assistant_id=message.assistant_id,
        run_id=message.run_id,
        create_time=timestamp(message.create_time),
    )
    if message.feedback is not None:
        result.feedback.CopyFrom(feedback_to_proto(message.feedback))
    return result


def _part_from_proto(part: pb.ContentPart) -> ContentPart:
    kind = part.WhichOneof("part")
    if kind == "text":
        return ContentPart(type="text", text=part.text)
    if kind == "image_url":
        return ContentPart(type="image_url", url=part.image_url.url, detail=part.image_url.detail)
    if kind == "image_file":
        return ContentPart(type="image_file", file_id=part.image_file.file_id, detail=part.image_file.detail)
    return ContentPart(type="")  # rejected by validation, with the part's index


def new_session(request: api.CreateSessionRequest) -> NewSession:
    return NewSession(title=request.title, metadata=dict(request.metadata), assistant_id=request.assistant_id)


def session_patch(session: pb.Session) -> SessionPatch:
    """Every updatable field of the request; the domain keeps those the mask names."""
    return SessionPatch(title=session.title, status=session.status, metadata=dict(session.metadata))


def new_message(request: api.CreateMessageRequest) -> NewMessage:
    return NewMessage(
        role=request.role,
        content=tuple(_part_from_proto(p) for p in request.content),
        attachments=tuple(Attachment(a.file_id, tuple(a.tools)) for a in request.attachments),
        tool_calls=tuple(ToolCall(c.id, c.name, c.arguments) for c in request.tool_calls),
        tool_call_id=request.tool_call_id,
        metadata=dict(request.metadata),
        assistant_id=request.assistant_id,
        run_id=request.run_id,
    )
