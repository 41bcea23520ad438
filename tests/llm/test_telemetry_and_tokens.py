"""One span per model call with the GenAI attributes, and CountTokens."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from parley.llm.v1 import llm_service_pb2 as api
from services.runtime.telemetry import setup_telemetry
from tests.conftest import metric_reader
from tests.llm.helpers import collect, user


async def test_each_model_call_is_one_span_with_genai_attributes(stub, fakes, as_user):
    exporter = InMemorySpanExporter()
    setup_telemetry("llm-tests", SimpleSpanProcessor(exporter))
    fakes["mistral"].script("mistral-small-latest", {"text": "Bonjour.", "usage": (13, 3)})
    await collect(stub.StreamGenerate(api.StreamGenerateRequest(model="mistral/mistral-small-latest",
                                                                messages=[user("Salut")], temperature=0.2),
                                      metadata=as_user("tess")))
    spans = [s for s in exporter.get_finished_spans() if s.attributes.get("gen_ai.provider.name") == "mistral"]
    assert len(spans) == 1
    attributes = spans[0].attributes
    assert spans[0].name == "chat mistral-small-latest"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "mistral-small-latest"
    assert attributes["gen_ai.request.temperature"] == 0.2
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (13, 3)
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    # Message content is never recorded.
    assert not any("Salut" in str(v) or "Bonjour" in str(v) for v in attributes.values())


async def test_count_tokens(stub, as_user):
    text = await stub.CountTokens(api.CountTokensRequest(model="fast", text="Hello world, how are you?"),
                                  metadata=as_user("tess"))
    assert text.model == "openai/gpt-4o-mini" and 5 <= text.token_count <= 8
    chat = await stub.CountTokens(api.CountTokensRequest(model="anthropic/claude-haiku-4-5",
                                                         messages=[user("Hello world, how are you?")]),
                                  metadata=as_user("tess"))
    assert chat.token_count > text.token_count  # message framing counts too
    assert chat.exact is False  # Anthropic's tokenizer is not public: an estimate, and it says so


def _metric_points() -> dict:
    found = {}
    data = metric_reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = metric
    return found


def _token_sums(found: dict, model: str) -> dict:
    usage = found.get("gen_ai.client.token.usage")
    points = usage.data.data_points if usage else ()
    return {p.attributes["gen_ai.token.type"]: p.sum for p in points if p.attributes["gen_ai.request.model"] == model}


async def test_metrics_follow_the_usage_records(stub, fakes, as_user):
    # The process's one meter provider is cumulative over the whole test run: compare deltas.
    before = _token_sums(_metric_points(), "openai/gpt-4o-mini")
    fakes["openai"].script("gpt-4o-mini", {"text": "Counted.", "usage": (21, 4)})
    await collect(stub.StreamGenerate(api.StreamGenerateRequest(model="openai/gpt-4o-mini", messages=[user("m")]),
                                      metadata=as_user("tess")))
    await stub.Generate(api.GenerateRequest(model="openai/limited", messages=[user("q")]), metadata=as_user("tess"))
    found = _metric_points()
    after = _token_sums(found, "openai/gpt-4o-mini")
    assert {kind: after[kind] - before.get(kind, 0) for kind in after} == {"input": 21, "output": 4}
    calls = [p for p in found["parley.llm.calls"].data.data_points if p.attributes["parley.llm.status"] == "ok"]
    assert sum(p.value for p in calls) >= 1
    assert "parley.llm.time_to_first_token" in found and "parley.llm.cost" in found
    assert "parley.llm.queue.depth" in found
