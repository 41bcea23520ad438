"""Attribute filters (comparison and compound) checked, then compiled to SQL over a jsonb
column. Values always travel as bind parameters; only operators come from a fixed table."""

from __future__ import annotations

import math

from services.files.models import Comparison, Compound, Filter
from services.runtime.errors import FieldViolation

MAX_DEPTH = 5
MAX_FILTERS = 20
MAX_VALUES = 100
_ORDER_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


# Attributes hold only finite numbers (and JSON, hence jsonb, has no others): a NaN or an
# infinity can match nothing, and PostgreSQL would refuse it as a jsonb literal.
_NOT_FINITE = "numbers must be finite"


def _non_finite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _type_of(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


def filter_violations(node: Filter | None, field: str = "filters", depth: int = 1) -> list[FieldViolation]:
    if node is None:
        return []
    if depth > MAX_DEPTH:
        return [FieldViolation(field, f"nests deeper than {MAX_DEPTH} levels")]
    if isinstance(node, Compound):
        found = []
        if node.op not in ("and", "or"):
            found.append(FieldViolation(f"{field}.compound.op", "must be AND or OR"))
        if not 1 <= len(node.filters) <= MAX_FILTERS:
            found.append(FieldViolation(f"{field}.compound.filters", f"must have 1 to {MAX_FILTERS} filters"))
        for i, child in enumerate(node.filters):
            found += filter_violations(child, f"{field}.compound.filters[{i}]", depth + 1)
        return found
    if isinstance(node, Comparison):
        found = []
        where = f"{field}.comparison"
        if not node.key or len(node.key) > 64:
            found.append(FieldViolation(f"{where}.key", "must have 1 to 64 characters"))
        if node.op in ("in", "nin"):
            if not 1 <= len(node.values) <= MAX_VALUES:
                found.append(FieldViolation(f"{where}.values", f"must have 1 to {MAX_VALUES} values for IN and NIN"))
            found += [FieldViolation(f"{where}.values[{i}]", _NOT_FINITE) for i, v in enumerate(node.values) if _non_finite(v)]
        elif node.op in ("eq", "ne", *_ORDER_OPS):
            if node.value is None:
                found.append(FieldViolation(f"{where}.value", "is required"))
            elif node.op in _ORDER_OPS and isinstance(node.value, bool):
                found.append(FieldViolation(f"{where}.value", "GT, GTE, LT and LTE compare numbers or strings, not bools"))
            elif _non_finite(node.value):
                found.append(FieldViolation(f"{where}.value", _NOT_FINITE))
        else:
            found.append(FieldViolation(f"{where}.op", "must be one of EQ, NE, GT, GTE, LT, LTE, IN, NIN"))
        return found
    return [FieldViolation(field, "must set comparison or compound")]


def compile_filter(node: Filter, column: str, args: list) -> str:
    """SQL for `node` over the jsonb `column`; appends bind values to `args`."""
    if isinstance(node, Compound):
        joiner = " AND " if node.op == "and" else " OR "
        return "(" + joiner.join(compile_filter(child, column, args) for child in node.filters) + ")"
    args.append(node.key)
    key = f"${len(args)}::text"
    if node.op in ("in", "nin"):
        args.append(list(node.values))
        values = f"${len(args)}::jsonb[]"
        args.append(sorted({_type_of(v) for v in node.values}))
        types = f"${len(args)}::text[]"
        member = f"({column} -> {key}) = ANY({values})"
        typed = f"jsonb_typeof({column} -> {key}) = ANY({types})"
        return f"({typed} AND {member})" if node.op == "in" else f"({typed} AND NOT {member})"
    kind = _type_of(node.value)
    args.append(kind)
    typed = f"jsonb_typeof({column} -> {key}) = ${len(args)}::text"
    if node.op in ("eq", "ne"):
        args.append(node.value)
        comparison = "=" if node.op == "eq" else "<>"
        return f"({typed} AND ({column} -> {key}) {comparison} ${len(args)}::jsonb)"
    op = _ORDER_OPS[node.op]
    if kind == "number":
        args.append(float(node.value))
        return f"({typed} AND ({column} ->> {key})::double precision {op} ${len(args)}::double precision)"
    args.append(str(node.value))
    return f"({typed} AND ({column} ->> {key}) COLLATE \"C\" {op} ${len(args)}::text)"
