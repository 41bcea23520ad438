"""Input hygiene at the edge: control characters where they make no sense, and the optional
per-key policy that takes PII out of prompts before a model vendor sees them.

Works on protobuf messages generically (by descriptor), so it needs no change when a
contract grows a field. Identifier-like strings (ids, names, model ids, tokens, types) must
be one clean line; free text may hold tabs and newlines but no other control characters.
"""

from __future__ import annotations

import re

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from services.runtime.errors import FieldViolation

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SINGLE_LINE_SUFFIXES = ("id", "ids", "model", "models", "name", "token", "filename", "media_type", "provider",
                         "url", "sha256", "purpose")
# Messages whose content is data, not text a person typed: JSON schemas and packed values.
_OPAQUE = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.Any"}
_MAX_VIOLATIONS = 10

_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


def _single_line(name: str) -> bool:
    return name.endswith(_SINGLE_LINE_SUFFIXES)


# What to check in each field of a message type, computed once per type: the walk runs on
# every request, so it must not ask descriptors the same questions again.
_SKIP, _TEXT, _TEXTS, _MESSAGE_ONE, _MESSAGES, _MAP_TEXT, _MAP_MESSAGE = range(7)
_PLANS: dict[str, dict[str, tuple[int, bool]]] = {}


def _plan(descriptor) -> dict[str, tuple[int, bool]]:
    plan = _PLANS.get(descriptor.full_name)
    if plan is not None:
        return plan
    plan = {}
    for field in descriptor.fields:
        single = _single_line(field.name)
        if field.type == _STRING:
            plan[field.name] = (_TEXTS if field.is_repeated else _TEXT, single)
        elif field.type == _MESSAGE and field.message_type.full_name not in _OPAQUE:
            if field.message_type.GetOptions().map_entry:
                value = field.message_type.fields_by_name["value"]
                if value.type == _STRING:
                    plan[field.name] = (_MAP_TEXT, single)
                elif value.type == _MESSAGE and value.message_type.full_name not in _OPAQUE:
                    plan[field.name] = (_MAP_MESSAGE, single)
                else:
                    plan[field.name] = (_SKIP, single)
            else:
                plan[field.name] = (_MESSAGES if field.is_repeated else _MESSAGE_ONE, single)
    _PLANS[descriptor.full_name] = plan
    return plan


def control_character_violations(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Every string field holding a control character it should not, by field path."""
    if _clean(message):  # the common case, without building a single path string
        return []
    found: list[FieldViolation] = []
    _walk(message, prefix, found)
    return found


def _clean(message: Message) -> bool:
    plan = _plan(message.DESCRIPTOR)
    for field, value in message.ListFields():
        kind, single = plan.get(field.name, (_SKIP, False))
        if kind == _TEXT:
            if (_CONTROL_OR_NEWLINE if single else _CONTROL).search(value):
                return False
        elif kind == _MESSAGES:
            for item in value:
                if not _clean(item):
                    return False
        elif kind == _MESSAGE_ONE:
            if not _clean(value):
                return False
        elif kind == _TEXTS:
            pattern = _CONTROL_OR_NEWLINE if single else _CONTROL
            for item in value:
                if pattern.search(item):
                    return False
        elif kind == _MAP_TEXT:
            for key in value:
                if _CONTROL_OR_NEWLINE.search(str(key)) or _CONTROL.search(value[key]):
                    return False
        elif kind == _MAP_MESSAGE:
            for key in value:
                if _CONTROL_OR_NEWLINE.search(str(key)) or not _clean(value[key]):
                    return False
    return True


def _check(value: str, path: str, single_line: bool, found: list[FieldViolation]) -> None:
    pattern = _CONTROL_OR_NEWLINE if single_line else _CONTROL
    if pattern.search(value):
        found.append(FieldViolation(path, "must not contain control characters"))


def _walk(message: Message, prefix: str, found: list[FieldViolation]) -> None:
    plan = _plan(message.DESCRIPTOR)
    for field, value in message.ListFields():
        if len(found) >= _MAX_VIOLATIONS:
            return
        kind, single = plan.get(field.name, (_SKIP, False))
        if kind == _TEXT:
            if (_CONTROL_OR_NEWLINE if single else _CONTROL).search(value):
                found.append(FieldViolation(f"{prefix}{field.name}", "must not contain control characters"))
        elif kind == _MESSAGES:
            for i, item in enumerate(value):
                _walk(item, f"{prefix}{field.name}[{i}].", found)
        elif kind == _MESSAGE_ONE:
            _walk(value, f"{prefix}{field.name}.", found)
        elif kind == _TEXTS:
            for i, item in enumerate(value):
                _check(item, f"{prefix}{field.name}[{i}]", single, found)
        elif kind in (_MAP_TEXT, _MAP_MESSAGE):
            path = f"{prefix}{field.name}"
            for key in value:
                _check(str(key), f"{path}[{key!r}]", True, found)
                if kind == _MAP_TEXT:
                    _check(value[key], f"{path}[{key!r}]", False, found)
                else:
                    _walk(value[key], f"{path}[{key!r}].", found)


# --- PII in prompts -------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# International (+CC ...) or North American ((555) 123-4567, 555-123-4567) numbers.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){2,4}"
    r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?!\w)"
)
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[CARD_NUMBER]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


def redact_pii(text: str) -> str:
    """`text` with emails, card numbers (Luhn-checked) and phone numbers replaced."""
    text = _EMAIL.sub("[EMAIL]", text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub("[PHONE]", text)


def redact_prompt(request: Message) -> bool:
    """Redacts the text parts of a Generate/StreamGenerate request in place; True if any
    text changed."""
    changed = False
    for message in request.messages:
        for part in message.content:
            if part.WhichOneof("part") == "text":
                redacted = redact_pii(part.text)
                if redacted != part.text:
                    part.text = redacted
                    changed = True
    return changed
