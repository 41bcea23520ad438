"""Which public method goes to which backend, needs which scope, and may carry how much.

Built from the generated descriptors, so a method added to a contract is routed without a
change here. Only the public services below are routed: internal ones (the run engine's
RunStoreService, the sandbox) are not, so a client calling them through the gateway gets
UNIMPLEMENTED, and the backends refuse direct callers without a gateway identity.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from parley.assistants.v1 import assistants_service_pb2
from parley.files.v1 import files_service_pb2
from parley.llm.v1 import llm_service_pb2
from parley.sessions.v1 import sessions_service_pb2

KiB = 1024
MiB = 1024 * KiB

# backend name → (service descriptor, scope)
_SERVICES: dict[str, tuple[ServiceDescriptor, str]] = {
    "llm": (llm_service_pb2.DESCRIPTOR.services_by_name["LLMService"], "llm"),
    "sessions": (sessions_service_pb2.DESCRIPTOR.services_by_name["SessionService"], "sessions"),
    "files": (files_service_pb2.DESCRIPTOR.services_by_name["FileService"], "files"),
    "assistants": (assistants_service_pb2.DESCRIPTOR.services_by_name["AssistantService"], "assistants"),
}

# Largest single request message per method, where the default does not fit. Prompts may
# carry images (20 MiB each by the llm contract); uploads come in chunks of at most 1 MiB.
_SIZE_OVERRIDES = {
    "/parley.llm.v1.LLMService/Generate": 32 * MiB,
    "/parley.llm.v1.LLMService/StreamGenerate": 32 * MiB,
    "/parley.llm.v1.LLMService/CountTokens": 32 * MiB,
    "/parley.llm.v1.LLMService/Embed": 16 * MiB,
    "/parley.files.v1.FileService/UploadFile": 1 * MiB + 64 * KiB,
    "/parley.sessions.v1.SessionService/CreateMessage": 2 * MiB,
    "/parley.assistants.v1.AssistantService/CreateRun": 4 * MiB,
    "/parley.assistants.v1.AssistantService/StreamRun": 4 * MiB,
    "/parley.assistants.v1.AssistantService/SubmitToolOutputs": 4 * MiB,
}
DEFAULT_MAX_REQUEST_BYTES = 256 * KiB

# Methods whose responses carry model usage that counts against tokens-per-minute limits.
USAGE_METHODS = {
    "/parley.llm.v1.LLMService/Generate": "unary",
    "/parley.llm.v1.LLMService/StreamGenerate": "stream",
}
# Methods whose prompts the per-key PII policy rewrites before they reach a vendor.
PROMPT_METHODS = {
    "/parley.llm.v1.LLMService/Generate",
    "/parley.llm.v1.LLMService/StreamGenerate",
}


@dataclass(frozen=True)
class Route:
    path: str  # "/parley.llm.v1.LLMService/StreamGenerate"
    service: str
    method: str
    backend: str
    scope: str
    client_streaming: bool
    server_streaming: bool
    max_request_bytes: int
    request_class: type
    response_class: type


def build_routes(default_max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> dict[str, Route]:
    routes: dict[str, Route] = {}
    for backend, (service, scope) in _SERVICES.items():
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            routes[path] = Route(
                path=path,
                service=service.full_name,
                method=method.name,
                backend=backend,
                scope=scope,
                client_streaming=method.client_streaming,
                server_streaming=method.server_streaming,
                max_request_bytes=max(_SIZE_OVERRIDES.get(path, 0), default_max_request_bytes),
                request_class=message_factory.GetMessageClass(method.input_type),
                response_class=message_factory.GetMessageClass(method.output_type),
            )
    return routes


def service_names() -> tuple[str, ...]:
    return tuple(service.full_name for service, _ in _SERVICES.values())


def backend_service(backend: str) -> str:
    return _SERVICES[backend][0].full_name


BACKENDS = tuple(_SERVICES)
