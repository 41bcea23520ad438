"""Prompt templates: instructions may name variables as `{{name}}`; a run fills them in.

Every variable the text names needs a value and every value must be named, so a typo on
either side is an INVALID_ARGUMENT naming it rather than a prompt with a hole in it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from services.runtime import errors
from services.runtime.errors import FieldViolation

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
MAX_VARIABLES = 64
NAME_MAX_CHARS = 64
VALUE_MAX_CHARS = 32_768


def variables_in(*texts: str) -> list[str]:
    """The variable names the texts use, in order of first use."""
    names: dict[str, None] = {}
    for text in texts:
        for match in _VARIABLE.finditer(text):
            names.setdefault(match.group(1), None)
    return list(names)


def render(text: str, values: Mapping[str, str]) -> str:
    return _VARIABLE.sub(lambda m: values[m.group(1)], text)


def check(texts: tuple[str, ...], values: Mapping[str, str], field: str = "variables") -> None:
    named = variables_in(*texts)
    violations: list[FieldViolation] = []
    if len(values) > MAX_VARIABLES:
        violations.append(FieldViolation(field, f"has more than {MAX_VARIABLES} values"))
    for name in named:
        if name not in values:
            violations.append(FieldViolation(f"{field}[{name!r}]",
                                             f"the instructions use {{{{{name}}}}} but the run gives it no value"))
    for name, value in values.items():
        if name not in named:
            violations.append(FieldViolation(f"{field}[{name[:NAME_MAX_CHARS]!r}]",
                                             "is not a variable the instructions use"))
        elif len(value) > VALUE_MAX_CHARS:
            violations.append(FieldViolation(f"{field}[{name!r}]", f"must have at most {VALUE_MAX_CHARS} characters"))
        elif "\x00" in value:
            violations.append(FieldViolation(f"{field}[{name!r}]", "must not contain NUL characters"))
    if violations:
        raise errors.InvalidArgument(
            "; ".join(f"{v.field}: {v.description}" for v in violations[:5]),
            reason="TEMPLATE_VARIABLE_MISSING" if any("no value" in v.description for v in violations)
            else "TEMPLATE_VARIABLE_UNKNOWN",
            field_violations=violations,
        )
