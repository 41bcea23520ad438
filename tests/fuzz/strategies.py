"""Hypothesis strategies built from protobuf message descriptors, aimed at the edges.

`request_cases(method)` draws cases for one RPC: mostly schema-shaped requests (a nested
"spec" of field values, turned into a real message at send time by `build_message`), and
some malformed raw bytes for the same method. Nothing here knows a particular service: the
shape of each request comes from its descriptor, and a few field-name conventions of the
contracts (`*_id`, `page_token`, `model`, `update_mask`) steer values towards ids and tokens
the servers really issued (`Pools`, filled from successful responses as the run goes).

Edges drawn on purpose: unknown enum numbers, NaN/±Inf/subnormal doubles (also inside
google.protobuf.Struct), Timestamps and Durations out of range (years 1 and 9999, negative
nanos, huge seconds), 20,000-character strings, control characters and NUL, page tokens of
5,000 nested brackets or valid-looking base64 JSON with wrong types and 2^63 positions, ids
of the wrong shape and ids owned by another user, empty and huge repeated fields.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor as d
from google.protobuf import duration_pb2, field_mask_pb2, message, message_factory, struct_pb2, timestamp_pb2
from hypothesis import strategies as st

# ---- edge values --------------------------------------------------------------------------

HUGE = 20_000
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)

EDGE_STRINGS = [
    "", " ", "\x00", "a\x00b", "\x00" * 64, "\x01\x02\x07\x08\x0b\x0c\x1b[31m\x7f", "\r\n\t", "\u202e\u200b\ufeff",
    "🙂" * 50, "é" * HUGE, "a" * HUGE, "%s%n%x", "' OR 1=1 --", "../../../etc/passwd", "null", "true", "-1",
    "9" * 40, "1e309", "NaN", "*", "%", "_", "\\", "{}", "[]", "<script>",
]
WRONG_SHAPE_IDS = [
    "", "0", "-1", "*", "%", "_%", "..", "../x", "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff", "123e4567-e89b-12d3-a456-426614174000", "x" * 300, "a" * HUGE,
    "sess_\x00", "file-abc", "vs_" + "9" * 30, "user_2abcDEF", "1; DROP TABLE sessions", "id with spaces",
    "0x7fffffffffffffff", str(2**63), str(-(2**63)), "🙂",
]
ODD_MODELS = [
    "", "/", "openai/", "/gpt-4o-mini", "nope/model", "local/", "ollama/" + "x" * 200, "openai/" + "x" * HUGE,
    "local/echo\x00", "LOCAL/ECHO", "openai/gpt-4o-mini ", "a/b/c", "\x00", "ollama/../../x", "*",
]
# Page tokens: unparseable, deeply nested, base64 of JSON with every kind of wrong value.
_BRACKETS = "[" * 5000 + "]" * 5000
_WRONG_JSON_VALUES = [2**63, -(2**63) - 1, -1, 1e308, float("nan"), "x", "", None, [], {}, True,
                      "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z", "\x00", "a" * 5000, [[[[]]]]]


def _b64(text: str, urlsafe: bool = True) -> str:
    raw = text.encode()
    return (base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)).decode().rstrip("=" if urlsafe else "")


def _json_token(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


_TOKEN_KEYS = ["p", "pos", "position", "offset", "o", "t", "time", "ts", "id", "k", "key", "after", "before", "v",
               "s", "seq", "n", "c", "cursor", "create_time", "last_id"]
EDGE_TOKENS = [
    "", "0", "-1", "=", "==", "%%%", "\x00", "a" * HUGE, _BRACKETS, "{" * 5000 + "}" * 5000, _b64(_BRACKETS),
    _b64(_BRACKETS, urlsafe=False), _b64("{" * 5000), _b64("null"), _b64("[]"), _b64("{}"), _b64('"x"'),
    _b64(str(2**63)), _b64("1e999"), _b64("NaN"), "eyJ", "!!!!", base64.b64encode(b"\xff\xfe\x00").decode(),
    *(_b64(_json_token({key: value})) for key in ("p", "offset", "t", "id", "k") for value in _WRONG_JSON_VALUES),
    *(_b64(_json_token([value, value])) for value in _WRONG_JSON_VALUES[:8]),
]
DOUBLES = [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1e-310, 2.2250738585072014e-308,
           1.7976931348623157e308, -1.7976931348623157e308, 1e-45, 0.5, 1.0, 2.0, -1.0, 1e20, 100.0]
FLOATS32 = [float("nan"), float("inf"), float("-inf"), -0.0, 1e-45, 1.1754942e-38, 3.4028235e38, 0.5, 1.0, 2.0, -1.0]
TIMESTAMP_SECONDS = [0, -1, 1, -62135596800, -62135596801, 253402300799, 253402300800, 2**62, -(2**62),
                     2**63 - 1, -(2**63), 1_700_000_000, 4_102_444_800, 10**12]
DURATION_SECONDS = [0, -1, 1, 60, 315576000000, 315576000001, -315576000000, -315576000001, 2**62, -(2**62),
                    2**63 - 1, -(2**63), 86400 * 365 * 100]
NANOS = [0, 1, -1, 999_999_999, 1_000_000_000, -999_999_999, -1_000_000_000, 2**31 - 1, -(2**31), 500_000_000]
EDGE_BYTES = [b"", b"\x00", b"\xff\xfe\xfd", b"\x00" * 1024, b"%PDF-1.4\n%broken", b"PK\x03\x04" + b"\x00" * 40,
              b"\xef\xbb\xbfhello", b"a" * 100_000, b"<html><body>" * 100]
ENUM_UNKNOWN = [99, -1, 2**31 - 1, -(2**31), 1000, 7]


def _pick(choices: list[st.SearchStrategy]) -> st.SearchStrategy:
    """One of `choices`, drawn in proportion to how often each appears. The strategies are
    built once (a flatmap that builds new ones per draw makes hypothesis re-validate them)."""
    return st.integers(0, len(choices) - 1).flatmap(choices.__getitem__)


def _edge_ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in (0, 1, -1, 2, 10, 100, 1000, 10**6, 2**31 - 1, -(2**31), 2**32 - 1, 2**53, 2**62,
                                2**63 - 1, -(2**63), 2**64 - 1, lo, hi, lo + 1, hi - 1) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(-5, 500).filter(lambda v: lo <= v <= hi))


# ---- references resolved at send time -----------------------------------------------------


@dataclass(frozen=True)
class PoolRef:
    """An id (or token) the servers issued, picked when the request is built: `key` is the
    pool ("session_id", or "*" for any id), `owner` "self" or "other" (another user's)."""

    key: str
    owner: str
    index: int


@dataclass(frozen=True)
class TokenMutation:
    """A real next_page_token with one decoded value replaced by a wrong one."""

    index: int
    replacement_index: int


@dataclass
class Pools:
    """Ids and tokens seen in successful responses, per user, for the requests to come."""

    by_user: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    protected: set[str] = field(default_factory=set)  # ids a case must never touch (the suite's own keys)
    limit: int = 400

    def add(self, user: str, key: str, value: str) -> None:
        if not value or value in self.protected:
            return
        pool = self.by_user.setdefault(user, {}).setdefault(key, [])
        if value not in pool:
            pool.append(value)
            if len(pool) > self.limit:
                del pool[: len(pool) - self.limit]

    def pick(self, user: str, key: str, index: int) -> str | None:
        pools = self.by_user.get(user, {})
        pool = pools.get(key)
        return pool[index % len(pool)] if pool else None


def harvest(msg: message.Message, user: str, pools: Pools, depth: int = 0) -> None:
    """Files every id and page token of a response under the user who got it."""
    if depth > 8:
        return
    type_key = _snake(msg.DESCRIPTOR.name) + "_id"
    for fd, value in msg.ListFields():
        if fd.type == d.FieldDescriptor.TYPE_STRING:
            values = list(value) if _is_repeated(fd) else [value]
            for v in values:
                if fd.name == "id":
                    pools.add(user, type_key, v)
                    pools.add(user, "*", v)
                elif fd.name.endswith("_id"):
                    pools.add(user, fd.name, v)
                    pools.add(user, "*", v)
                elif fd.name == "next_page_token":
                    pools.add(user, "page_token", v)
        elif fd.type == d.FieldDescriptor.TYPE_MESSAGE and not fd.message_type.GetOptions().map_entry:
            for item in (value if _is_repeated(fd) else [value]):
                harvest(item, user, pools, depth + 1)


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def _is_repeated(fd: d.FieldDescriptor) -> bool:
    repeated = getattr(fd, "is_repeated", None)  # protobuf >= 6; `label` before
    return repeated if repeated is not None else fd.label == fd.LABEL_REPEATED


def mutate_token(token: str, replacement: Any) -> str:
    """Decodes a token (urlsafe or standard base64, JSON inside), replaces every leaf with
    `replacement`, re-encodes it the same way; a token that is not JSON gets a flipped byte."""
    padded = token + "=" * (-len(token) % 4)
    for decode, encode in ((base64.urlsafe_b64decode, base64.urlsafe_b64encode), (base64.b64decode, base64.b64encode)):
        try:
            raw = decode(padded)
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue

        def swap(v):
            if isinstance(v, dict):
                return {k: swap(x) for k, x in v.items()}
            if isinstance(v, list):
                return [swap(x) for x in v]
            return replacement

        out = encode(json.dumps(swap(value), allow_nan=True).encode()).decode()
        return out.rstrip("=") if not token.endswith("=") else out
    if not token:
        return "A"
    return token[:-1] + ("A" if token[-1] != "A" else "B")


# ---- strategies from descriptors ----------------------------------------------------------

MAX_DEPTH = 5


@dataclass
class Context:
    """What field-level strategies may refer to."""

    field_names: list[str]  # every field name in the request's file, for update masks


def _string_strategy(fd: d.FieldDescriptor) -> st.SearchStrategy:
    name = fd.name
    text = st.one_of(st.text(max_size=24), st.text(max_size=24), st.text(max_size=24), st.sampled_from(EDGE_STRINGS),
                     st.builds(lambda ch, n: ch * n, st.sampled_from(["a", "\x00", "é", "\n", "{", "🙂"]),
                               st.sampled_from([HUGE, 5000, 257, 65]) ))
    if name.endswith("page_token"):
        return st.one_of(st.sampled_from(EDGE_TOKENS),
                         st.builds(PoolRef, st.just("page_token"), st.sampled_from(["self", "self", "other"]),
                                   st.integers(0, 10_000)),
                         st.builds(TokenMutation, st.integers(0, 10_000), st.integers(0, len(_WRONG_JSON_VALUES) - 1)),
                         text)
    if name == "id" or name.endswith("_id") or name.endswith("_ids"):
        key = name[:-1] if name.endswith("_ids") else name
        return st.one_of(
            st.builds(PoolRef, st.just(key), st.sampled_from(["self", "self", "self", "other"]), st.integers(0, 10_000)),
            st.builds(PoolRef, st.just("*"), st.sampled_from(["self", "other"]), st.integers(0, 10_000)),
            st.sampled_from(WRONG_SHAPE_IDS),
            st.uuids().map(str),
            text,
        )
    if name in ("model", "embedding_model") or name.endswith("_model") or name.endswith("_models"):
        return st.one_of(
            st.builds(PoolRef, st.just("model_id"), st.just("self"), st.integers(0, 10_000)),
            st.builds(PoolRef, st.just("model_id"), st.just("self"), st.integers(0, 10_000)),
            st.sampled_from(ODD_MODELS),
            st.sampled_from(["openai/gpt-4-turbo-preview", "openai/gpt-3.5-turbo", "anthropic/claude-3-opus-20240229",
                             "openai/gpt-9-new", "mistral/brand-new", "local/echo"]),
            text,
        )
    if "user" in name:
        return st.one_of(st.sampled_from(["*", "%", "", "fuzz-alice", "fuzz-mallory", "dev", "admin", "x" * 300,
                                          "user\x00", "../"]), text)
    return text


def _scalar_strategy(fd: d.FieldDescriptor) -> st.SearchStrategy:
    t = fd.type
    T = d.FieldDescriptor
    if t == T.TYPE_STRING:
        return _string_strategy(fd)
    if t == T.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.sampled_from(EDGE_BYTES))
    if t == T.TYPE_BOOL:
        return st.booleans()
    if t in (T.TYPE_DOUBLE,):
        return st.one_of(st.sampled_from(DOUBLES), st.floats(allow_nan=True, allow_infinity=True))
    if t in (T.TYPE_FLOAT,):
        return st.one_of(st.sampled_from(FLOATS32), st.floats(width=32, allow_nan=True, allow_infinity=True))
    if t in (T.TYPE_INT32, T.TYPE_SINT32, T.TYPE_SFIXED32):
        return _edge_ints(*INT32)
    if t in (T.TYPE_INT64, T.TYPE_SINT64, T.TYPE_SFIXED64):
        return _edge_ints(*INT64)
    if t in (T.TYPE_UINT32, T.TYPE_FIXED32):
        return _edge_ints(*UINT32)
    if t in (T.TYPE_UINT64, T.TYPE_FIXED64):
        return _edge_ints(*UINT64)
    if t == T.TYPE_ENUM:
        known = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(known), st.sampled_from(known), st.sampled_from(ENUM_UNKNOWN))
    raise AssertionError(f"no strategy for field type {t} of {fd.full_name}")


# Well-known types get values directly (they are the edges most worth reaching).

def _timestamp() -> st.SearchStrategy:
    return st.one_of(
        st.builds(lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n),
                  st.sampled_from(TIMESTAMP_SECONDS), st.sampled_from(NANOS)),
        st.builds(lambda s: timestamp_pb2.Timestamp(seconds=s), st.integers(-62135596800, 253402300799)),
        st.just(timestamp_pb2.Timestamp(seconds=253402300799, nanos=999_999_000)),  # 9999-12-31T23:59:59.999999Z
    )


def _duration() -> st.SearchStrategy:
    return st.one_of(
        st.builds(lambda s, n: duration_pb2.Duration(seconds=s, nanos=n),
                  st.sampled_from(DURATION_SECONDS), st.sampled_from(NANOS)),
        st.builds(lambda s: duration_pb2.Duration(seconds=s), st.integers(-(10**6), 10**8)),
    )


def _value_leaf() -> st.SearchStrategy:
    return st.one_of(
        st.builds(lambda v: struct_pb2.Value(number_value=v),
                  st.one_of(st.sampled_from(DOUBLES), st.floats(allow_nan=True, allow_infinity=True))),
        st.builds(lambda v: struct_pb2.Value(string_value=v), st.one_of(st.text(max_size=8), st.sampled_from(EDGE_STRINGS))),
        st.builds(lambda v: struct_pb2.Value(bool_value=v), st.booleans()),
        st.just(struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)),
        st.just(struct_pb2.Value()),  # no kind set at all
    )


def _struct_from(items) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    for key, value in items:
        out.fields[key].CopyFrom(value)
    return out


def _list_from(values) -> struct_pb2.Value:
    out = struct_pb2.Value()
    out.list_value.values.extend(values)
    return out


def _deep_value(depth: int, in_list: bool) -> struct_pb2.Value:
    value = struct_pb2.Value(number_value=float("nan"))
    for _ in range(depth):
        if in_list:
            value = _list_from([value])
        else:
            wrapped = struct_pb2.Value()
            wrapped.struct_value.fields["a"].CopyFrom(value)
            value = wrapped
    return value


def _values() -> st.SearchStrategy:
    keys = st.one_of(st.text(max_size=6), st.sampled_from(["", "\x00", "type", "properties", "$ref", "a" * 5000]))
    return st.one_of(
        st.recursive(
            _value_leaf(),
            lambda children: st.one_of(
                st.builds(_list_from, st.lists(children, max_size=3)),
                st.builds(lambda s: struct_pb2.Value(struct_value=s),
                          st.builds(_struct_from, st.lists(st.tuples(keys, children), max_size=3))),
            ),
            max_leaves=8,
        ),
        st.builds(_deep_value, st.sampled_from([8, 16, 24]), st.booleans()),
    )


def _struct() -> st.SearchStrategy:
    keys = st.one_of(st.text(max_size=6), st.sampled_from(["", "type", "properties", "required", "a" * 300]))
    return st.builds(_struct_from, st.lists(st.tuples(keys, _values()), max_size=4))


def _field_mask(ctx: Context) -> st.SearchStrategy:
    paths = st.one_of(st.sampled_from(ctx.field_names or ["name"]),
                      st.sampled_from(["", "*", "a.b.c", "name\x00", "x" * 1000, "id", "user_id", "create_time",
                                       "metadata.key", "UPPER", "name,title"]))
    return st.builds(lambda ps: field_mask_pb2.FieldMask(paths=ps), st.lists(paths, max_size=4))


WELL_KNOWN = {
    "google.protobuf.Timestamp": lambda ctx: _timestamp(),
    "google.protobuf.Duration": lambda ctx: _duration(),
    "google.protobuf.Struct": lambda ctx: _struct(),
    "google.protobuf.Value": lambda ctx: _values(),
    "google.protobuf.ListValue": lambda ctx: st.builds(lambda v: v.list_value, st.builds(_list_from,
                                                                                          st.lists(_values(), max_size=3))),
    "google.protobuf.FieldMask": _field_mask,
}



# ---- plausible values: requests that pass validation, to reach the code behind it ----------

_WORDS = ["hello", "world", "test", "a.txt", "notes.md", "text/plain", "application/json", "user", "report",
          "summary", "q", "x"]


# Plausible values the contracts' validation insists on, by field name.
_TAME_BY_NAME = {
    "sha256": [""],
    "media_type": ["text/plain", "text/markdown", "image/png", "application/json"],
    "mime_type": ["text/plain", "image/png"],
    "content_type": ["text/plain"],
    "url": ["https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="],
    "image_url": ["https://example.com/cat.png"],
    "filename": ["a.txt", "notes.md", "data.csv"],
}


def _tame_string(fd: d.FieldDescriptor) -> st.SearchStrategy:
    name = fd.name
    if name in _TAME_BY_NAME:
        return st.sampled_from(_TAME_BY_NAME[name])
    if name.endswith("page_token"):
        return st.one_of(st.just(""), st.builds(PoolRef, st.just("page_token"), st.just("self"), st.integers(0, 10_000)))
    if name == "id" or name.endswith("_id") or name.endswith("_ids"):
        key = name[:-1] if name.endswith("_ids") else name
        return st.builds(PoolRef, st.just(key), st.just("self"), st.integers(0, 10_000))
    if name in ("model", "embedding_model") or name.endswith("_model") or name.endswith("_models"):
        return st.one_of(st.builds(PoolRef, st.just("model_id"), st.just("self"), st.integers(0, 10_000)),
                         st.just("local/echo"), st.just("openai/gpt-4o-mini"))
    if "user" in name:
        return st.sampled_from(["fuzz-alice", ""])
    return st.one_of(st.sampled_from(_WORDS), st.text(alphabet="abcdefghij klmnop", min_size=1, max_size=12))


def _tame_scalar(fd: d.FieldDescriptor) -> st.SearchStrategy:
    T = d.FieldDescriptor
    t = fd.type
    if t == T.TYPE_STRING:
        return _tame_string(fd)
    if t == T.TYPE_BYTES:
        return st.sampled_from([b"hello world\n", b"# title\n\nsome text about parley\n", b"a,b\n1,2\n"])
    if t == T.TYPE_BOOL:
        return st.booleans()
    if t in (T.TYPE_DOUBLE, T.TYPE_FLOAT):
        return st.sampled_from([0.0, 0.5, 1.0])
    if t == T.TYPE_ENUM:
        known = [v.number for v in fd.enum_type.values if v.number != 0] or [0]
        return st.sampled_from(known)
    if fd.name.endswith("size_bytes"):
        return st.just(0)  # "not given": a size that must match the content cannot be guessed
    return st.integers(0, 20)


_TAME_WELL_KNOWN = {
    "google.protobuf.Timestamp": st.builds(lambda s: timestamp_pb2.Timestamp(seconds=s),
                                           st.integers(1_700_000_000, 1_800_000_000)),
    "google.protobuf.Duration": st.builds(lambda s: duration_pb2.Duration(seconds=s), st.integers(1, 3600)),
    "google.protobuf.Struct": st.sampled_from([
        _struct_from([]),
        _struct_from([("type", struct_pb2.Value(string_value="object")),
                      ("properties", struct_pb2.Value(struct_value=_struct_from([])))]),
    ]),
    "google.protobuf.Value": st.sampled_from([struct_pb2.Value(string_value="x"), struct_pb2.Value(number_value=1)]),
}


def _single_strategy(fd: d.FieldDescriptor, depth: int, ctx: Context, tame: bool) -> st.SearchStrategy:
    if fd.type == d.FieldDescriptor.TYPE_MESSAGE:
        return message_spec(fd.message_type, depth + 1, ctx, tame)
    return _tame_scalar(fd) if tame else _scalar_strategy(fd)


def _repeated(element: st.SearchStrategy, is_message: bool, tame: bool) -> st.SearchStrategy:
    if tame:
        return st.lists(element, min_size=1, max_size=2)
    huge = 40 if is_message else 2000
    return st.one_of(
        st.lists(element, max_size=3),
        st.just([]),
        st.builds(lambda x, n: [x] * n, element, st.sampled_from([huge, 33])),
    )


def field_strategy(fd: d.FieldDescriptor, depth: int, ctx: Context, tame: bool = False) -> st.SearchStrategy:
    if fd.type == d.FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
        key_fd = fd.message_type.fields_by_name["key"]
        value_fd = fd.message_type.fields_by_name["value"]
        pairs = st.tuples(_single_strategy(key_fd, depth, ctx, tame), _single_strategy(value_fd, depth, ctx, tame))
        if tame:
            return st.lists(pairs, max_size=2)
        return st.one_of(st.lists(pairs, max_size=3), st.builds(lambda v, n: [(f"k{i}", v) for i in range(n)],
                                                               _single_strategy(value_fd, depth, ctx, tame),
                                                               st.sampled_from([500, 20])))
    if _is_repeated(fd):
        return _repeated(_single_strategy(fd, depth, ctx, tame), fd.type == d.FieldDescriptor.TYPE_MESSAGE, tame)
    return _single_strategy(fd, depth, ctx, tame)


_MESSAGE_CACHE: dict[tuple, st.SearchStrategy] = {}


def message_spec(desc: d.Descriptor, depth: int, ctx: Context, tame: bool = False, full: bool = False,
                 oneof_pick: str = "any") -> st.SearchStrategy:
    """A strategy of specs for `desc`: a Message (well-known types) or {field name: value}.
    `tame` draws plausible values only (to get past validation) for some fields, or for all
    of them when `full`; otherwise anything goes. A tame message sets at most one member of
    each oneof: `oneof_pick` "first" or "rest" says which (the contracts' client streams
    send their metadata member first, then the others)."""
    if tame and desc.full_name in _TAME_WELL_KNOWN:
        return _TAME_WELL_KNOWN[desc.full_name]
    if desc.full_name in WELL_KNOWN:
        return WELL_KNOWN[desc.full_name](ctx)
    if depth > (2 if tame else MAX_DEPTH):
        return st.just({})
    cache_key = (desc.full_name, depth, id(ctx), tame, full, oneof_pick)
    if cache_key not in _MESSAGE_CACHE:
        strategies = {fd.name: st.deferred(lambda fd=fd: field_strategy(fd, depth, ctx, tame)) for fd in desc.fields}
        if not tame:
            _MESSAGE_CACHE[cache_key] = st.fixed_dictionaries({}, optional=strategies)
        else:
            oneofs = [o for o in desc.oneofs if not _synthetic(o)]
            in_oneof = {fd.name for o in oneofs for fd in o.fields}
            plain = {n: s for n, s in strategies.items() if n not in in_oneof}
            if full:
                base = st.fixed_dictionaries(plain)
            else:
                fields = desc.fields_by_name
                base = st.builds(lambda *pairs: {k: v for k, v in pairs if k is not None},
                                 *(_maybe(name, strategy, _likely(fields[name], depth)) for name, strategy in plain.items()))

            def members(o):
                names = [fd.name for fd in o.fields]
                if oneof_pick == "first":
                    names = names[:1]
                elif oneof_pick == "rest" and len(names) > 1:
                    names = names[1:]
                return _pick([st.tuples(st.just(name), strategies[name]) for name in names])

            choices = [members(o) for o in oneofs]
            _MESSAGE_CACHE[cache_key] = st.builds(lambda b, *picked: {**b, **dict(picked)}, base, *choices)
    return _MESSAGE_CACHE[cache_key]


_LIKELY_NAMES = {"query", "model", "text", "name", "title", "url", "filename", "content", "messages", "inputs"}


def _likely(fd: d.FieldDescriptor, depth: int) -> bool:
    """Fields a request usually cannot do without: its first field (the parent or target id
    in these contracts), enums (roles, purposes), top-level lists of parts, a few names."""
    return (fd.number == 1 or fd.name in _LIKELY_NAMES or fd.type == d.FieldDescriptor.TYPE_ENUM
            or (depth == 0 and _is_repeated(fd) and fd.type == d.FieldDescriptor.TYPE_MESSAGE
                and not fd.message_type.GetOptions().map_entry))


def _maybe(name: str, strategy: st.SearchStrategy, likely: bool) -> st.SearchStrategy:
    """(name, value) three times in four for likely fields, one in six for the rest; else (None, None)."""
    present, absent = st.tuples(st.just(name), strategy), st.just((None, None))
    return _pick([present, present, present, absent] if likely else [absent] * 5 + [present])


def _synthetic(oneof: d.OneofDescriptor) -> bool:
    """The oneof protoc makes for a proto3 `optional` field."""
    synthetic = getattr(oneof, "is_synthetic", None)
    if synthetic is not None:
        return bool(synthetic() if callable(synthetic) else synthetic)
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


_EDGY_TYPES = {d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT, d.FieldDescriptor.TYPE_ENUM,
               d.FieldDescriptor.TYPE_INT64, d.FieldDescriptor.TYPE_UINT64, d.FieldDescriptor.TYPE_SINT64}


def _edgy(fd: d.FieldDescriptor) -> bool:
    """Fields whose edges broke things before: well-known types, floats, enums, 64-bit
    integers, page tokens and ids."""
    if fd.type == d.FieldDescriptor.TYPE_MESSAGE:
        return fd.message_type.full_name in WELL_KNOWN
    return fd.type in _EDGY_TYPES or fd.name.endswith(("page_token", "_id", "_ids"))


def one_edge(desc: d.Descriptor, ctx: Context, oneof_pick: str = "any", edgy_only: bool = False) -> st.SearchStrategy:
    """A plausible request with one of its fields (or, with `edgy_only`, one of its edgy
    fields, here or one message down) wild."""
    tame = message_spec(desc, 0, ctx, tame=True, oneof_pick=oneof_pick)
    fields = list(desc.fields)
    if edgy_only:
        nested = [(fd, sub) for fd in fields if fd.type == d.FieldDescriptor.TYPE_MESSAGE and not _is_repeated(fd)
                  and fd.message_type.full_name not in WELL_KNOWN for sub in fd.message_type.fields if _edgy(sub)]
        top = [(fd, None) for fd in fields if _edgy(fd)]
        choices = top + nested
        if not choices:
            return tame

        def wild_at(pair):
            outer, inner = pair
            if inner is None:
                return st.tuples(st.just(outer.name), field_strategy(outer, 0, ctx))
            sub_tame = message_spec(outer.message_type, 1, ctx, tame=True)
            return st.tuples(st.just(outer.name), st.builds(lambda spec, v: {**spec, inner.name: v}, sub_tame,
                                                            field_strategy(inner, 1, ctx)))

        wild_field = _pick([wild_at(pair) for pair in choices])
    else:
        if not fields:
            return tame
        wild_field = _pick([st.tuples(st.just(fd.name), field_strategy(fd, 0, ctx)) for fd in fields])
    return st.builds(lambda spec, pair: {**spec, pair[0]: pair[1]}, tame, wild_field)


def request_specs(desc: d.Descriptor, ctx: Context, oneof_pick: str = "any") -> st.SearchStrategy:
    """Wild, plausible (some fields or all) and plausible-but-one-field-wild requests."""
    return st.one_of(
        message_spec(desc, 0, ctx),
        message_spec(desc, 0, ctx, tame=True, oneof_pick=oneof_pick),
        message_spec(desc, 0, ctx, tame=True, full=True, oneof_pick=oneof_pick),
        one_edge(desc, ctx, oneof_pick),
        one_edge(desc, ctx, oneof_pick, edgy_only=True),
    )


# ---- malformed bytes ----------------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def raw_payloads(desc: d.Descriptor) -> st.SearchStrategy[bytes]:
    """Bytes that are not a valid serialization of `desc` (or are, barely): invalid UTF-8 in
    its string fields, wrong wire types, truncated lengths, 11-byte varints, field number 0,
    unknown groups nested past the parser's recursion limit, plain noise."""
    fields = list(desc.fields) or [None]

    def for_field(fd, kind: int) -> bytes:
        number = fd.number if fd is not None else 1
        if kind == 0:  # invalid UTF-8 in a length-delimited field
            return _tag(number, 2) + _varint(3) + b"\xff\xfe\xc0"
        if kind == 1:  # wrong wire type (varint where length-delimited is expected, or the reverse)
            wire = 2 if fd is not None and fd.type not in (d.FieldDescriptor.TYPE_STRING, d.FieldDescriptor.TYPE_BYTES,
                                                             d.FieldDescriptor.TYPE_MESSAGE) else 0
            return _tag(number, wire) + (_varint(2) + b"ab" if wire == 2 else _varint(1))
        if kind == 2:  # length longer than the data
            return _tag(number, 2) + _varint(10_000) + b"abc"
        if kind == 3:  # an 11-byte varint
            return _tag(number, 0) + b"\xff" * 10 + b"\x01"
        if kind == 4:  # a nested message field holding garbage
            return _tag(number, 2) + _varint(4) + b"\xff\xff\xff\xff"
        if kind == 5:  # 64-bit field cut short
            return _tag(number, 1) + b"\x00\x01"
        return _tag(number, 5) + b"\x00"  # 32-bit field cut short

    structured = st.builds(for_field, st.sampled_from(fields), st.integers(0, 6))
    return st.one_of(
        structured,
        st.builds(lambda a, b: a + b, structured, structured),
        st.binary(min_size=1, max_size=48),
        st.sampled_from([
            b"\x00", b"\x07", b"\x0f\x00", _tag(0, 0) + b"\x01", _tag(536870911, 0) + b"\x01",
            _tag(999, 3) * 200 + _tag(999, 4) * 200,  # groups nested beyond the recursion limit
            _tag(999, 3),  # a group never closed
            _tag(999, 4),  # a group closed that never opened
            b"\xff" * 64,
            (_tag(1, 2) + _varint(2**31)) + b"x",
        ]),
    )


# ---- cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One call: who makes it, and what it sends (specs to build, or raw bytes)."""

    principal: str
    specs: tuple = ()  # one spec per request message (several for client-streaming methods)
    raw: tuple[bytes, ...] | None = None


def request_cases(method: d.MethodDescriptor, principals: list[str]) -> st.SearchStrategy[Case]:
    request = method.input_type
    ctx = Context(field_names=sorted({f.name for m in request.file.message_types_by_name.values() for f in m.fields}))
    count_raw = 3 if method.client_streaming else 1
    principal = st.sampled_from(principals)
    if method.client_streaming:
        # A stream of requests: its first one as the contract expects it (the metadata member),
        # then up to three more; or any sequence at all.
        first, rest = request_specs(request, ctx, "first"), request_specs(request, ctx, "rest")
        ordered = st.builds(lambda a, more: [a, *more], first, st.lists(rest, max_size=3))
        specs = st.one_of(ordered, st.lists(request_specs(request, ctx), max_size=4))
    else:
        specs = st.builds(lambda one: [one], request_specs(request, ctx))
    structured = st.builds(lambda p, specs: Case(p, tuple(specs)), principal, specs)
    raw = st.builds(lambda p, payloads: Case(p, raw=tuple(payloads)), principal,
                    st.lists(raw_payloads(request), min_size=1, max_size=count_raw))
    return _pick([structured] * 7 + [raw])  # about one case in eight is malformed bytes


# ---- building messages --------------------------------------------------------------------


def build_message(desc: d.Descriptor, spec: Any, resolve) -> message.Message:
    """The message `spec` describes; `resolve(value)` turns PoolRef/TokenMutation into strings."""
    cls = message_factory.GetMessageClass(desc)
    if isinstance(spec, message.Message):
        return spec
    msg = cls()
    for name, value in spec.items():
        fd = desc.fields_by_name[name]
        if fd.type == d.FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
            target = getattr(msg, name)
            value_fd = fd.message_type.fields_by_name["value"]
            for k, v in value:
                k = resolve(k)
                if value_fd.type == d.FieldDescriptor.TYPE_MESSAGE:
                    target[k].CopyFrom(build_message(value_fd.message_type, v, resolve))
                else:
                    target[k] = resolve(v)
        elif _is_repeated(fd):
            target = getattr(msg, name)
            if fd.type == d.FieldDescriptor.TYPE_MESSAGE:
                target.extend([build_message(fd.message_type, v, resolve) for v in value])
            else:
                target.extend([resolve(v) for v in value])
        elif fd.type == d.FieldDescriptor.TYPE_MESSAGE:
            getattr(msg, name).CopyFrom(build_message(fd.message_type, value, resolve))
        else:
            setattr(msg, name, resolve(value))
    return msg


def describe(spec: Any, limit: int = 300) -> str:
    """A short, printable rendering of a case's input for the findings list."""

    def shorten(v):
        if isinstance(v, str):
            return v if len(v) <= 40 else f"{v[:20]!r}…({len(v)} chars)"
        if isinstance(v, bytes):
            return v if len(v) <= 40 else f"{v[:20]!r}…({len(v)} bytes)"
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return repr(v)
        if isinstance(v, dict):
            return {k: shorten(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            if len(v) > 4:
                return [shorten(v[0]), f"…×{len(v)}"]
            return [shorten(x) for x in v]
        if isinstance(v, message.Message):
            from google.protobuf import text_format

            text = text_format.MessageToString(v, as_one_line=True)
            return f"<{v.DESCRIPTOR.name} {text[:120]}>"
        return v

    text = repr(shorten(spec))
    return text if len(text) <= limit else text[:limit] + "…"
