"""ListModels and GetModel: the catalog, filtered and paged by id, with each model's
availability; optionally (`PARLEY_LLM_VENDOR_MODELS`) also the models the configured vendors
list themselves (OpenAI-compatible `GET /models`, Anthropic's `GET /v1/models`) that the
catalog does not describe, with the pass-through defaults.

Vendor lists are cached (`PARLEY_LLM_VENDOR_MODELS_TTL_SECONDS`) so ListModels stays fast:
a stale list is served while a background task refreshes it, only the very first listing
waits for the vendor (a few seconds at most), and a vendor that fails is logged and left
out until the next refresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from services.llm.catalog import VENDOR_TYPES, Catalog, ModelSpec, is_vendor_model_id, pass_through_spec
from services.llm.limits import Cooldowns
from services.llm.models import Capability
from services.llm.providers.base import ProviderError
from services.runtime import errors
from services.runtime.pagination import Position, decode_token, encode_token, page_size

log = logging.getLogger("parley.llm.listing")

# Vendor list entries that are not chat models (OpenAI lists audio, image and moderation
# models, and legacy completions models, under the same endpoint).
_NOT_CHAT = ("embedding", "whisper", "tts", "dall-e", "moderation", "davinci", "babbage", "transcribe", "image",
             "audio", "realtime", "search")
MAX_VENDOR_MODELS = 2000
FIRST_FETCH_TIMEOUT = 3.0
RETRY_FAILED_AFTER = 60.0


@dataclass(frozen=True)
class ModelView:
    spec: ModelSpec
    configured: bool
    cooldown_until: float | None


@dataclass
class _VendorList:
    ids: tuple[str, ...] = ()
    fetched: float = -1e18
    attempted: bool = False
    refreshing: asyncio.Task | None = None


class ModelListing:
    def __init__(self, catalog: Catalog, providers: dict, cooldowns: Cooldowns, *, vendor_models: bool = False,
                 vendor_models_ttl: float = 600.0) -> None:
        self._catalog = catalog
        self._providers = providers
        self._cooldowns = cooldowns
        self._vendor_models = vendor_models
        self._ttl = vendor_models_ttl
        self._lists: dict[str, _VendorList] = {}

    def view(self, spec: ModelSpec) -> ModelView:
        return ModelView(spec, self._catalog.is_configured(spec), self._cooldowns.until(spec.id))

    def get(self, model_id: str) -> ModelView:
        if not model_id:
            raise errors.InvalidArgument.for_field("model_id", "is required", "FIELD_REQUIRED")
        return self.view(self._catalog.require(model_id, field="model_id"))

    async def page(self, *, provider: str, capabilities: frozenset[Capability], include_unconfigured: bool,
                   size: int, token: str) -> tuple[list[ModelView], str]:
        size = page_size(size, default=100, maximum=1000)
        key = f"{provider}|{sorted(capabilities)}|{include_unconfigured}"
        after = decode_token(token, key, kinds=(Position.TEXT,))
        specs = {spec.id: spec for spec in self._catalog.models.values()}
        if self._vendor_models:
            for spec in await self._vendor_specs():
                specs.setdefault(spec.id, spec)
        found = []
        for spec in sorted(specs.values(), key=lambda m: m.id):
            if provider and spec.provider != provider:
                continue
            if not capabilities <= spec.capabilities:
                continue
            if not include_unconfigured and not self._catalog.is_configured(spec):
                continue
            if after and spec.id <= after[0]:
                continue
            found.append(spec)
        page, more = found[:size], len(found) > size
        return [self.view(s) for s in page], encode_token(key, [page[-1].id]) if more else ""

    # ---- the vendors' own lists ------------------------------------------------------------

    async def _vendor_specs(self) -> list[ModelSpec]:
        names = [name for name, spec in self._catalog.providers.items()
                 if spec.configured and (spec.type in VENDOR_TYPES or spec.type == "openai_compatible")
                 and hasattr(self._providers.get(name), "list_models")]
        lists = await asyncio.gather(*(self._vendor_list(name) for name in names))
        specs = []
        for name, ids in zip(names, lists):
            provider = self._catalog.providers[name]
            for vendor_model in ids:
                model_id = f"{name}/{vendor_model}"
                if model_id in self._catalog.models:
                    continue
                if provider.dynamic_models:
                    spec = self._catalog.resolve(model_id)
                    if spec is not None:
                        specs.append(spec)
                else:
                    specs.append(pass_through_spec(provider, vendor_model))
        return specs

    async def _vendor_list(self, name: str) -> tuple[str, ...]:
        entry = self._lists.setdefault(name, _VendorList())
        age = time.monotonic() - entry.fetched
        if age < self._ttl:
            return entry.ids
        if entry.refreshing is None or entry.refreshing.done():
            entry.refreshing = asyncio.get_running_loop().create_task(self._refresh(name, entry))
        if not entry.attempted:  # never fetched: wait for the first list, briefly
            try:
                await asyncio.wait_for(asyncio.shield(entry.refreshing), FIRST_FETCH_TIMEOUT)
            except TimeoutError:
                pass
        return entry.ids

    async def _refresh(self, name: str, entry: _VendorList) -> None:
        entry.attempted = True
        try:
            ids = await self._providers[name].list_models(timeout=10.0)
        except ProviderError as exc:
            log.warning("could not list %s's models (%s); retrying in %.0fs", name, exc.kind, RETRY_FAILED_AFTER)
            entry.fetched = time.monotonic() - self._ttl + RETRY_FAILED_AFTER
            return
        except Exception as exc:  # noqa: BLE001 - a vendor list must never fail ListModels
            log.warning("could not list %s's models (%s)", name, type(exc).__name__)
            entry.fetched = time.monotonic() - self._ttl + RETRY_FAILED_AFTER
            return
        entry.ids = tuple(sorted({i for i in ids[:MAX_VENDOR_MODELS]
                                  if is_vendor_model_id(i) and not any(word in i.lower() for word in _NOT_CHAT)}))
        entry.fetched = time.monotonic()

    async def aclose(self) -> None:
        for entry in self._lists.values():
            if entry.refreshing is not None and not entry.refreshing.done():
                entry.refreshing.cancel()
