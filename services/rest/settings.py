"""The edge's settings, from the environment (checked at start-up)."""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime.config import env_float, env_int, env_str

DEFAULT_PORT = 8080


@dataclass(frozen=True)
class RestSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # Where the gateway listens: every call goes through it.
    gateway_target: str = "127.0.0.1:50051"
    # Largest JSON body; larger ones are refused with 413 while they stream in.
    max_body_bytes: int = 8 * 1024 * 1024
    # Largest upload to /v1/files (the files service's own limit applies too).
    max_upload_bytes: int = 512 * 1024 * 1024
    # Deadline passed to the gateway for unary calls and for model streams.
    request_timeout_seconds: float = 600.0
    # A `: keep-alive` comment is sent on an SSE stream idle for this long.
    heartbeat_seconds: float = 15.0
    # `openai-poll-after-ms` on run and vector-store-file retrievals.
    poll_after_ms: int = 200
    max_grpc_message_bytes: int = 64 * 1024 * 1024
    # The built web console served at `/` (empty: console/dist of the source tree).
    console_dir: str = ""

    @classmethod
    def from_env(cls) -> RestSettings:
        return cls(
            host=env_str("PARLEY_REST_HOST") or env_str("PARLEY_HOST", "127.0.0.1"),
            port=env_int("PARLEY_REST_PORT", DEFAULT_PORT, minimum=0),
            gateway_target=env_str("PARLEY_GATEWAY_TARGET", "127.0.0.1:50051"),
            max_body_bytes=env_int("PARLEY_REST_MAX_BODY_BYTES", cls.max_body_bytes, minimum=1024),
            max_upload_bytes=env_int("PARLEY_REST_MAX_UPLOAD_BYTES", cls.max_upload_bytes, minimum=1024),
            request_timeout_seconds=env_float("PARLEY_REST_REQUEST_TIMEOUT_SECONDS", cls.request_timeout_seconds,
                                              minimum=0.1),
            heartbeat_seconds=env_float("PARLEY_REST_HEARTBEAT_SECONDS", cls.heartbeat_seconds, minimum=0.05),
            poll_after_ms=env_int("PARLEY_REST_POLL_AFTER_MS", cls.poll_after_ms, minimum=1),
            max_grpc_message_bytes=env_int("PARLEY_MAX_GRPC_MESSAGE_BYTES", cls.max_grpc_message_bytes,
                                           minimum=1024),
            console_dir=env_str("PARLEY_REST_CONSOLE_DIR", ""),
        )
