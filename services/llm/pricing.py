"""Cost in USD: the models file's price override when it has one, else the PyPI package
`genai-prices` (its bundled snapshot; no network), else 0 (unpriced)."""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache

from services.llm.catalog import ModelSpec, Pricing
from services.llm.models import Usage

log = logging.getLogger("parley.llm.pricing")

# genai-prices names providers by its own ids.
_GENAI_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "mistral": "mistral"}


def _genai_price(provider: str, model: str, input_tokens: int, output_tokens: int, cached: int) -> float | None:
    vendor = _GENAI_PROVIDER.get(provider)
    if vendor is None:
        return None
    import genai_prices

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = genai_prices.calc_price(
                genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cached),
                model,
                provider_id=vendor,
            )
    except LookupError:
        return None
    except Exception as exc:  # noqa: BLE001 - an unpriced model costs 0, it does not fail the call
        log.info("no price for %s/%s (%s)", provider, model, type(exc).__name__)
        return None
    return float(result.total_price)


@lru_cache(maxsize=512)
def list_price(provider: str, model: str) -> Pricing:
    """Per-million prices at a typical prompt size (below long-context price tiers)."""
    n = 100_000
    base = _genai_price(provider, model, n, 0, 0)
    if base is None:
        return Pricing()
    output = _genai_price(provider, model, 0, n, 0) or 0.0
    cached = _genai_price(provider, model, n, 0, n)
    return Pricing(input=base * 10, output=output * 10, cached_input=(cached if cached is not None else base) * 10)


def pricing_of(spec: ModelSpec) -> Pricing:
    return spec.pricing if spec.pricing is not None else list_price(spec.provider, spec.vendor_model)


def cost_usd(spec: ModelSpec, usage: Usage) -> float:
    if spec.pricing is not None:
        p = spec.pricing
        uncached = max(usage.input_tokens - usage.cached_input_tokens, 0)
        return (uncached * p.input + usage.cached_input_tokens * p.cached_input + usage.output_tokens * p.output) / 1e6
    if usage.input_tokens == 0 and usage.output_tokens == 0:
        return 0.0
    price = _genai_price(
        spec.provider, spec.vendor_model, usage.input_tokens, usage.output_tokens, usage.cached_input_tokens
    )
    return price or 0.0
