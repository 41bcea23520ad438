"""Every RPC of every contract, from the generated descriptors: nothing is listed by hand,
so a method added to a proto is fuzzed on the next run. A service the running suite cannot
reach must be named in UNREACHABLE with the reason, or the coverage test fails."""

from __future__ import annotations

import importlib
from pathlib import Path

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

import parley

# Services no process of the suite serves, each with the reason. Empty: every contract has
# its server in the launcher's table. (The "before" run of docs/fuzzing.md, on the code
# of the start of the day, listed AssistantService and SandboxService here: no server yet.)
UNREACHABLE: dict[str, str] = {}


def all_services() -> list[ServiceDescriptor]:
    root = Path(parley.__file__).parent
    services = []
    for path in sorted(root.glob("*/v*/*_pb2.py")):
        module = importlib.import_module(".".join(path.relative_to(root.parent).with_suffix("").parts))
        services.extend(module.DESCRIPTOR.services_by_name.values())
    return services


# Methods that create come first (their ids feed the rest), those that destroy or cap last.
_CREATES = ("Create", "Upload", "Add", "Append")
_DESTROYS = ("Delete", "Revoke", "Remove", "Rotate", "Set", "Cancel")


def _references(method: MethodDescriptor) -> int:
    """How many ids a request refers to (first two levels): creates that need none go first."""
    def count(desc, depth):
        n = 0
        for fd in desc.fields:
            if fd.name.endswith(("_id", "_ids")):
                n += 1
            elif fd.message_type is not None and depth < 1:
                n += count(fd.message_type, depth + 1)
        return n

    return count(method.input_type, 0)


def _order(method: MethodDescriptor) -> tuple:
    group = 0 if method.name.startswith(_CREATES) else 2 if method.name.startswith(_DESTROYS) else 1
    return group, _references(method) if group == 0 else 0, method.containing_service.full_name, method.name


def all_methods() -> list[MethodDescriptor]:
    return sorted((m for s in all_services() for m in s.methods), key=_order)


def method_id(method: MethodDescriptor) -> str:
    return f"{method.containing_service.name}.{method.name}"


def creates(method: MethodDescriptor) -> bool:
    return method.name.startswith(_CREATES) or method.name.startswith("Rotate")
