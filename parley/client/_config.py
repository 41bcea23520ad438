"""Where the client finds its gateway and credential: arguments, then `PARLEY_TARGET` and
`PARLEY_API_KEY`, then the development key that `make run` writes to `.parley/dev-api-key`
(looked for in the current directory and its parents)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TARGET = "127.0.0.1:50051"
DEV_KEY_FILE = Path(".parley") / "dev-api-key"


def resolve_target(target: str | None = None) -> str:
    return target or os.environ.get("PARLEY_TARGET") or DEFAULT_TARGET


def find_dev_key(start: Path | None = None) -> str | None:
    directory = (start or Path.cwd()).resolve()
    state = os.environ.get("PARLEY_STATE_DIR")
    candidates = [Path(state) / "dev-api-key"] if state else []
    candidates += [d / DEV_KEY_FILE for d in (directory, *directory.parents)]
    for path in candidates:
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value:
            return value
    return None


def resolve_api_key(api_key: str | None = None) -> str | None:
    return api_key or os.environ.get("PARLEY_API_KEY") or find_dev_key()
