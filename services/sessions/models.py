"""The sessions domain's types. Enum values equal their protobuf numbers, so conversion at
the edge is a plain cast, but nothing here depends on protobuf or grpc."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime


class SessionStatus(enum.IntEnum):
    ACTIVE = 1
    ARCHIVED = 2
    CLOSED = 3


class Role(enum.IntEnum):
    USER = 1
    ASSISTANT = 2
    SYSTEM = 3
    TOOL = 4


class Rating(enum.IntEnum):
    THUMBS_UP = 1
    THUMBS_DOWN = 2


class SortOrder(enum.IntEnum):
    ASCENDING = 1
    DESCENDING = 2


class ExportFormat(enum.IntEnum):
    JSON = 1
    MARKDOWN = 2


@dataclass(frozen=True)
class ContentPart:
    """One part of a message: `type` is "text", "image_url" or "image_file"."""

    type: str
    text: str = ""
    url: str = ""
    file_id: str = ""
    detail: int = 0

    def to_json(self) -> dict:
        if self.type == "text":
            return {"type": "text", "text": self.text}
        if self.type == "image_url":
            return {"type": "image_url", "url": self.url, "detail": self.detail}
        return {"type": "image_file", "file_id": self.file_id, "detail": self.detail}

    @classmethod
    def from_json(cls, data: dict) -> ContentPart:
        return cls(
            type=data["type"],
            text=data.get("text", ""),
            url=data.get("url", ""),
            file_id=data.get("file_id", ""),
            detail=data.get("detail", 0),
        )


@dataclass(frozen=True)
class Attachment:
    file_id: str
    tools: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Feedback:
    message_id: uuid.UUID
    rating: Rating | None
    comment: str
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class Session:
    id: uuid.UUID
    user_id: str
    title: str
    status: SessionStatus
    metadata: dict[str, str]
    assistant_id: str
    create_time: datetime
    update_time: datetime
    message_count: int


@dataclass(frozen=True)
class Message:
    id: uuid.UUID
    session_id: uuid.UUID
    role: Role
    content: tuple[ContentPart, ...]
    attachments: tuple[Attachment, ...]
    tool_calls: tuple[ToolCall, ...]
    tool_call_id: str
    metadata: dict[str, str]
    assistant_id: str
    run_id: str
    create_time: datetime
    feedback: Feedback | None = None


@dataclass(frozen=True)
class NewSession:
    title: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    assistant_id: str = ""


@dataclass(frozen=True)
class SessionPatch:
    """Only the fields that are not None are written."""

    title: str | None = None
    status: int | None = None
    metadata: dict[str, str] | None = None


@dataclass(frozen=True)
class NewMessage:
    role: int
    content: tuple[ContentPart, ...]
    attachments: tuple[Attachment, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    assistant_id: str = ""
    run_id: str = ""


@dataclass(frozen=True)
class Page:
    items: list
    next_page_token: str
