"""The channel to a gateway: credentials on every call, and retries of idempotent methods
through gRPC's service config (the channel retries UNAVAILABLE with backoff by itself, so
no call site needs a retry loop)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

# Reads and other calls that are safe to repeat. Streams are retried only before their
# first response arrives, which gRPC guarantees.
IDEMPOTENT: dict[str, Sequence[str]] = {
    "parley.llm.v1.LLMService": ("Embed", "ListModels", "GetModel", "CountTokens", "GetUsage", "GetBudget"),
    "parley.sessions.v1.SessionService": ("GetSession", "ListSessions", "GetMessage", "ListMessages",
                                          "ExportSession"),
    "parley.files.v1.FileService": ("GetFile", "ListFiles", "DownloadFile", "GetVectorStore", "ListVectorStores",
                                    "GetVectorStoreFile", "ListVectorStoreFiles", "SearchVectorStore"),
    "parley.assistants.v1.AssistantService": ("GetAssistant", "ListAssistants", "GetRun", "ListRuns",
                                              "ListRunSteps", "WatchRun"),
    "parley.gateway.v1.ApiKeyService": ("ListApiKeys", "GetApiKey", "RevokeApiKey"),
    # A deletion of a user's data is idempotent by contract: repeating it finishes the job.
    "parley.admin.v1.AdminService": ("ListAuditEvents", "ExportAuditEvents", "DeleteUserData"),
}


def service_config(max_attempts: int = 4) -> str:
    names = [{"service": service, "method": method} for service, methods in IDEMPOTENT.items() for method in methods]
    return json.dumps({
        "methodConfig": [{
            "name": names,
            "retryPolicy": {
                "maxAttempts": max_attempts,
                "initialBackoff": "0.2s",
                "maxBackoff": "5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    })


class _Auth:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = list(details.metadata or ()) + list(self._metadata)
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)


class _UnaryUnaryAuth(_Auth, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _UnaryStreamAuth(_Auth, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _StreamUnaryAuth(_Auth, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


class _StreamStreamAuth(_Auth, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


def open_channel(target: str, api_key: str | None, *, tls: bool = False, root_certificates: bytes | None = None,
                 retries: bool = True, max_message_bytes: int = 64 * 1024 * 1024,
                 user_agent: str = "parley-python") -> grpc.aio.Channel:
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.primary_user_agent", user_agent),
        ("grpc.enable_retries", 1 if retries else 0),
        ("grpc.keepalive_time_ms", 30_000),
    ]
    if retries:
        options.append(("grpc.service_config", service_config()))
    if tls:
        credentials = grpc.ssl_channel_credentials(root_certificates)
        if api_key:
            credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(api_key))
        return grpc.aio.secure_channel(target, credentials, options=options)
    interceptors = []
    if api_key:
        metadata = (("authorization", f"Bearer {api_key}"),)
        kinds = (_UnaryUnaryAuth, _UnaryStreamAuth, _StreamUnaryAuth, _StreamStreamAuth)
        interceptors = [cls(metadata) for cls in kinds]
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
