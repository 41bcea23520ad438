"""Wiring for the gateway: settings, migrations, the key store, JWT verification, the rate
limiter, backend channels, the proxy and ApiKeyService, and the backend health monitor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from parley.admin.v1 import admin_service_pb2_grpc
from parley.gateway.v1 import gateway_service_pb2
from services.gateway.admin import AUDIT_SOURCES, DELETION_ORDER, Admin, own_source
from services.gateway.admin_servicer import SERVICE as ADMIN_SERVICE
from services.gateway.admin_servicer import AdminServicer, audit_source, deleter
from services.gateway.apikeys import ApiKeys, KeyPolicy
from services.gateway.gate import Gate
from services.gateway.jwt_auth import JwtSettings, JwtVerifier
from services.gateway.key_events import RedisKeyEvents
from services.gateway.models import RateLimits
from services.gateway.proxy import DEFAULT_MAX_DEADLINE_SECONDS, Backend, Proxy
from services.gateway.ratelimit import MemoryLimiter, RedisLimiter
from services.gateway.routes import BACKENDS, backend_service, build_routes, service_names
from services.gateway.servicer import ApiKeyServicer, api_key_handler
from services.runtime.audit import AuditLog
from services.runtime.config import ConfigError, env_float, env_int, env_secret, env_str
from services.runtime.db import Database, open_service_database, statement_timeout_from_env
from services.runtime.identity import DEFAULT_TTL_SECONDS, IdentityMinter

log = logging.getLogger("parley.gateway")

SCHEMA = "gateway"
ROLE = "parley_gateway"
MIGRATIONS = Path(__file__).parent / "migrations"
API_KEY_SERVICE = gateway_service_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name
DEFAULT_TARGETS = {
    "llm": "127.0.0.1:50052",
    "sessions": "127.0.0.1:50053",
    "files": "127.0.0.1:50054",
    "assistants": "127.0.0.1:50056",
}


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


@dataclass(frozen=True)
class GatewaySettings:
    admin_url: str | None
    database_url: str | None
    role_password: str | None
    pool_size: int
    identity_private_key: bytes
    identity_ttl_seconds: float
    # backend name → "host:port", or None when this gateway does not route to it.
    targets: dict[str, str | None]
    jwt: JwtSettings
    key_limits: RateLimits
    user_limits: RateLimits
    redis_url: str | None
    key_cache_seconds: float
    max_request_bytes: int
    max_message_bytes: int
    health_interval_seconds: float = 5.0
    redis_prefix: str = "parley:rl:"
    # The longest deadline a backend call gets; also what calls without one get.
    max_deadline_seconds: float = DEFAULT_MAX_DEADLINE_SECONDS
    # Authentication failures audited one by one per source and minute (then one summary).
    auth_failure_events_per_minute: int = 10

    @classmethod
    def from_env(cls) -> GatewaySettings:
        private_key = env_secret("PARLEY_IDENTITY_PRIVATE_KEY")
        if not private_key:
            raise ConfigError("PARLEY_IDENTITY_PRIVATE_KEY or PARLEY_IDENTITY_PRIVATE_KEY_FILE must hold the Ed25519 "
                              "private key for internal identities (`make run` generates one under .parley/)")
        targets = {}
        for name in BACKENDS:
            value = env_str(f"PARLEY_{name.upper()}_TARGET", DEFAULT_TARGETS[name])
            targets[name] = None if value in ("none", "off", "") else value
        return cls(
            admin_url=env_str("PARLEY_DATABASE_URL"),
            database_url=env_str("PARLEY_GATEWAY_DATABASE_URL"),
            role_password=env_str("PARLEY_GATEWAY_DATABASE_PASSWORD"),
            pool_size=env_int("PARLEY_GATEWAY_POOL_SIZE", 10, minimum=2),
            identity_private_key=private_key,
            identity_ttl_seconds=env_float("PARLEY_IDENTITY_TTL_SECONDS", DEFAULT_TTL_SECONDS, minimum=5),
            targets=targets,
            jwt=JwtSettings(
                jwks_url=env_str("PARLEY_JWT_JWKS_URL"),
                public_key_pem=env_secret("PARLEY_JWT_PUBLIC_KEY"),
                issuer=env_str("PARLEY_JWT_ISSUER"),
                audiences=_csv(env_str("PARLEY_JWT_AUDIENCE")),
                authorized_parties=_csv(env_str("PARLEY_JWT_AUTHORIZED_PARTIES")),
                algorithms=_csv(env_str("PARLEY_JWT_ALGORITHMS", "RS256,ES256,EdDSA")),
                user_claim=env_str("PARLEY_JWT_USER_CLAIM", "sub"),
                leeway_seconds=env_float("PARLEY_JWT_LEEWAY_SECONDS", 10.0, minimum=0),
                jwks_cache_seconds=env_float("PARLEY_JWKS_CACHE_SECONDS", 600.0, minimum=0),
                jwks_min_refresh_seconds=env_float("PARLEY_JWKS_MIN_REFRESH_SECONDS", 5.0, minimum=0),
            ),
            key_limits=RateLimits(
                env_int("PARLEY_GATEWAY_KEY_REQUESTS_PER_MINUTE", 3000, minimum=0),
                env_int("PARLEY_GATEWAY_KEY_CONCURRENT_STREAMS", 32, minimum=0),
                env_int("PARLEY_GATEWAY_KEY_TOKENS_PER_MINUTE", 0, minimum=0),
            ),
            user_limits=RateLimits(
                env_int("PARLEY_GATEWAY_USER_REQUESTS_PER_MINUTE", 6000, minimum=0),
                env_int("PARLEY_GATEWAY_USER_CONCURRENT_STREAMS", 64, minimum=0),
                env_int("PARLEY_GATEWAY_USER_TOKENS_PER_MINUTE", 0, minimum=0),
            ),
            redis_url=env_str("PARLEY_REDIS_URL"),
            key_cache_seconds=env_float("PARLEY_GATEWAY_KEY_CACHE_SECONDS", 10.0, minimum=0),
            max_request_bytes=env_int("PARLEY_GATEWAY_MAX_REQUEST_BYTES", 256 * 1024, minimum=1024),
            max_message_bytes=env_int("PARLEY_MAX_GRPC_MESSAGE_BYTES", 64 * 1024 * 1024, minimum=1024),
            health_interval_seconds=env_float("PARLEY_GATEWAY_HEALTH_INTERVAL_SECONDS", 5.0, minimum=0.1),
            redis_prefix=env_str("PARLEY_GATEWAY_REDIS_PREFIX", "parley:rl:"),
            max_deadline_seconds=env_float("PARLEY_GATEWAY_MAX_DEADLINE_SECONDS", DEFAULT_MAX_DEADLINE_SECONDS,
                                           minimum=1),
            auth_failure_events_per_minute=env_int("PARLEY_GATEWAY_AUTH_FAILURE_EVENTS_PER_MINUTE", 10, minimum=1),
        )


async def open_database(settings: GatewaySettings) -> Database:
    return await open_service_database(
        schema=SCHEMA, role=ROLE, migrations_dir=MIGRATIONS, admin_url=settings.admin_url,
        database_url=settings.database_url, role_password=settings.role_password, pool_size=settings.pool_size,
        statement_timeout=statement_timeout_from_env("gateway"), jsonb=False, audit=True,
    )


class GatewayApp:
    def __init__(self, settings: GatewaySettings, db: Database, gate: Gate, backends: dict[str, Backend],
                 key_events: RedisKeyEvents | None = None) -> None:
        self.settings = settings
        self.key_events = key_events
        self.db = db
        self.gate = gate
        self.backends = backends
        self.routes = build_routes(settings.max_request_bytes)
        self.service_names = (*service_names(), API_KEY_SERVICE, ADMIN_SERVICE)
        self.audit_log = gate.audit
        self.audit_log.before_close.append(lambda: gate.auth_failures.sweep(force=True))
        self.admin = Admin(
            gate.audit, gate.keys,
            sources={"gateway": own_source(gate.audit), **{
                name: audit_source(backends[name], gate) for name in AUDIT_SOURCES
                if name in backends and backends[name].channel is not None}},
            deleters={name: deleter(backends[name], gate) if name in backends and backends[name].channel else None
                      for name in DELETION_ORDER})
        # The forwarding handlers map their own errors and trace themselves (see Proxy).
        self.self_managed_prefixes = Proxy.prefixes(self.routes)
        self._monitor: asyncio.Task | None = None

    def register(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (Proxy(self.routes, self.backends, self.gate, self.settings.max_deadline_seconds),))
        server.add_generic_rpc_handlers((api_key_handler(ApiKeyServicer(self.gate)),))
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(self.gate, self.admin), server)

    async def on_health(self, health) -> None:
        """Reports each backend under its service name, checked every few seconds."""
        await self._check_backends(health)
        self._monitor = asyncio.create_task(self._monitor_forever(health))

    async def _check_backends(self, health) -> None:
        results = await asyncio.gather(*(b.check(timeout=2.0) for b in self.backends.values()))
        for backend, ok in zip(self.backends.values(), results):
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            await health.set(backend.service, status)

    async def _monitor_forever(self, health) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_seconds)
            self.gate.auth_failures.sweep()  # summaries of sources whose minute is over
            try:
                await self._check_backends(health)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.warning("backend health check failed", exc_info=True)

    async def aclose(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self.gate.keys.aclose()
        if self.key_events is not None:
            await self.key_events.aclose()
        await self.gate.limiter.aclose()
        for backend in self.backends.values():
            await backend.aclose()
        await self.db.close()


async def build_app(settings: GatewaySettings | None = None) -> GatewayApp:
    settings = settings or GatewaySettings.from_env()
    db = await open_database(settings)
    audit_log = AuditLog("gateway", db)
    keys = ApiKeys(db, KeyPolicy(default_limits=settings.key_limits, cache_seconds=settings.key_cache_seconds),
                   audit=audit_log)
    keys.start()
    events = None
    if settings.redis_url:
        events = RedisKeyEvents(settings.redis_url, channel=f"{settings.redis_prefix}api-keys")
        keys.announce_changes(events)
    limiter = RedisLimiter(settings.redis_url, settings.redis_prefix) if settings.redis_url else MemoryLimiter()
    gate = Gate(
        keys,
        JwtVerifier(settings.jwt) if settings.jwt.enabled else None,
        limiter,
        settings.user_limits,
        IdentityMinter(settings.identity_private_key, ttl_seconds=settings.identity_ttl_seconds),
        settings.identity_ttl_seconds,
        audit_log=audit_log,
        auth_failures_per_minute=settings.auth_failure_events_per_minute,
    )
    backends = {name: Backend(name, target, backend_service(name)) for name, target in settings.targets.items()}
    for backend in backends.values():
        backend.connect(settings.max_message_bytes)
    log.info("gateway routes to %s; rate limits %s",
             ", ".join(f"{n}={t or 'none'}" for n, t in settings.targets.items()),
             "in Redis" if settings.redis_url else "in memory")
    return GatewayApp(settings, db, gate, backends, events)
