"""The checks every request gets before any servicer sees it, whatever its type.

Protobuf accepts, and hands on, values no service can use: enum numbers the schema does not
define (proto3 keeps them), NaN, ±Infinity and subnormal numbers inside google.protobuf.Struct
(a tool's JSON-schema `parameters`: JSON has no such numbers, so no vendor takes them), and
Timestamps and Durations outside their own type's rules or beyond what PostgreSQL and Python
store faithfully. Plain double fields are left to their domain (`validation.float_problem`):
a NaN may be a legitimate value there (a run store event keeps a usage's cost as sent). This
walks the fields a request sets (`ListFields`, recursively) and names each bad one by its
path, so every present and future RPC is covered without code of its own.

Cheap by construction: per message type, the fields worth looking at are worked out once, and
a sub-message type with nothing checkable anywhere below it is never entered, and string and
bytes fields (the bulk of a prompt or an upload) are never read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from services.runtime import errors
from services.runtime.errors import FieldViolation
from services.runtime.validation import SMALLEST_NORMAL_DOUBLE, duration_problem, float_problem, timestamp_problem

# Enough to say what is wrong; the status mapping caps what is quoted anyway.
MAX_VIOLATIONS = 20
_KEY_CHARS = 64

_ENUM, _TIMESTAMP, _DURATION, _STRUCT, _VALUE, _LIST_VALUE, _MESSAGE = range(7)
_SINGLE, _PRESENT, _REPEATED, _MAP, _ONEOF = range(5)
_WELL_KNOWN = {
    "google.protobuf.Timestamp": _TIMESTAMP,
    "google.protobuf.Duration": _DURATION,
    "google.protobuf.Struct": _STRUCT,
    "google.protobuf.Value": _VALUE,
    "google.protobuf.ListValue": _LIST_VALUE,
}

# Per message type: the fields worth a look, as (name, kind, shape, data), or None when nothing
# below it is checkable. `data` is the enum's numbers or None.
_plans: dict[Descriptor, tuple[tuple[str, int, int, Any], ...] | None] = {}


def _value_entry(fd: FieldDescriptor) -> tuple[int, Any] | None:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return _ENUM, frozenset(v.number for v in fd.enum_type.values)
    if fd.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        known = _WELL_KNOWN.get(fd.message_type.full_name)
        if known is not None:
            return known, None
        if _plan(fd.message_type) is None:
            return None
        return _MESSAGE, None
    return None


def _plan(descriptor: Descriptor) -> tuple[tuple[str, int, int, Any], ...] | None:
    try:
        return _plans[descriptor]
    except KeyError:
        pass
    _plans[descriptor] = ()  # provisional, for recursive types: assumed worth entering
    plan = []
    for fd in descriptor.fields:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            entry = _value_entry(fd.message_type.fields_by_name["value"])
            shape = _MAP
        else:
            entry = _value_entry(fd)
            if fd.is_repeated:
                shape = _REPEATED
            elif fd.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
                shape = _PRESENT
            else:
                shape = _SINGLE
        if entry is not None:
            plan.append((fd.name, entry[0], shape, entry[1]))
    _plans[descriptor] = _group_oneofs(descriptor, plan) or None
    return _plans[descriptor]


def _group_oneofs(descriptor: Descriptor, plan: list[tuple[str, int, int, Any]]) -> tuple:
    """One WhichOneof per oneof with several checkable members (a ContentPart's image_url and
    image_data) instead of a HasField per member."""
    members: dict[str, dict[str, tuple[int, Any]]] = {}
    for name, kind, shape, data in plan:
        oneof = descriptor.fields_by_name[name].containing_oneof
        if oneof is not None and not oneof.name.startswith("_") and shape in (_SINGLE, _PRESENT):
            members.setdefault(oneof.name, {})[name] = (kind, data)
    grouped = {oneof: entries for oneof, entries in members.items() if len(entries) > 1}
    result, done = [], set()
    for name, kind, shape, data in plan:
        oneof = descriptor.fields_by_name[name].containing_oneof
        if oneof is not None and oneof.name in grouped:
            if oneof.name not in done:
                done.add(oneof.name)
                result.append((oneof.name, 0, _ONEOF, grouped[oneof.name]))
            continue
        result.append((name, kind, shape, data))
    return tuple(result)


def request_violations(message) -> list[FieldViolation]:
    """Every bad value in `message` (up to MAX_VIOLATIONS), each named by its field path."""
    found: list[FieldViolation] = []
    _walk(message, "", found)
    return found[:MAX_VIOLATIONS]


class MalformedRequest:
    """What `tolerant_deserializer` hands on for bytes that are no message of the method's
    request type; `check_request` refuses it as INVALID_ARGUMENT."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def tolerant_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, except that bytes it cannot parse become a MalformedRequest instead of
    an exception (which grpc answers as UNKNOWN, naming the exception's class)."""
    if deserializer is None:
        return None
    type_name = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    type_name = type_name.full_name if type_name is not None else "request"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - DecodeError, or whatever a parser raises on garbage
            return MalformedRequest(type_name)

    return deserialize


def check_request(message) -> None:
    """Raises one InvalidArgument naming every bad field of `message`, if it has any."""
    if type(message) is MalformedRequest:
        raise errors.InvalidArgument(f"the request is not a valid {message.type_name} message",
                                     reason="MALFORMED_REQUEST")
    if _plan(message.DESCRIPTOR) is None or _clean(message):
        return
    found = request_violations(message)
    if found:
        errors.collect(found)


# The fast pass: the same walk without building a path per field (most of the cost), asking
# only whether anything is wrong. Paths are built by `request_violations` when it is.

def _clean(message) -> bool:
    plan = _plans.get(message.DESCRIPTOR)
    if plan is None:
        plan = _plan(message.DESCRIPTOR)
        if plan is None:
            return True
    for name, kind, shape, data in plan:
        if shape == _SINGLE:
            value = getattr(message, name)
            if value and not _value_clean(kind, data, value):
                return False
        elif shape == _PRESENT:
            if message.HasField(name) and not _value_clean(kind, data, getattr(message, name)):
                return False
        elif shape == _ONEOF:
            which = message.WhichOneof(name)
            member = data.get(which) if which else None
            if member is not None and not _value_clean(member[0], member[1], getattr(message, which)):
                return False
        else:
            values = getattr(message, name)
            if values:
                for item in (values if shape == _REPEATED else values.values()):
                    if not _value_clean(kind, data, item):
                        return False
    return True


def _value_clean(kind: int, data: Any, value: Any) -> bool:
    if kind == _MESSAGE:
        return _clean(value)
    if kind == _ENUM:
        return value in data
    if kind == _STRUCT:
        return all(_json_clean(item) for item in value.fields.values())
    if kind == _VALUE:
        return _json_clean(value)
    if kind == _LIST_VALUE:
        return all(_json_clean(item) for item in value.values)
    if kind == _TIMESTAMP:
        return timestamp_problem(value.seconds, value.nanos) is None
    return duration_problem(value.seconds, value.nanos, minimum=None) is None


_INFINITIES = (float("inf"), float("-inf"))


def _json_clean(value) -> bool:
    which = value.WhichOneof("kind")
    if which == "number_value":
        number = value.number_value
        return number == number and number not in _INFINITIES and (
            not number or not -SMALLEST_NORMAL_DOUBLE < number < SMALLEST_NORMAL_DOUBLE)
    if which == "struct_value":
        return all(_json_clean(item) for item in value.struct_value.fields.values())
    if which == "list_value":
        return all(_json_clean(item) for item in value.list_value.values)
    return which != "null_value" or value.null_value == 0


def _walk(message, path: str, found: list[FieldViolation]) -> None:
    plan = _plans.get(message.DESCRIPTOR)
    if plan is None:
        plan = _plan(message.DESCRIPTOR)
        if plan is None:
            return
    # Only the planned fields are read (getattr/HasField), never ListFields: that would turn
    # every string field, a whole prompt included, into a Python str.
    for name, kind, shape, data in plan:
        if shape == _SINGLE:
            value = getattr(message, name)
            if value:  # 0 and 0.0 are always valid
                _check(kind, data, value, f"{path}.{name}" if path else name, found)
        elif shape == _PRESENT:
            if message.HasField(name):
                _check(kind, data, getattr(message, name), f"{path}.{name}" if path else name, found)
        elif shape == _ONEOF:
            which = message.WhichOneof(name)
            member = data.get(which) if which else None
            if member is not None:
                _check(member[0], member[1], getattr(message, which), f"{path}.{which}" if path else which, found)
        elif shape == _REPEATED:
            values = getattr(message, name)
            if values:
                field = f"{path}.{name}" if path else name
                for i, item in enumerate(values):
                    _check(kind, data, item, f"{field}[{i}]", found)
        else:
            values = getattr(message, name)
            if values:
                field = f"{path}.{name}" if path else name
                for key, item in values.items():
                    _check(kind, data, item, f"{field}[{_key(key)}]", found)
        if len(found) >= MAX_VIOLATIONS:
            return


def _key(key: Any) -> str:
    return repr(key[:_KEY_CHARS] if isinstance(key, str) else key)


def _check(kind: int, data: Any, value: Any, path: str, found: list[FieldViolation]) -> None:
    if kind == _MESSAGE:
        _walk(value, path, found)
        return
    problem = None
    if kind == _ENUM:
        if value not in data:
            problem = f"{value} is not a defined value of this enum"
    elif kind == _TIMESTAMP:
        problem = timestamp_problem(value.seconds, value.nanos)
    elif kind == _DURATION:
        problem = duration_problem(value.seconds, value.nanos, minimum=None)
    elif kind == _STRUCT:
        _struct(value, path, found)
    elif kind == _VALUE:
        _value(value, path, found)
    else:
        _list(value, path, found)
    if problem:
        found.append(FieldViolation(path, problem))


# google.protobuf.Struct/Value/ListValue are JSON: name their members as JSON paths
# (`tools[0].function.parameters.properties.n.minimum`), not as `fields['x'].number_value`.

def _struct(struct, path: str, found: list[FieldViolation]) -> None:
    for key, item in struct.fields.items():
        _value(item, f"{path}.{key[:_KEY_CHARS]}", found)
        if len(found) >= MAX_VIOLATIONS:
            return


def _list(values, path: str, found: list[FieldViolation]) -> None:
    for i, item in enumerate(values.values):
        _value(item, f"{path}[{i}]", found)
        if len(found) >= MAX_VIOLATIONS:
            return


def _value(value, path: str, found: list[FieldViolation]) -> None:
    which = value.WhichOneof("kind")
    if which == "number_value":
        problem = float_problem(value.number_value)
        if problem:
            found.append(FieldViolation(path, problem))
    elif which == "struct_value":
        _struct(value.struct_value, path, found)
    elif which == "list_value":
        _list(value.list_value, path, found)
    elif which == "null_value" and value.null_value != 0:
        found.append(FieldViolation(path, f"{value.null_value} is not a defined value of NullValue"))
