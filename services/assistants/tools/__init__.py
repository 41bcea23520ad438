"""Built-in tool executors, by tool kind. Function tools need no executor: their calls go
back to the caller (RUN_STATUS_REQUIRES_ACTION) or to the function result cache.

Registering an executor is one line in EXECUTORS: the kind, and the `build(deps)` function
of its module (see services/assistants/tools/base.py). A listed module that is not there
(yet) leaves that tool unavailable: assistants and runs that name it answer
FAILED_PRECONDITION, everything else works.
"""

from __future__ import annotations

import importlib
import logging

from services.assistants.tools.base import ToolDeps, ToolExecutor

log = logging.getLogger("parley.assistants.tools")

EXECUTORS: dict[str, str] = {
    "file_search": "services.assistants.tools.file_search:build",
    "code_interpreter": "services.assistants.tools.code_interpreter:build",
}


def load_executors(deps: ToolDeps, registry: dict[str, str] | None = None) -> dict[str, ToolExecutor]:
    """Builds every registered executor whose module exists."""
    executors: dict[str, ToolExecutor] = {}
    for kind, target in (registry or EXECUTORS).items():
        module_name, _, function = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            log.warning("the %s tool is unavailable: %s is not installed", kind, module_name)
            continue
        executor = getattr(module, function)(deps)
        executor.kind = kind
        executors[kind] = executor
    return executors
