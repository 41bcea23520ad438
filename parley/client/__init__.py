"""Parley's async Python client: typed methods over the gateway, credentials on every call,
retries of idempotent calls through gRPC's service config, and helpers for token and run
streams.

    from parley.client import ParleyClient

    async with ParleyClient() as parley:
        async for text in parley.llm.stream("Hello!", model="local/echo"):
            print(text, end="", flush=True)
"""

from parley.client._channel import open_channel, service_config
from parley.client._client import ParleyClient, system_message, user_message
from parley.client._config import DEFAULT_TARGET, resolve_api_key, resolve_target
from parley.client._errors import ErrorDetails, error_details
from parley.client._streams import RunStream, TokenStream

__all__ = [
    "DEFAULT_TARGET",
    "ErrorDetails",
    "ParleyClient",
    "RunStream",
    "TokenStream",
    "error_details",
    "open_channel",
    "resolve_api_key",
    "resolve_target",
    "service_config",
    "system_message",
    "user_message",
]
