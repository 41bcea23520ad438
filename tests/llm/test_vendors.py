"""Each vendor through its real SDK against a fake that speaks its wire format: streamed
text, streamed parallel tool calls, usage in streams, and the request each SDK sent."""

from __future__ import annotations

import json

import pytest

from parley.llm.v1 import llm_pb2 as pb
from parley.llm.v1 import llm_service_pb2 as api
from tests.llm.helpers import collect, system, user, weather_tool

VENDOR_MODELS = [
    ("openai", "openai/gpt-4o-mini", "gpt-4o-mini"),
    ("anthropic", "anthropic/claude-haiku-4-5", "claude-haiku-4-5"),
    ("mistral", "mistral/mistral-small-latest", "mistral-small-latest"),
]


@pytest.mark.parametrize("vendor,model,vendor_model", VENDOR_MODELS)
async def test_streamed_text_with_usage(stub, fakes, as_user, vendor, model, vendor_model):
    fake = fakes[vendor]
    fake.script(vendor_model, {"text": "Paris is the capital of France.", "usage": (42, 9)})
    call = stub.StreamGenerate(
        api.StreamGenerateRequest(model=model, messages=[system("Be brief."), user("Capital of France?")],
                                  temperature=0.5, max_tokens=100, stop=["\n\n"]),
        metadata=as_user("vera"),
    )
    text, calls, finish, events = await collect(call)
    assert text == "Paris is the capital of France."
    assert sum(1 for e in events if e.WhichOneof("event") == "text_delta") >= 2  # really streamed
    assert not calls
    assert finish.finish_reason == pb.FINISH_REASON_STOP
    assert finish.model == model
    assert (finish.usage.input_tokens, finish.usage.output_tokens, finish.usage.total_tokens) == (42, 9, 51)
    assert finish.cost_usd > 0  # priced by genai-prices
    sent = fake.requests_for(vendor_model)[-1]
    assert sent["stream"] is True
    if vendor == "anthropic":
        assert sent["system"] == "Be brief."
        assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]}]
        assert sent["max_tokens"] == 100 and sent["stop_sequences"] == ["\n\n"]
    else:
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
        assert sent["stop"] == ["\n\n"]
    if vendor == "openai":
        assert sent["stream_options"] == {"include_usage": True}
        assert sent["max_completion_tokens"] == 100


@pytest.mark.parametrize("vendor,model,vendor_model", VENDOR_MODELS)
async def test_streamed_parallel_tool_calls(stub, fakes, as_user, vendor, model, vendor_model):
    fake = fakes[vendor]
    fake.script(vendor_model, {"tool_calls": [
        ("call_paris", "get_weather", '{"city": "Paris"}'),
        ("call_rome", "get_time", '{"city": "Rome", "tz": true}'),
    ], "usage": (30, 20)})
    call = stub.StreamGenerate(
        api.StreamGenerateRequest(model=model, messages=[user("Weather in Paris and time in Rome?")],
                                  tools=[weather_tool("get_weather"), weather_tool("get_time")],
                                  tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED),
                                  parallel_tool_calls=True),
        metadata=as_user("vera"),
    )
    text, calls, finish, events = await collect(call)
    assert finish.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert calls == {
        0: {"id": "call_paris", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "call_rome", "name": "get_time", "arguments": '{"city": "Rome", "tz": true}'},
    }
    assert finish.usage.output_tokens == 20
    sent = fake.requests_for(vendor_model)[-1]
    if vendor == "anthropic":
        assert sent["tool_choice"] == {"type": "any"}
        assert sent["tools"][0]["input_schema"]["required"] == ["city"]
    else:
        assert sent["tool_choice"] == ("any" if vendor == "mistral" else "required")
        assert sent["tools"][0]["function"]["name"] == "get_weather"
        assert sent["parallel_tool_calls"] is True


@pytest.mark.parametrize("vendor,model,vendor_model", VENDOR_MODELS)
async def test_tool_results_round_trip(stub, fakes, as_user, vendor, model, vendor_model):
    """A conversation with a tool call and its result is translated into each vendor's shape."""
    fake = fakes[vendor]
    fake.script(vendor_model, {"text": "It is sunny in Paris."})
    messages = [
        user("Weather in Paris?"),
        pb.ChatMessage(role=pb.ROLE_ASSISTANT, tool_calls=[pb.ToolCall(id="call_1", name="get_weather",
                                                                        arguments='{"city": "Paris"}')]),
        pb.ChatMessage(role=pb.ROLE_TOOL, tool_call_id="call_1", content=[pb.ContentPart(text='{"sky": "sunny"}')]),
    ]
    reply = await stub.Generate(api.GenerateRequest(model=model, messages=messages, tools=[weather_tool()]),
                                metadata=as_user("vera"))
    assert reply.message.content[0].text == "It is sunny in Paris."
    assert reply.message.role == pb.ROLE_ASSISTANT
    sent = fake.requests_for(vendor_model)[-1]["messages"]
    if vendor == "anthropic":
        assert sent[1] == {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]}
        assert sent[2] == {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": '{"sky": "sunny"}'}]}
    else:
        assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
        assert sent[2]["role"] == "tool" and sent[2]["tool_call_id"] == "call_1"


async def test_generate_collects_tool_calls(stub, fakes, as_user):
    fakes["openai"].script("gpt-4o-mini", {"tool_calls": [("c1", "get_weather", '{"city": "Oslo"}')]})
    reply = await stub.Generate(
        api.GenerateRequest(model="fast", messages=[user("Weather in Oslo?")], tools=[weather_tool()]),
        metadata=as_user("vera"),
    )
    assert reply.model == "openai/gpt-4o-mini"  # the alias resolved
    assert reply.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [(c.id, c.name, json.loads(c.arguments)) for c in reply.message.tool_calls] == [
        ("c1", "get_weather", {"city": "Oslo"})]


async def test_json_schema_output_on_anthropic_is_a_forced_tool(stub, fakes, as_user):
    from google.protobuf import struct_pb2

    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"answer": {"type": "string"}}})
    fakes["anthropic"].script("claude-haiku-4-5", {"tool_calls": [("t1", "answer", '{"answer": "42"}')]})
    reply = await stub.Generate(
        api.GenerateRequest(model="anthropic/claude-haiku-4-5", messages=[user("The answer?")],
                            response_format=pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
                                                              json_schema=pb.JsonSchema(name="answer", schema=schema))),
        metadata=as_user("vera"),
    )
    assert json.loads(reply.message.content[0].text) == {"answer": "42"}
    assert not reply.message.tool_calls
    assert reply.finish_reason == pb.FINISH_REASON_STOP
    assert fakes["anthropic"].requests_for("claude-haiku-4-5")[-1]["tool_choice"] == {"type": "tool", "name": "answer"}


async def test_openai_compatible_local_server(stub, fakes, as_user):
    """Ollama and friends: any model of a dynamic OpenAI-compatible provider, by base URL."""
    fakes["openai"].script("llama3.2", {"text": "Local hello."})
    reply = await stub.Generate(api.GenerateRequest(model="ollama/llama3.2", messages=[user("hi")]),
                                metadata=as_user("vera"))
    assert reply.message.content[0].text == "Local hello."
    assert reply.model == "ollama/llama3.2"
    assert reply.cost_usd == 0


async def test_vendor_embeddings(stub, fakes, as_user):
    reply = await stub.Embed(api.EmbedRequest(model="openai/text-embedding-3-small", inputs=["a b", "c d e"],
                                              dimensions=8), metadata=as_user("vera"))
    assert [len(e.values) for e in reply.embeddings] == [8, 8]
    assert reply.usage.input_tokens == 5
    assert fakes["openai"].requests_for("text-embedding-3-small")[-1]["dimensions"] == 8


async def test_list_models_reports_vendors_with_prices(stub, as_user):
    reply = await stub.ListModels(api.ListModelsRequest(provider="anthropic"), metadata=as_user("vera"))
    haiku = next(m for m in reply.models if m.id == "anthropic/claude-haiku-4-5")
    assert haiku.pricing.input_usd_per_million == pytest.approx(1.0)
    assert haiku.pricing.output_usd_per_million == pytest.approx(5.0)
    assert pb.MODEL_CAPABILITY_TOOLS in haiku.capabilities and haiku.context_window == 200000
    priced = await stub.GetModel(api.GetModelRequest(model_id="openai/priced"), metadata=as_user("vera"))
    assert priced.pricing.input_usd_per_million == 1000000


@pytest.mark.parametrize("vendor,model,vendor_model", VENDOR_MODELS)
async def test_images_and_structured_output_are_translated(stub, fakes, as_user, vendor, model, vendor_model):
    from google.protobuf import struct_pb2

    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"color": {"type": "string"}}})
    fake = fakes[vendor]
    if vendor == "anthropic":
        fake.script(vendor_model, {"tool_calls": [("t1", "color", '{"color": "red"}')]})
    else:
        fake.script(vendor_model, {"text": '{"color": "red"}'})
    image = pb.ContentPart(image_data=pb.ImageData(data=b"\x89PNG fake", media_type="image/png"))
    url = pb.ContentPart(image_url=pb.ImageUrl(url="https://example.com/cat.jpg", detail=pb.IMAGE_DETAIL_LOW))
    reply = await stub.Generate(api.GenerateRequest(
        model=model,
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content=[pb.ContentPart(text="Which color?"), image, url])],
        response_format=pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
                                          json_schema=pb.JsonSchema(name="color", schema=schema, strict=True)),
    ), metadata=as_user("vera"))
    assert json.loads(reply.message.content[0].text) == {"color": "red"}
    sent = fake.requests_for(vendor_model)[-1]
    content = sent["messages"][-1]["content"]
    if vendor == "anthropic":
        assert content[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                          "data": "iVBORyBmYWtl"}}
        assert content[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
        assert sent["tools"][-1]["name"] == "color"
    else:
        assert content[1]["image_url"]["url"] == "data:image/png;base64,iVBORyBmYWtl"
        assert content[2]["image_url"]["url"] == "https://example.com/cat.jpg"
        json_schema = sent["response_format"]["json_schema"]
        assert sent["response_format"]["type"] == "json_schema" and json_schema["name"] == "color"
        assert json_schema["schema"]["properties"] == {"color": {"type": "string"}}  # Mistral's SDK too
    if vendor == "openai":
        assert content[2]["image_url"]["detail"] == "low" and sent["response_format"]["json_schema"]["strict"] is True
