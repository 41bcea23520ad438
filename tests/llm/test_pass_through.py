"""Vendor models the catalog does not list pass through to their configured vendor, with
conservative defaults, priced by genai-prices where it knows them; ListModels can include the
vendors' own model lists."""

from __future__ import annotations

import logging
import uuid

import grpc
import pytest

from parley.llm.v1 import llm_pb2 as pb
from parley.llm.v1 import llm_service_pb2 as api
from parley.llm.v1 import llm_service_pb2_grpc
from services.llm import pricing
from services.llm.catalog import PASS_THROUGH_CONTEXT_WINDOW, PASS_THROUGH_MAX_OUTPUT
from services.llm.models import Usage
from tests.conftest import channel_to, serve_app
from tests.llm.conftest import llm_settings, vendor_environment
from tests.llm.helpers import collect, user

# The three model ids the seed names, and the wire format each streams in.
SEED_MODELS = [
    ("openai", "openai/gpt-4-turbo-preview", "gpt-4-turbo-preview", 128000),
    ("openai", "openai/gpt-3.5-turbo", "gpt-3.5-turbo", 16385),
    ("anthropic", "anthropic/claude-3-opus-20240229", "claude-3-opus-20240229", 200000),
]


@pytest.mark.parametrize("vendor,model,vendor_model,context_window", SEED_MODELS)
async def test_the_seed_models_stream_through_their_vendor(stub, fakes, as_user, vendor, model, vendor_model,
                                                            context_window):
    fake = fakes[vendor]
    fake.script(vendor_model, {"text": "Passed through to the vendor.", "usage": (1200, 80)})
    text, calls, finish, events = await collect(stub.StreamGenerate(
        api.StreamGenerateRequest(model=model, messages=[user("Who answers?")]), metadata=as_user("pia")))
    assert text == "Passed through to the vendor."
    assert sum(1 for e in events if e.WhichOneof("event") == "text_delta") >= 2
    assert finish.model == model and finish.finish_reason == pb.FINISH_REASON_STOP
    assert (finish.usage.input_tokens, finish.usage.output_tokens) == (1200, 80)
    # genai-prices knows all three: the cost is its price for this usage, not 0.
    spec = (await stub.GetModel(api.GetModelRequest(model_id=model), metadata=as_user("pia")))
    expected = pricing._genai_price(vendor, vendor_model, 1200, 80, 0)
    assert expected and finish.cost_usd == pytest.approx(expected)
    sent = fake.requests_for(vendor_model)[-1]
    assert sent["stream"] is True
    if vendor == "anthropic":
        assert sent["max_tokens"] == PASS_THROUGH_MAX_OUTPUT  # the conservative output cap
    # Conservative defaults, with genai-prices' context window where it has one.
    assert spec.context_window == context_window and spec.max_output_tokens == PASS_THROUGH_MAX_OUTPUT
    assert pb.MODEL_CAPABILITY_VISION not in spec.capabilities and pb.MODEL_CAPABILITY_TOOLS in spec.capabilities
    assert spec.pricing.input_usd_per_million > 0
    assert spec.availability == pb.MODEL_AVAILABILITY_AVAILABLE


async def test_an_unlisted_mistral_model_streams_in_mistrals_wire_format(stub, fakes, as_user):
    fakes["mistral"].script("codestral-latest", {"text": "Mistral passed through.", "usage": (300, 20)})
    text, _, finish, _ = await collect(stub.StreamGenerate(
        api.StreamGenerateRequest(model="mistral/codestral-latest", messages=[user("hi")]), metadata=as_user("pia")))
    assert text == "Mistral passed through." and finish.model == "mistral/codestral-latest"
    assert finish.cost_usd == pytest.approx(pricing._genai_price("mistral", "codestral-latest", 300, 20, 0))
    assert fakes["mistral"].requests_for("codestral-latest")[-1]["stream"] is True


async def test_seed_model_generate_and_tools(stub, fakes, as_user):
    fakes["openai"].script("gpt-3.5-turbo", {"tool_calls": [("c1", "get_time", '{"tz": "UTC"}')]})
    from tests.llm.helpers import weather_tool

    reply = await stub.Generate(api.GenerateRequest(model="openai/gpt-3.5-turbo", messages=[user("time?")],
                                                    tools=[weather_tool("get_time")]), metadata=as_user("pia"))
    assert reply.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [(c.name, c.arguments) for c in reply.message.tool_calls] == [("get_time", '{"tz": "UTC"}')]


async def test_a_model_released_after_the_catalog(stub, fakes, as_user, caplog):
    """Unknown to the catalog and to genai-prices: the 8K default window, cost 0, one log line."""
    vendor_model = f"gpt-next-{uuid.uuid4().hex[:8]}"
    model = f"openai/{vendor_model}"
    secret_prompt = f"confidential {uuid.uuid4()}"
    fakes["openai"].script(vendor_model, {"text": "New model."}, {"text": "Again."})
    with caplog.at_level(logging.INFO, logger="parley.llm"):
        for _ in range(2):
            reply = await stub.Generate(api.GenerateRequest(model=model, messages=[user(secret_prompt)]),
                                        metadata=as_user("pia"))
            assert reply.model == model
    announced = [r for r in caplog.records if model in r.getMessage()]
    assert len(announced) == 1 and "not in the catalog" in announced[0].getMessage()
    assert not any(secret_prompt in r.getMessage() for r in caplog.records)  # no user content logged
    assert reply.cost_usd == 0
    spec = await stub.GetModel(api.GetModelRequest(model_id=model), metadata=as_user("pia"))
    assert spec.context_window == PASS_THROUGH_CONTEXT_WINDOW
    # The defaults are enforced like a catalog model's: no vision, the output cap.
    image = pb.ContentPart(image_url=pb.ImageUrl(url="https://example.com/cat.png"))
    for request in (
        api.GenerateRequest(model=model, messages=[pb.ChatMessage(role=pb.ROLE_USER, content=[image])]),
        api.GenerateRequest(model=model, messages=[user("hi")], max_tokens=PASS_THROUGH_MAX_OUTPUT + 1),
        api.GenerateRequest(model=model, messages=[user("word " * 9000)]),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(request, metadata=as_user("pia"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_what_does_not_pass_through(stub, local_stub, as_user):
    # An unknown provider prefix.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Generate(api.GenerateRequest(model="acme/gpt-4", messages=[user("hi")]), metadata=as_user("pia"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # A vendor that is not configured (the local-only service has no vendor keys).
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await local_stub.Generate(api.GenerateRequest(model="openai/gpt-3.5-turbo", messages=[user("hi")]),
                                  metadata=as_user("pia"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Names that are not model names are not sent anywhere.
    for name in ("openai/", "openai/has space", "openai/semi;colon", "openai/\u00e9", "anthropic/-x"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(api.GenerateRequest(model=name, messages=[user("hi")]), metadata=as_user("pia"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, name


async def test_the_default_listing_does_not_ask_the_vendors(stub, fakes, as_user):
    before = fakes["openai"].model_list_requests + fakes["anthropic"].model_list_requests
    listing = await stub.ListModels(api.ListModelsRequest(page_size=1000), metadata=as_user("pia"))
    assert "openai/gpt-4o-mini" in {m.id for m in listing.models}
    assert fakes["openai"].model_list_requests + fakes["anthropic"].model_list_requests == before


async def test_list_models_includes_the_vendors_own_lists(identity_public_key, fakes, models_file, as_user):
    fakes["openai"].models = ["gpt-4o-mini", "gpt-4-turbo-preview", "gpt-next-listed", "text-embedding-3-small",
                              "whisper-1", "bad name"]
    fakes["anthropic"].models = ["claude-3-opus-20240229", "claude-haiku-4-5", "claude-next-listed"]
    from services.llm.app import build_app

    with vendor_environment(fakes):
        app = await build_app(llm_settings(None, models_file=models_file, vendor_models=True))
    running = await serve_app(app, "llm", identity_public_key)
    channel = channel_to(running)
    try:
        stub = llm_service_pb2_grpc.LLMServiceStub(channel)
        before = fakes["openai"].model_list_requests
        openai_models = {m.id: m for m in (await stub.ListModels(
            api.ListModelsRequest(provider="openai", page_size=1000), metadata=as_user("pia"))).models}
        assert {"openai/gpt-4-turbo-preview", "openai/gpt-next-listed", "openai/gpt-4o-mini"} <= set(openai_models)
        assert not {"openai/whisper-1", "openai/bad name"} & set(openai_models)  # not chat models / not ids
        assert openai_models["openai/gpt-4-turbo-preview"].context_window == 128000
        assert openai_models["openai/gpt-4o-mini"].context_window == 128000  # the catalog's entry wins
        anthropic_models = {m.id: m for m in (await stub.ListModels(
            api.ListModelsRequest(provider="anthropic", page_size=1000), metadata=as_user("pia"))).models}
        assert {"anthropic/claude-3-opus-20240229", "anthropic/claude-next-listed"} <= set(anthropic_models)
        # Paging walks the merged list in id order.
        ids, token = [], ""
        while True:
            page = await stub.ListModels(api.ListModelsRequest(provider="openai", page_size=2, page_token=token),
                                         metadata=as_user("pia"))
            ids += [m.id for m in page.models]
            token = page.next_page_token
            if not token:
                break
        assert ids == sorted(openai_models)
        # Cached: the vendor was asked once for all those listings.
        assert fakes["openai"].model_list_requests - before <= 2  # openai, and ollama (the same fake)
        # A listed model streams like any pass-through model.
        fakes["openai"].script("gpt-next-listed", {"text": "Listed and working."})
        text, _, finish, _ = await collect(stub.StreamGenerate(
            api.StreamGenerateRequest(model="openai/gpt-next-listed", messages=[user("hi")]), metadata=as_user("pia")))
        assert text == "Listed and working." and finish.model == "openai/gpt-next-listed"
    finally:
        await channel.close()
        await running.stop(0.5)
        fakes["openai"].models, fakes["anthropic"].models = [], []


def test_pass_through_costs_follow_genai_prices():
    from services.llm.catalog import ProviderSpec, pass_through_spec

    spec = pass_through_spec(ProviderSpec("openai", "openai", configured=True, api_key="k"), "gpt-3.5-turbo")
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert pricing.cost_usd(spec, usage) == pytest.approx(pricing._genai_price("openai", "gpt-3.5-turbo",
                                                                               1_000_000, 1_000_000, 0))


def test_pass_through_can_be_turned_off_per_vendor(tmp_path, monkeypatch):
    from services.llm.catalog import load_catalog

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0123456789")
    path = tmp_path / "models.yaml"
    path.write_text("providers:\n  openai:\n    pass_through: false\n")
    catalog = load_catalog(str(path))
    assert catalog.resolve("openai/gpt-3.5-turbo") is None
    assert catalog.resolve("openai/gpt-4o-mini") is not None  # the catalog's own models still are
    assert catalog.resolve("anthropic/claude-3-opus-20240229").context_window == 200000
    path.write_text("providers:\n  openai:\n    pass_through: maybe\n    bogus: 1\n")
    from services.runtime.config import ConfigError

    with pytest.raises(ConfigError):
        load_catalog(str(path))
