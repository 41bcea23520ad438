"""What the deployment tests check the artifacts against, taken from the code itself: the
services (`services/*/__main__.py`), their ports, their settings loaders, and the calls each
makes (its `*_target` settings)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import os
from collections.abc import Iterator
from pathlib import Path

from services.runtime.config import DEFAULT_PORTS, ServerSettings
from services.runtime.pagination import page_token_secret
from services.runtime.server import identity_verifier

ROOT = Path(__file__).resolve().parents[2]
# The services whose caller needs no gateway identity (run with guarded=False).
UNGUARDED = {"gateway"}


def discovered_services() -> list[str]:
    return sorted(path.parent.name for path in (ROOT / "services").glob("*/__main__.py"))


def on_the_bootstrap(service: str) -> bool:
    """A gRPC service on the shared bootstrap (health, metrics port, identity); the others
    (the REST edge) are HTTP servers of their own."""
    return "services.runtime.server import run" in (ROOT / "services" / service / "__main__.py").read_text()


def settings_class(service: str):
    """The service's own settings dataclass (the one with `from_env`), or None."""
    for module_name in (f"services.{service}.app", f"services.{service}.settings"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        for _, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ == module_name and dataclasses.is_dataclass(value) and hasattr(value, "from_env"):
                return value
    return None


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Exactly `env` as the process environment (nothing inherited), restored afterwards."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    page_token_secret.cache_clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        page_token_secret.cache_clear()


@dataclasses.dataclass
class Loaded:
    server: ServerSettings | None  # None for a service off the bootstrap
    settings: object | None

    @property
    def host(self) -> str:
        return self.server.host if self.server is not None else self.settings.host

    @property
    def port(self) -> int:
        return self.server.port if self.server is not None else self.settings.port

    def targets(self) -> dict[str, str]:
        """Callee service → "host:port" this service is configured to call."""
        found: dict[str, str] = {}
        if self.settings is None:
            return found
        for field in dataclasses.fields(self.settings):
            value = getattr(self.settings, field.name)
            if field.name.endswith("_target") and value:
                found[field.name.removesuffix("_target")] = value
            elif field.name == "targets" and isinstance(value, dict):
                found.update({name: target for name, target in value.items() if target})
        return found


def load_settings(service: str, env: dict[str, str]) -> Loaded:
    """Loads every setting `python -m services.<service>` loads at start-up, from `env` alone:
    a missing or bad variable raises ConfigError naming it, as the process would."""
    with environment(env):
        server = None
        if on_the_bootstrap(service):
            server = ServerSettings.from_env(service)
            page_token_secret()
            if service not in UNGUARDED:
                identity_verifier(server)
        cls = settings_class(service)
        return Loaded(server=server, settings=cls.from_env() if cls is not None else None)


def default_port(service: str) -> int:
    if service in DEFAULT_PORTS:
        return DEFAULT_PORTS[service]
    cls = settings_class(service)
    return cls.port  # the dataclass default
