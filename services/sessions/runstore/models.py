"""The run store's types: assistants, runs, run steps, run events, claims and cached function
results as the assistants run engine stores them.

Enum values equal the parley.assistants.v1 protobuf numbers. The fields the store queries or
checks are typed attributes; everything else of a resource travels as `body`, a dict of its
top-level fields in protobuf JSON form (field names as in the .proto), which the store
keeps as it is. Nothing here depends on protobuf or grpc.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class RunStatus(enum.IntEnum):
    QUEUED = 1
    IN_PROGRESS = 2
    REQUIRES_ACTION = 3
    CANCELLING = 4
    CANCELLED = 5
    FAILED = 6
    COMPLETED = 7
    INCOMPLETE = 8
    EXPIRED = 9


# A run in one of these has not ended, and holds (or waits for) its session.
ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.IN_PROGRESS, RunStatus.REQUIRES_ACTION, RunStatus.CANCELLING)


class BusySessionStrategy(enum.IntEnum):
    REJECT = 1
    QUEUE = 2
    CANCEL_ACTIVE = 3


class RunStepType(enum.IntEnum):
    MESSAGE_CREATION = 1
    TOOL_CALLS = 2


class RunStepStatus(enum.IntEnum):
    IN_PROGRESS = 1
    CANCELLED = 2
    FAILED = 3
    COMPLETED = 4
    EXPIRED = 5


# Top-level fields of each resource that requests may write (update masks name these).
ASSISTANT_FIELDS = (
    "name", "description", "model", "instructions", "tools", "tool_resources", "temperature", "top_p",
    "response_format", "metadata",
)
RUN_FIELDS = (
    "status", "required_action", "last_error", "incomplete_details", "model", "instructions", "tools",
    "tool_resources", "temperature", "top_p", "max_prompt_tokens", "max_completion_tokens", "truncation_strategy",
    "tool_choice", "parallel_tool_calls", "response_format", "busy_session_strategy", "usage", "start_time",
    "complete_time", "cancel_time", "fail_time", "expire_time", "metadata",
)
RUN_STEP_FIELDS = (
    "type", "status", "message_creation", "tool_calls", "last_error", "usage", "complete_time", "cancel_time",
    "fail_time", "expire_time",
)
# RunStep's `step_details` oneof: setting one clears the other.
RUN_STEP_DETAILS = {"message_creation": RunStepType.MESSAGE_CREATION, "tool_calls": RunStepType.TOOL_CALLS}


@dataclass(frozen=True)
class Assistant:
    id: uuid.UUID
    user_id: str
    body: dict[str, Any]
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class Run:
    id: uuid.UUID
    user_id: str
    session_id: uuid.UUID
    assistant_id: uuid.UUID
    status: RunStatus
    busy_session_strategy: BusySessionStrategy
    expire_time: datetime | None
    last_sequence: int
    body: dict[str, Any]
    create_time: datetime


@dataclass(frozen=True)
class RunStep:
    id: uuid.UUID
    run_id: uuid.UUID
    session_id: uuid.UUID
    assistant_id: uuid.UUID
    type: RunStepType
    status: RunStepStatus
    body: dict[str, Any]
    create_time: datetime


@dataclass(frozen=True)
class RunEvent:
    run_id: uuid.UUID
    sequence: int
    create_time: datetime
    # The event's one kind, e.g. {"message_delta": {...}}.
    body: dict[str, Any]


@dataclass(frozen=True)
class Draft:
    """A resource as a request populates it: its top-level fields by name. Identifiers are
    strings, enums ints, timestamps that the store keeps as columns datetimes, everything
    else protobuf JSON. Absent means unset."""

    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


@dataclass(frozen=True)
class NewRunEvent:
    sequence: int
    run_id: str
    create_time: datetime | None
    body: dict[str, Any]


@dataclass(frozen=True)
class ColumnWrites:
    """What an update writes: typed columns by name, body fields to set, body fields to clear."""

    columns: dict[str, Any]
    set_body: dict[str, Any]
    clear_body: tuple[str, ...]


# The scope of the engine's own identities: the queue RPCs work across users and need it.
# API keys and identity providers can never grant it (the gateway's scopes are a fixed list).
ENGINE_SCOPE = "assistants.engine"


class ClaimReason(enum.IntEnum):
    QUEUED = 1
    LEASE_LAPSED = 2
    ACTION_EXPIRED = 3


@dataclass(frozen=True)
class Claim:
    reason: ClaimReason
    run: Run


@dataclass(frozen=True)
class Lease:
    # Empty releases the run's lease.
    owner: str
    seconds: float


@dataclass(frozen=True)
class FunctionResult:
    name: str
    arguments: str
    output: str = ""
    expire_time: datetime | None = None


@dataclass(frozen=True)
class RunChange:
    """What a watcher gets: the next stored events (none for status-only watches) and the
    run's stored status and last sequence after them."""

    events: list[RunEvent]
    status: RunStatus
    last_sequence: int
