"""One bootstrap for every Parley server: interceptors, health, reflection, keepalive and
message limits, telemetry, logging, and a graceful shutdown on SIGTERM/SIGINT.

A service provides a `ServiceApp` (its servicers and what to close) and calls `run`:

    def main() -> None:
        run("sessions", build_sessions_app)
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.runtime import admin_servicers
from services.runtime.config import ConfigError, ServerSettings
from services.runtime.identity import IdentityVerifier
from services.runtime.interceptors import ErrorInterceptor, IdentityInterceptor, RequestCheckInterceptor
from services.runtime.logs import setup_logging
from services.runtime.metrics import CallInterceptor, setup_metrics
from services.runtime.pagination import page_token_secret
from services.runtime.telemetry import server_interceptor, setup_telemetry

log = logging.getLogger("parley.server")


class ServiceApp(Protocol):
    """What a service hands to the bootstrap. Optional attributes the bootstrap looks for:
    `audit_log` (services/runtime/audit.py: started and flushed here, and with a database
    served as AuditLogService), `delete_user_data(user_id)` (served as UserDataService),
    `self_managed_prefixes` and `on_health` (below)."""

    # Full protobuf names of the services it serves, e.g. "parley.sessions.v1.SessionService".
    service_names: Sequence[str]

    def register(self, server: grpc.aio.Server) -> None: ...

    async def aclose(self) -> None: ...


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Two servers must never share a port silently.
        ("grpc.so_reuseport", 0),
    ]


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: HealthServicer
    app: ServiceApp
    port: int
    _stopped: bool = field(default=False, init=False)

    async def stop(self, grace: float) -> None:
        """Reports NOT_SERVING, lets in-flight calls finish for `grace` seconds, then closes
        (the audit log's queued events are written before the app closes its database)."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        audit_log = getattr(self.app, "audit_log", None)
        if audit_log is not None:
            await audit_log.aclose()
        await self.app.aclose()


async def start_server(
    app: ServiceApp,
    settings: ServerSettings,
    *,
    verifier: IdentityVerifier | None,
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> RunningServer:
    """Starts serving `app`. With a verifier, every call must carry a gateway-minted identity."""
    # An app may serve some methods with its own error mapping and tracing (the gateway's
    # forwarding handlers): the shared interceptors leave those alone.
    own = tuple(getattr(app, "self_managed_prefixes", ()))
    audit_log = getattr(app, "audit_log", None)
    interceptors: list[grpc.aio.ServerInterceptor] = [
        server_interceptor(own), CallInterceptor(own), ErrorInterceptor(own, audit_log), *extra_interceptors
    ]
    if verifier is not None:
        interceptors.append(IdentityInterceptor(verifier))
    interceptors.append(RequestCheckInterceptor(own))
    server = grpc.aio.server(interceptors=interceptors, options=server_options(settings))
    app.register(server)
    internal = admin_servicers.register(server, app, guarded=verifier is not None)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in (*app.service_names, *internal):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    # Optional hook: an app that reports more than "up" (the gateway reports each backend).
    on_health = getattr(app, "on_health", None)
    if on_health is not None:
        await on_health(health)
    reflection.enable_server_reflection(
        [*app.service_names, *internal, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    address = f"{settings.host}:{settings.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        raise ConfigError(f"cannot listen on {address}: is another process using that port?") from None
    await server.start()
    if audit_log is not None:
        audit_log.start()
    return RunningServer(server=server, health=health, app=app, port=port)


def identity_verifier(settings: ServerSettings) -> IdentityVerifier:
    if not settings.identity_public_key:
        raise ConfigError(
            "PARLEY_IDENTITY_PUBLIC_KEY or PARLEY_IDENTITY_PUBLIC_KEY_FILE must hold the gateway's Ed25519 public key "
            "(`make run` generates one under .parley/)"
        )
    return IdentityVerifier(settings.identity_public_key)


async def serve(service: str, build_app: Callable[[], Awaitable[ServiceApp]], *, guarded: bool = True) -> None:
    """Runs one service until SIGTERM or SIGINT, then shuts it down gracefully."""
    settings = ServerSettings.from_env(service)
    setup_metrics(service)  # /metrics on PARLEY_<SERVICE>_METRICS_PORT (services/runtime/metrics.py)
    page_token_secret()  # a bad or unreadable secret fails start-up, not the first listing
    verifier = identity_verifier(settings) if guarded else None
    app = await build_app()
    running = await start_server(app, settings, verifier=verifier)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("%s listening on %s:%d", service, settings.host, running.port)
    await stop.wait()
    log.info("%s shutting down (grace %.1fs)", service, settings.shutdown_grace)
    await running.stop(settings.shutdown_grace)
    log.info("%s stopped", service)


def run(service: str, build_app: Callable[[], Awaitable[ServiceApp]], *, guarded: bool = True) -> None:
    """Entry point of `python -m services.<service>`."""
    setup_logging(service)
    setup_telemetry(service)
    try:
        asyncio.run(serve(service, build_app, guarded=guarded))
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        sys.exit(2)
