"""Configuration from the environment: every setting is a `PARLEY_*` variable.

Each service declares a frozen dataclass of its settings and builds it with these helpers,
so a bad value fails at start-up with the variable's name, not deep inside a request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORTS = {"gateway": 50051, "llm": 50052, "sessions": 50053, "files": 50054, "sandbox": 50055, "assistants": 50056}


class ConfigError(ValueError):
    pass


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = env_str(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = env_str(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = env_str(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def env_secret(name: str) -> bytes | None:
    """A secret given inline (`NAME`) or as a file path (`NAME_FILE`); the file wins."""
    path = env_str(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    value = env_str(name)
    return value.encode() if value else None


def state_dir() -> Path:
    """Where a local deployment keeps its data (`PARLEY_STATE_DIR`, default `.parley`)."""
    return Path(env_str("PARLEY_STATE_DIR", ".parley")).resolve()


@dataclass(frozen=True)
class ServerSettings:
    """What every server needs, whatever it serves."""

    service: str
    host: str
    port: int
    # Seconds in-flight calls get to finish after SIGTERM before they are cancelled.
    shutdown_grace: float
    max_message_bytes: int
    identity_public_key: bytes | None

    @classmethod
    def from_env(cls, service: str) -> ServerSettings:
        upper = service.upper()
        return cls(
            service=service,
            host=env_str(f"PARLEY_{upper}_HOST", env_str("PARLEY_HOST", "127.0.0.1")),
            port=env_int(f"PARLEY_{upper}_PORT", DEFAULT_PORTS.get(service, 0), minimum=0),
            shutdown_grace=env_float("PARLEY_SHUTDOWN_GRACE_SECONDS", 10.0, minimum=0),
            max_message_bytes=env_int("PARLEY_MAX_GRPC_MESSAGE_BYTES", 16 * 1024 * 1024, minimum=1024),
            identity_public_key=env_secret("PARLEY_IDENTITY_PUBLIC_KEY"),
        )
