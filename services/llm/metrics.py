"""OpenTelemetry metrics of the llm service, fed from the usage records (so they count
exactly what the ledger counts): tokens, duration, time to first token, cost, calls by
status and cache hits, and queue depth. No-ops unless the process installs a MeterProvider."""

from __future__ import annotations

import weakref

from opentelemetry import metrics

from services.llm.usage import UsageRecord

_meter = metrics.get_meter("parley.llm")
_tokens = _meter.create_histogram("gen_ai.client.token.usage", unit="{token}",
                                  description="Tokens used per call, by gen_ai.token.type")
_duration = _meter.create_histogram("gen_ai.client.operation.duration", unit="s",
                                    description="End-to-end latency of model calls, queueing included")
_ttft = _meter.create_histogram("parley.llm.time_to_first_token", unit="s",
                                description="From request to the first streamed delta")
_cost = _meter.create_counter("parley.llm.cost", unit="USD", description="Cost of model calls")
_queue_wait = _meter.create_histogram("parley.llm.queue.wait", unit="s",
                                      description="Time calls waited in a deployment's queue (RPM/TPM/concurrency limits)")
_calls = _meter.create_counter("parley.llm.calls", unit="{call}",
                               description="Model calls by status and cache hit (success rate, cache hit rate)")


class ModelLabels:
    """Label values for model ids. Callers choose model ids ("ollama/<anything>", pass-through
    vendor models) and every distinct value is a time series kept for the life of the
    process, so beyond the catalog's models only the first `max_extra` ids keep their name;
    later ones are reported as "other"."""

    OTHER = "other"

    def __init__(self, max_extra: int = 200) -> None:
        self._known: set[str] = set()
        self._extra: set[str] = set()
        self._max_extra = max_extra

    def know(self, model_ids) -> None:
        self._known.update(model_ids)

    def __call__(self, model: str) -> str:
        if model in self._known or model in self._extra:
            return model
        if len(self._extra) < self._max_extra:
            self._extra.add(model)
            return model
        return self.OTHER


model_label = ModelLabels()


def observe(record: UsageRecord) -> None:
    """A ledger listener: one record, one set of measurements."""
    attributes = {
        "gen_ai.operation.name": "chat" if record.kind == "chat" else "embeddings",
        "gen_ai.provider.name": record.provider,
        "gen_ai.request.model": model_label(record.model),
    }
    _calls.add(1, {**attributes, "parley.llm.status": record.status, "parley.llm.cache_hit": record.cache_hit})
    _duration.record(record.latency_ms / 1000, {**attributes, "parley.llm.status": record.status})
    if not record.cache_hit:
        _queue_wait.record(record.queue_ms / 1000, {"gen_ai.provider.name": record.provider})
    if record.status != "ok":
        return
    _tokens.record(record.input_tokens, {**attributes, "gen_ai.token.type": "input"})
    if record.kind == "chat":
        _tokens.record(record.output_tokens, {**attributes, "gen_ai.token.type": "output"})
    if record.cost_usd:
        _cost.add(record.cost_usd, attributes)
    if record.time_to_first_token_ms is not None and record.streamed:
        _ttft.record(record.time_to_first_token_ms / 1000, attributes)


_queue_registries: weakref.WeakSet = weakref.WeakSet()


def _depths(options):
    depths: dict[str, int] = {}
    for queues in list(_queue_registries):
        for key, queue in queues.items():
            label = model_label(key)
            depths[label] = depths.get(label, 0) + queue.depth  # "other" sums its deployments
    return [metrics.Observation(depth, {"parley.llm.deployment": label}) for label, depth in depths.items()]


_meter.create_observable_gauge("parley.llm.queue.depth", callbacks=[_depths], unit="{call}",
                               description="Calls waiting in a deployment's queue")


def observe_queues(queues) -> None:
    """Report these queues' depths (read when metrics are collected)."""
    _queue_registries.add(queues)
