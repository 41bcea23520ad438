"""The model catalog: built-in providers and models, merged with the models file.

Model ids are "provider/model". The models file (`PARLEY_MODELS_FILE`, YAML or JSON) adds
models and providers (OpenAI-compatible local servers), aliases, fallback chains,
per-deployment limits and price overrides; see docs/llm.md for its format. A provider is
offered only when its credentials (or, for local servers, its base URL) are configured.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from services.llm.models import Capability
from services.runtime import errors
from services.runtime.config import ConfigError

log = logging.getLogger("parley.llm.catalog")

C = Capability
CHAT_CAPS = frozenset({C.STREAMING, C.TOOLS, C.JSON_OUTPUT})
FULL_CHAT_CAPS = frozenset({C.STREAMING, C.TOOLS, C.VISION, C.JSON_OUTPUT, C.JSON_SCHEMA})

_CAPABILITY_NAMES = {
    "streaming": C.STREAMING,
    "tools": C.TOOLS,
    "vision": C.VISION,
    "embeddings": C.EMBEDDINGS,
    "json_output": C.JSON_OUTPUT,
    "json_schema": C.JSON_SCHEMA,
}
PROVIDER_TYPES = ("openai", "anthropic", "mistral", "openai_compatible", "local")
# Vendors whose models not in the catalog pass through (when the vendor is configured).
VENDOR_TYPES = ("openai", "anthropic", "mistral")

MAX_MODEL_ID = 256
# What a model id not in the catalog may look like before it is sent to a vendor or logged:
# vendor names such as "gpt-4-turbo-preview", "claude-3-opus-20240229", "llama3.2:8b",
# "meta-llama/Llama-3.1-8B-Instruct".
_VENDOR_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,199}$")
# Conservative defaults for a vendor model the catalog does not describe: what nearly every
# chat model offers (no vision, no JSON schema), an 8K context unless genai-prices knows the
# model's, 4K of output. List the model in the models file to say more.
PASS_THROUGH_CAPS = frozenset({C.STREAMING, C.TOOLS, C.JSON_OUTPUT})
PASS_THROUGH_CONTEXT_WINDOW = 8192
PASS_THROUGH_MAX_OUTPUT = 4096
# How many distinct pass-through model ids are remembered for the once-per-model log line.
_ANNOUNCED_MAX = 1024


@dataclass(frozen=True)
class Limits:
    """What one deployment (model) may be sent; None means unlimited."""

    rpm: float | None = None
    tpm: float | None = None
    concurrency: int | None = None

    def merged_over(self, base: Limits) -> Limits:
        return Limits(
            rpm=self.rpm if self.rpm is not None else base.rpm,
            tpm=self.tpm if self.tpm is not None else base.tpm,
            concurrency=self.concurrency if self.concurrency is not None else base.concurrency,
        )

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.concurrency is None


@dataclass(frozen=True)
class Pricing:
    """USD per million tokens."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float = 0.0


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    type: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    configured: bool = False
    # Accept any "provider/<model>" id, not only listed ones (local servers run anything).
    dynamic_models: bool = False
    limits: Limits = Limits()
    # Vendors (openai, anthropic, mistral): send models the catalog does not list to the
    # vendor with conservative defaults, instead of answering NOT_FOUND.
    pass_through: bool = True


@dataclass(frozen=True)
class ModelSpec:
    id: str
    provider: str
    # The model's name at the vendor (the part after "provider/").
    vendor_model: str
    display_name: str = ""
    description: str = ""
    aliases: tuple[str, ...] = ()
    capabilities: frozenset[Capability] = CHAT_CAPS
    context_window: int = 8192
    max_output_tokens: int = 4096
    embedding_dimensions: int = 0
    # Vendors whose embedding models accept a `dimensions` parameter.
    flexible_dimensions: bool = False
    # None: priced by genai-prices; set: the models file's override.
    pricing: Pricing | None = None
    fallbacks: tuple[str, ...] = ()
    limits: Limits = Limits()
    # Whether the response cache may serve this model.
    cache: bool = True

    @property
    def is_embedding(self) -> bool:
        return Capability.EMBEDDINGS in self.capabilities


def _m(id: str, **kw: Any) -> ModelSpec:
    provider, _, vendor = id.partition("/")
    return ModelSpec(id=id, provider=provider, vendor_model=vendor, display_name=kw.pop("display_name", vendor), **kw)


_EMBED = frozenset({C.EMBEDDINGS})

BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    _m("local/echo", display_name="Echo (test double)",
       description="Deterministic development model: answers with the last user message. A test double, not a model.",
       capabilities=frozenset({C.STREAMING, C.TOOLS, C.JSON_OUTPUT}), context_window=131072, max_output_tokens=8192,
       pricing=Pricing()),
    _m("local/all-MiniLM-L6-v2", display_name="all-MiniLM-L6-v2",
       description="Offline sentence embeddings (sentence-transformers), 384 dimensions, 256 word pieces.",
       capabilities=_EMBED, context_window=256, max_output_tokens=0, embedding_dimensions=384, pricing=Pricing()),
    _m("openai/gpt-4o-mini", capabilities=FULL_CHAT_CAPS, context_window=128000, max_output_tokens=16384),
    _m("openai/gpt-4o", capabilities=FULL_CHAT_CAPS, context_window=128000, max_output_tokens=16384),
    _m("openai/gpt-4.1-mini", capabilities=FULL_CHAT_CAPS, context_window=1047576, max_output_tokens=32768),
    _m("openai/gpt-4.1", capabilities=FULL_CHAT_CAPS, context_window=1047576, max_output_tokens=32768),
    _m("openai/text-embedding-3-small", capabilities=_EMBED, context_window=8191, max_output_tokens=0,
       embedding_dimensions=1536, flexible_dimensions=True),
    _m("openai/text-embedding-3-large", capabilities=_EMBED, context_window=8191, max_output_tokens=0,
       embedding_dimensions=3072, flexible_dimensions=True),
    _m("anthropic/claude-sonnet-4-5", capabilities=FULL_CHAT_CAPS - {C.JSON_SCHEMA}, context_window=200000,
       max_output_tokens=64000),
    _m("anthropic/claude-haiku-4-5", capabilities=FULL_CHAT_CAPS - {C.JSON_SCHEMA}, context_window=200000,
       max_output_tokens=64000),
    _m("anthropic/claude-opus-4-1", capabilities=FULL_CHAT_CAPS - {C.JSON_SCHEMA}, context_window=200000,
       max_output_tokens=32000),
    _m("mistral/mistral-small-latest", capabilities=FULL_CHAT_CAPS, context_window=128000, max_output_tokens=16384),
    _m("mistral/mistral-medium-latest", capabilities=FULL_CHAT_CAPS, context_window=128000, max_output_tokens=16384),
    _m("mistral/mistral-large-latest", capabilities=FULL_CHAT_CAPS - {C.VISION}, context_window=128000,
       max_output_tokens=16384),
    _m("mistral/mistral-embed", capabilities=_EMBED, context_window=8192, max_output_tokens=0,
       embedding_dimensions=1024),
)


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def builtin_providers() -> dict[str, ProviderSpec]:
    openai_key, anthropic_key, mistral_key = _env("OPENAI_API_KEY"), _env("ANTHROPIC_API_KEY"), _env("MISTRAL_API_KEY")
    ollama_url = _env("OLLAMA_BASE_URL")
    return {
        "local": ProviderSpec("local", "local", configured=True),
        "openai": ProviderSpec("openai", "openai", _env("OPENAI_BASE_URL"), openai_key, configured=bool(openai_key)),
        "anthropic": ProviderSpec(
            "anthropic", "anthropic", _env("ANTHROPIC_BASE_URL"), anthropic_key, configured=bool(anthropic_key)
        ),
        "mistral": ProviderSpec("mistral", "mistral", _env("MISTRAL_BASE_URL"), mistral_key, configured=bool(mistral_key)),
        "ollama": ProviderSpec(
            "ollama", "openai_compatible", ollama_url, _env("OLLAMA_API_KEY"), configured=bool(ollama_url),
            dynamic_models=True,
        ),
    }


@dataclass
class Catalog:
    providers: dict[str, ProviderSpec]
    models: dict[str, ModelSpec]
    aliases: dict[str, str]
    default_model: str = "local/echo"
    default_embedding_model: str = "local/all-MiniLM-L6-v2"

    _announced: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)

    def resolve(self, name: str) -> ModelSpec | None:
        """The model `name` (an id or alias) refers to, or None when nothing matches."""
        model_id = self.aliases.get(name, name)
        spec = self.models.get(model_id)
        if spec is not None:
            return spec
        provider_name, sep, vendor = model_id.partition("/")
        provider = self.providers.get(provider_name)
        if not sep or provider is None or len(model_id) > MAX_MODEL_ID or not _VENDOR_MODEL.match(vendor):
            return None
        if provider.dynamic_models:
            return ModelSpec(
                id=model_id, provider=provider_name, vendor_model=vendor, display_name=vendor,
                capabilities=FULL_CHAT_CAPS - {C.JSON_SCHEMA}, context_window=32768, max_output_tokens=4096,
                pricing=Pricing(), limits=provider.limits,
            )
        if provider.type in VENDOR_TYPES and provider.configured and provider.pass_through:
            self._announce(model_id)
            return pass_through_spec(provider, vendor)
        return None

    def require(self, name: str, *, field: str = "model") -> ModelSpec:
        """`resolve`, or NOT_FOUND (MODEL_NOT_FOUND) quoting at most the start of `name`."""
        if len(name) > MAX_MODEL_ID:
            raise errors.InvalidArgument.for_field(field, f"model ids have at most {MAX_MODEL_ID} characters",
                                                   "MODEL_ID_TOO_LONG")
        spec = self.resolve(name)
        if spec is None:
            raise errors.NotFound(f"unknown model {name[:100]!r}; ListModels shows the available ones",
                                  reason="MODEL_NOT_FOUND", metadata={"field": field})
        return spec

    def _announce(self, model_id: str) -> None:
        """One log line per pass-through model (bounded memory: the oldest ids are forgotten)."""
        if model_id in self._announced:
            self._announced.move_to_end(model_id)
            return
        self._announced[model_id] = None
        if len(self._announced) > _ANNOUNCED_MAX:
            self._announced.popitem(last=False)
        spec = pass_through_spec(self.providers[model_id.partition("/")[0]], model_id.partition("/")[2])
        log.info("model %s is not in the catalog: passing it through to its vendor with defaults "
                 "(context window %d, output %d tokens, no vision, no JSON schema)",
                 model_id, spec.context_window, spec.max_output_tokens)

    def provider_of(self, spec: ModelSpec) -> ProviderSpec:
        return self.providers[spec.provider]

    def is_configured(self, spec: ModelSpec) -> bool:
        provider = self.providers.get(spec.provider)
        return provider is not None and provider.configured


def is_vendor_model_id(vendor_model: str) -> bool:
    """Whether a vendor's model name (the part after "provider/") may be used as one."""
    return bool(_VENDOR_MODEL.match(vendor_model))


@lru_cache(maxsize=1024)
def _known_context_window(provider: str, vendor_model: str) -> int | None:
    """The model's context window as genai-prices' bundled snapshot knows it, if it does."""
    import warnings

    import genai_prices

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = genai_prices.calc_price(genai_prices.Usage(input_tokens=1), vendor_model, provider_id=provider)
    except Exception:  # noqa: BLE001 - unknown to genai-prices: the conservative default applies
        return None
    window = getattr(result.model, "context_window", None)
    return window if isinstance(window, int) and window > 0 else None


@lru_cache(maxsize=1024)
def pass_through_spec(provider: ProviderSpec, vendor_model: str) -> ModelSpec:
    """A vendor model the catalog does not list, with conservative defaults; priced by
    genai-prices where it knows the model."""
    window = _known_context_window(provider.type, vendor_model) or PASS_THROUGH_CONTEXT_WINDOW
    return ModelSpec(
        id=f"{provider.name}/{vendor_model}", provider=provider.name, vendor_model=vendor_model,
        display_name=vendor_model, description="Not in the catalog: passed through to the vendor with defaults.",
        capabilities=PASS_THROUGH_CAPS, context_window=window,
        max_output_tokens=min(PASS_THROUGH_MAX_OUTPUT, window), limits=provider.limits,
    )


# ---- The models file -------------------------------------------------------------------


def _load_document(path: Path) -> dict:
    import yaml  # JSON is YAML too, so one parser reads both formats

    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"PARLEY_MODELS_FILE: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"PARLEY_MODELS_FILE: {path} is not valid YAML/JSON: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"PARLEY_MODELS_FILE: {path} must hold a mapping at the top level")
    return document


def _limits(raw: Any, where: str) -> Limits:
    if raw is None:
        return Limits()
    if not isinstance(raw, dict) or set(raw) - {"rpm", "tpm", "concurrency"}:
        raise ConfigError(f"models file: {where}.limits takes rpm, tpm and concurrency")
    values = {}
    for key in ("rpm", "tpm", "concurrency"):
        if raw.get(key) is not None:
            value = raw[key]
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"models file: {where}.limits.{key} must be a positive number")
            values[key] = int(value) if key == "concurrency" else float(value)
    return Limits(**values)


def _pricing(raw: Any, where: str) -> Pricing:
    if not isinstance(raw, dict) or set(raw) - {"input", "output", "cached_input"}:
        raise ConfigError(f"models file: {where}.pricing takes input, output and cached_input (USD per million tokens)")
    try:
        values = {k: float(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"models file: {where}.pricing values must be numbers") from None
    if any(v < 0 for v in values.values()):
        raise ConfigError(f"models file: {where}.pricing values must not be negative")
    values.setdefault("cached_input", values.get("input", 0.0))
    return Pricing(**values)


_MODEL_KEYS = {
    "id", "display_name", "description", "aliases", "capabilities", "context_window", "max_output_tokens",
    "embedding_dimensions", "pricing", "fallbacks", "limits", "cache",
}


def _model(raw: Any, existing: dict[str, ModelSpec], providers: dict[str, ProviderSpec]) -> ModelSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        raise ConfigError("models file: every entry of `models` needs an `id` (\"provider/model\")")
    model_id = raw["id"]
    where = f"models[{model_id}]"
    unknown = set(raw) - _MODEL_KEYS
    if unknown:
        raise ConfigError(f"models file: {where} has unknown keys: {', '.join(sorted(unknown))}")
    provider, sep, vendor = model_id.partition("/")
    if not sep or not vendor or provider not in providers:
        raise ConfigError(f"models file: {where}: the id must be \"provider/model\" with a known provider")
    base = existing.get(model_id) or ModelSpec(id=model_id, provider=provider, vendor_model=vendor, display_name=vendor)
    changes: dict[str, Any] = {}
    for key in ("display_name", "description"):
        if key in raw:
            changes[key] = str(raw[key])
    for key in ("context_window", "max_output_tokens", "embedding_dimensions"):
        if key in raw:
            if not isinstance(raw[key], int) or raw[key] < 0:
                raise ConfigError(f"models file: {where}.{key} must be a non-negative integer")
            changes[key] = raw[key]
    if "capabilities" in raw:
        try:
            changes["capabilities"] = frozenset(_CAPABILITY_NAMES[c] for c in raw["capabilities"])
        except (KeyError, TypeError):
            raise ConfigError(f"models file: {where}.capabilities: use {', '.join(_CAPABILITY_NAMES)}") from None
    if "aliases" in raw:
        changes["aliases"] = tuple(str(a) for a in raw["aliases"] or ())
    if "fallbacks" in raw:
        changes["fallbacks"] = tuple(str(f) for f in raw["fallbacks"] or ())
    if "pricing" in raw:
        changes["pricing"] = _pricing(raw["pricing"], where)
    if "limits" in raw:
        changes["limits"] = _limits(raw["limits"], where)
    if "cache" in raw:
        changes["cache"] = bool(raw["cache"])
    return replace(base, **changes)


def _provider(name: str, raw: Any, existing: ProviderSpec | None) -> ProviderSpec:
    where = f"providers[{name}]"
    keys = {"type", "base_url", "api_key_env", "limits", "dynamic_models", "pass_through"}
    if not isinstance(raw, dict) or set(raw) - keys:
        raise ConfigError(f"models file: {where} takes type, base_url, api_key_env, limits, dynamic_models and "
                          "pass_through")
    kind = raw.get("type", existing.type if existing else "openai_compatible")
    if kind not in PROVIDER_TYPES:
        raise ConfigError(f"models file: {where}.type must be one of {', '.join(PROVIDER_TYPES)}")
    base_url = raw.get("base_url", existing.base_url if existing else None)
    api_key = existing.api_key if existing else None
    if raw.get("api_key_env"):
        api_key = _env(str(raw["api_key_env"]))
    if kind == "openai_compatible":
        configured = bool(base_url)
    elif kind == "local":
        configured = True
    else:
        configured = bool(api_key)
    return ProviderSpec(
        name=name, type=kind, base_url=base_url, api_key=api_key, configured=configured,
        dynamic_models=bool(raw.get("dynamic_models", kind == "openai_compatible")),
        limits=_limits(raw.get("limits"), where),
        pass_through=bool(raw.get("pass_through", existing.pass_through if existing else True)),
    )


def load_catalog(models_file: str | None) -> Catalog:
    providers = builtin_providers()
    models = {m.id: m for m in BUILTIN_MODELS}
    document = _load_document(Path(models_file)) if models_file else {}
    unknown = set(document) - {"providers", "models", "default_model", "default_embedding_model"}
    if unknown:
        raise ConfigError(f"models file: unknown top-level keys: {', '.join(sorted(unknown))}")
    for name, raw in (document.get("providers") or {}).items():
        providers[str(name)] = _provider(str(name), raw, providers.get(str(name)))
    for raw in document.get("models") or []:
        spec = _model(raw, models, providers)
        models[spec.id] = spec
    # Provider-wide limits apply to the provider's models that set none of their own.
    models = {mid: replace(m, limits=m.limits.merged_over(providers[m.provider].limits)) for mid, m in models.items()}
    aliases: dict[str, str] = {}
    for spec in models.values():
        for alias in spec.aliases:
            if alias in models or aliases.get(alias, spec.id) != spec.id:
                raise ConfigError(f"models file: alias {alias!r} is ambiguous")
            aliases[alias] = spec.id
    catalog = Catalog(providers=providers, models=models, aliases=aliases)
    catalog.default_model = str(document.get("default_model") or catalog.default_model)
    catalog.default_embedding_model = str(document.get("default_embedding_model") or catalog.default_embedding_model)
    for spec in models.values():
        for fallback in spec.fallbacks:
            if catalog.resolve(fallback) is None:
                raise ConfigError(f"models file: {spec.id} falls back to unknown model {fallback!r}")
    for name in (catalog.default_model, catalog.default_embedding_model):
        if catalog.resolve(name) is None:
            raise ConfigError(f"models file: default model {name!r} is not a known model")
    return catalog
