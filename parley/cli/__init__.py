"""The `parley` command: chat, sessions, files, keys, usage and models, over the gateway."""

from parley.cli._main import main

__all__ = ["main"]
