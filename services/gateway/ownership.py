"""File ids that enter through the gateway belong to the caller.

Sessions stores messages with attachments and image files, the run engine takes files for
its tools; neither may call the files service about them (sessions cannot at all: the call
graph has no sessions → files edge). So the gateway, which already reaches files, asks
`FileService.GetFile` as the caller for every file id a request names before forwarding it:
another user's file answers NOT_FOUND naming the field, exactly like one that does not exist.

Which fields hold file ids is read once per request type from the descriptors (string
fields named `file_id` or `file_ids`, at any depth), so a contract that grows one is
covered without a change here, and a request without file ids costs nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.runtime import errors
from services.runtime.errors import FieldViolation

FILE_ID_FIELDS = ("file_id", "file_ids")
# More distinct files than any contract allows in one request (sessions: 32 attachments).
MAX_FILES_PER_REQUEST = 64


@dataclass(frozen=True)
class _Step:
    """A field on the way to file ids: `file_id` strings at the end, messages before."""

    name: str
    repeated: bool
    children: tuple[_Step, ...] = ()  # empty for the string field itself

    @property
    def is_file_id(self) -> bool:
        return not self.children


def _steps(descriptor: Descriptor, visiting: frozenset[str]) -> tuple[_Step, ...]:
    found = []
    for field in descriptor.fields:
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_STRING and field.name in FILE_ID_FIELDS:
            found.append(_Step(field.name, repeated))
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            child = field.message_type
            if child.full_name in visiting:  # recursive types: their file ids are found one level up
                continue
            children = _steps(child, visiting | {child.full_name})
            if children:
                found.append(_Step(field.name, repeated, children))
    return tuple(found)


class FileReferences:
    """Where a request type keeps file ids, and how to collect them from a request."""

    def __init__(self, descriptor: Descriptor) -> None:
        self._steps = _steps(descriptor, frozenset({descriptor.full_name}))

    def __bool__(self) -> bool:
        return bool(self._steps)

    def collect(self, message: Message) -> dict[str, str]:
        """file id → the first field path naming it (empty ids are the backend's to refuse)."""
        found: dict[str, str] = {}
        _collect(message, self._steps, "", found)
        return found


def _collect(message: Message, steps: tuple[_Step, ...], prefix: str, found: dict[str, str]) -> None:
    for step in steps:
        if step.is_file_id:
            values = getattr(message, step.name)
            if step.repeated:
                for i, value in enumerate(values):
                    if value:
                        found.setdefault(value, f"{prefix}{step.name}[{i}]")
            elif values:
                found.setdefault(values, f"{prefix}{step.name}")
        elif step.repeated:
            for i, item in enumerate(getattr(message, step.name)):
                _collect(item, step.children, f"{prefix}{step.name}[{i}].", found)
        elif message.HasField(step.name):
            _collect(getattr(message, step.name), step.children, f"{prefix}{step.name}.", found)


def too_many_files(references: dict[str, str]) -> errors.InvalidArgument:
    first = next(iter(references.values()))
    return errors.InvalidArgument.for_field(first, f"the request names more than {MAX_FILES_PER_REQUEST} files",
                                            reason="TOO_MANY_FILES")


def not_yours(file_id: str, path: str) -> errors.NotFound:
    return errors.NotFound(
        f"{path}: file {file_id[:64]} not found", reason="FILE_NOT_FOUND",
        field_violations=[FieldViolation(path, "names no file of yours")],
        metadata={"field": path, "file_id": file_id[:64]},
    )


def malformed(path: str) -> errors.InvalidArgument:
    return errors.InvalidArgument.for_field(path, "is not a valid file id", reason="INVALID_ID")
