"""Wiring for the llm service: settings, the catalog, providers, caches, the usage ledger and
budgets, and the servicer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from parley.llm.v1 import llm_service_pb2, llm_service_pb2_grpc
from services.llm import metrics as llm_metrics
from services.llm.budgets import Budgets
from services.llm.cache import Cache, make_cache
from services.llm.catalog import Catalog, ProviderSpec, load_catalog
from services.llm.engine import LLM, EngineSettings
from services.llm.limits import Queues
from services.llm.listing import ModelListing
from services.llm.providers.base import LLMProvider
from services.llm.providers.local import LocalProvider
from services.llm.reports import Reports
from services.llm.repository import MIGRATIONS, ROLE, SCHEMA, UsageRepository
from services.llm.servicer import LLMServicer
from services.llm.tokens import TokenCounter
from services.llm.usage import Ledger
from services.llm.user_data import delete_user_data
from services.runtime import errors
from services.runtime.audit import AuditLog
from services.runtime.config import ConfigError, env_bool, env_float, env_int, env_str, state_dir
from services.runtime.db import DEFAULT_STATEMENT_TIMEOUT_SECONDS, open_service_database, statement_timeout_from_env

log = logging.getLogger("parley.llm")

SERVICE_NAME = llm_service_pb2.DESCRIPTOR.services_by_name["LLMService"].full_name


@dataclass(frozen=True)
class LLMSettings:
    models_file: str | None
    redis_url: str | None
    engine: EngineSettings
    cache_max_entries: int
    # Load the local embedding model in the background at start-up (it still loads lazily).
    warm_embeddings: bool
    # "aiohttp" (faster streaming) or "httpx": the HTTP transport of the vendor SDKs.
    http_transport: str
    # Admin URL: runs migrations; the service itself connects as ROLE. With neither this
    # nor database_url set, and use_database false, usage is not recorded (tests only).
    admin_url: str | None
    database_url: str | None
    role_password: str | None
    pool_size: int
    use_database: bool = True
    usage_flush_seconds: float = 1.0
    usage_batch_size: int = 500
    usage_max_buffered: int = 100_000
    budget_cache_seconds: float = 2.0
    # Namespace of this deployment's keys in Redis (caches and shared rate limits).
    redis_prefix: str = "parley:llm:"
    # Where usage records wait on disk while the database is down; None: memory only.
    usage_spool_dir: str | None = None
    # In-memory response and embedding cache: at most this many bytes of values.
    cache_max_bytes: int = 256 * 1024 * 1024
    # ListModels also lists the configured vendors' own models (cached for the TTL).
    vendor_models: bool = False
    vendor_models_ttl: float = 600.0
    # Longest a ledger statement may run (PostgreSQL statement_timeout); 0: no limit.
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS
    # A deletion of a user's data (AdminService.DeleteUserData) keeps their usage records,
    # for billing; budgets go either way.
    keep_usage_for_billing: bool = False
    # Test hook: providers to use instead of building them from the catalog.
    providers: dict[str, LLMProvider] | None = field(default=None, compare=False)

    @classmethod
    def from_env(cls) -> LLMSettings:
        transport = env_str("PARLEY_LLM_HTTP_TRANSPORT", "aiohttp")
        if transport not in ("aiohttp", "httpx"):
            raise ConfigError(f"PARLEY_LLM_HTTP_TRANSPORT must be aiohttp or httpx, got {transport!r}")
        return cls(
            models_file=env_str("PARLEY_MODELS_FILE"),
            redis_url=env_str("PARLEY_REDIS_URL"),
            engine=EngineSettings(
                max_attempts=env_int("PARLEY_LLM_MAX_ATTEMPTS", 3, minimum=1),
                backoff_base=env_float("PARLEY_LLM_BACKOFF_BASE_SECONDS", 0.5, minimum=0),
                backoff_max=env_float("PARLEY_LLM_BACKOFF_MAX_SECONDS", 8.0, minimum=0),
                max_retry_wait=env_float("PARLEY_LLM_MAX_RETRY_WAIT_SECONDS", 30.0, minimum=0),
                request_timeout=env_float("PARLEY_LLM_REQUEST_TIMEOUT_SECONDS", 600.0, minimum=0.1),
                queue_timeout=env_float("PARLEY_LLM_QUEUE_TIMEOUT_SECONDS", 30.0, minimum=0),
                cooldown_failures=env_int("PARLEY_LLM_COOLDOWN_FAILURES", 3, minimum=0),
                cooldown_seconds=env_float("PARLEY_LLM_COOLDOWN_SECONDS", 30.0, minimum=0),
                response_cache_ttl=env_float("PARLEY_LLM_CACHE_TTL_SECONDS", 3600.0, minimum=1),
                embedding_cache_ttl=env_float("PARLEY_LLM_EMBEDDING_CACHE_TTL_SECONDS", 7 * 24 * 3600.0, minimum=1),
            ),
            cache_max_entries=env_int("PARLEY_LLM_CACHE_MAX_ENTRIES", 100_000, minimum=1),
            cache_max_bytes=env_int("PARLEY_LLM_CACHE_MAX_BYTES", 256 * 1024 * 1024, minimum=1024),
            vendor_models=env_bool("PARLEY_LLM_VENDOR_MODELS", False),
            vendor_models_ttl=env_float("PARLEY_LLM_VENDOR_MODELS_TTL_SECONDS", 600.0, minimum=1),
            statement_timeout=statement_timeout_from_env("llm"),
            keep_usage_for_billing=env_bool("PARLEY_LLM_KEEP_USAGE_FOR_BILLING", False),
            warm_embeddings=env_bool("PARLEY_LLM_WARM_EMBEDDINGS", True),
            http_transport=transport,
            admin_url=env_str("PARLEY_DATABASE_URL"),
            database_url=env_str("PARLEY_LLM_DATABASE_URL"),
            role_password=env_str("PARLEY_LLM_DATABASE_PASSWORD"),
            pool_size=env_int("PARLEY_LLM_POOL_SIZE", 10, minimum=2),
            usage_flush_seconds=env_float("PARLEY_LLM_USAGE_FLUSH_SECONDS", 1.0, minimum=0.01),
            usage_batch_size=env_int("PARLEY_LLM_USAGE_BATCH_SIZE", 500, minimum=1),
            usage_max_buffered=env_int("PARLEY_LLM_USAGE_MAX_BUFFERED", 100_000, minimum=1),
            budget_cache_seconds=env_float("PARLEY_LLM_BUDGET_CACHE_SECONDS", 2.0, minimum=0),
            redis_prefix=env_str("PARLEY_LLM_REDIS_PREFIX", "parley:llm:"),
            usage_spool_dir=env_str("PARLEY_LLM_USAGE_SPOOL_DIR", str(state_dir() / "llm-usage-spool")),
        )


def make_provider(spec: ProviderSpec, transport: str, local: LocalProvider) -> LLMProvider:
    """The SDK-backed provider for one configured provider entry."""
    if spec.type == "local":
        return local
    if spec.type in ("openai", "openai_compatible"):
        from services.llm.providers.openai import OpenAIProvider

        return OpenAIProvider(spec.name, api_key=spec.api_key or "not-needed", base_url=spec.base_url,
                              transport=transport, compatible=spec.type == "openai_compatible")
    if spec.type == "anthropic":
        from services.llm.providers.anthropic import AnthropicProvider

        return AnthropicProvider(spec.name, api_key=spec.api_key, base_url=spec.base_url, transport=transport)
    if spec.type == "mistral":
        from services.llm.providers.mistral import MistralProvider

        return MistralProvider(spec.name, api_key=spec.api_key, base_url=spec.base_url)
    raise ConfigError(f"unknown provider type {spec.type!r}")


def make_providers(catalog: Catalog, transport: str) -> dict[str, LLMProvider]:
    local = LocalProvider()
    return {
        name: make_provider(spec, transport, local) for name, spec in catalog.providers.items() if spec.configured
    }


class LLMApp:
    service_names = (SERVICE_NAME,)

    def __init__(self, llm: LLM, ledger: Ledger, cache: Cache, listing: ModelListing, db=None, budgets=None,
                 usage=None, redis=None, audit_log: AuditLog | None = None, keep_usage_for_billing: bool = False) -> None:
        self.llm = llm
        self.audit_log = audit_log or AuditLog("llm", db)
        self._keep_usage = keep_usage_for_billing
        self.listing = listing
        self.redis = redis
        self.ledger = ledger
        self.cache = cache
        self.db = db
        self.budgets = budgets
        self.usage = usage
        self._warm: asyncio.Task | None = None

    def warm_embeddings(self) -> None:
        local = self.llm.providers.get("local")
        if isinstance(local, LocalProvider):
            self._warm = asyncio.create_task(self._warm_up(local))

    @staticmethod
    async def _warm_up(local: LocalProvider) -> None:
        try:
            await local.minilm.warm_up()
        except Exception:  # noqa: BLE001 - the first Embed will report it
            log.exception("could not load the local embedding model")

    def register(self, server: grpc.aio.Server) -> None:
        reports = Reports(self.llm.catalog, self.usage, self.budgets, self.audit_log)
        llm_service_pb2_grpc.add_LLMServiceServicer_to_server(LLMServicer(self.llm, self.listing, reports), server)

    async def delete_user_data(self, user_id: str):
        if self.db is None:
            raise errors.FailedPrecondition("this deployment records no usage (no database)", reason="NO_LEDGER")
        return await delete_user_data(self.db, self.audit_log, self.budgets, user_id,
                                      keep_usage=self._keep_usage)

    async def aclose(self) -> None:
        if self._warm is not None:
            with contextlib.suppress(BaseException):
                await self._warm
        await self.listing.aclose()
        await self.ledger.aclose()
        for provider in {id(p): p for p in self.llm.providers.values()}.values():
            with contextlib.suppress(Exception):
                await provider.aclose()
        await self.cache.aclose()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if self.db is not None:
            await self.db.close()


async def build_app(settings: LLMSettings | None = None) -> LLMApp:
    settings = settings or LLMSettings.from_env()
    catalog = load_catalog(settings.models_file)
    providers = settings.providers if settings.providers is not None else make_providers(catalog, settings.http_transport)
    cache = make_cache(settings.redis_url, settings.cache_max_entries, settings.redis_prefix,
                       max_bytes=settings.cache_max_bytes)
    limits_redis = None
    if settings.redis_url:
        import redis.asyncio as redis

        limits_redis = redis.Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    queues = Queues(limits_redis, settings.redis_prefix)
    db = budgets = usage = None
    writer = None
    if settings.use_database:
        db = await open_service_database(
            schema=SCHEMA, role=ROLE, migrations_dir=MIGRATIONS, admin_url=settings.admin_url,
            database_url=settings.database_url, role_password=settings.role_password, pool_size=settings.pool_size,
            statement_timeout=settings.statement_timeout, audit=True,
        )
        usage = UsageRepository(db, keep_for_billing=settings.keep_usage_for_billing)
        writer = usage.write_batch
    ledger = Ledger(writer, flush_interval=settings.usage_flush_seconds, batch_size=settings.usage_batch_size,
                    max_buffered=settings.usage_max_buffered,
                    spool_dir=Path(settings.usage_spool_dir) if settings.usage_spool_dir else None)
    llm_metrics.model_label.know(catalog.models)
    ledger.add_listener(llm_metrics.observe)
    llm_metrics.observe_queues(queues)
    if usage is not None:
        budgets = Budgets(usage, cache_seconds=settings.budget_cache_seconds, pending=ledger.pending_records)
        ledger.add_listener(budgets.observe)
    ledger.start()
    tokens = TokenCounter()
    await asyncio.to_thread(tokens.warm)
    llm = LLM(catalog, providers, settings.engine, cache=cache, ledger=ledger, budgets=budgets, tokens=tokens,
              queues=queues)
    listing = ModelListing(catalog, providers, llm.cooldowns, vendor_models=settings.vendor_models,
                           vendor_models_ttl=settings.vendor_models_ttl)
    app = LLMApp(llm, ledger, cache, listing, db=db, budgets=budgets, usage=usage, redis=limits_redis,
                 keep_usage_for_billing=settings.keep_usage_for_billing)
    if settings.warm_embeddings:
        app.warm_embeddings()
    return app
