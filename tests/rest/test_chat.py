"""Models, chat completions and embeddings through the edge with the official openai SDK."""

from __future__ import annotations

import base64
import json

import aiohttp
import openai
import pytest


async def test_models_list_and_retrieve(client):
    page = await client.models.list()
    ids = [m.id for m in page.data]
    assert "openai/m0" in ids and all(m.object == "model" for m in page.data)
    model = await client.models.retrieve("openai/m1")
    assert model.id == "openai/m1" and model.owned_by == "openai"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nosuchvendor/model")


async def test_chat_completion_not_streamed(edge, client):
    model = edge.stack.model("openai")
    edge.stack.fakes["openai"].script(model.split("/")[1], {"text": "Hello from the edge.", "usage": (12, 5, 0)})
    completion = await client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        temperature=0.2, max_tokens=50)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hello from the edge."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 12 and completion.usage.completion_tokens == 5
    sent = edge.stack.fakes["openai"].requests_for(model.split("/")[1])[-1]
    assert [m["role"] for m in sent["messages"]] == ["system", "user"] and sent["temperature"] == 0.2


async def test_chat_streamed_with_a_tool_call_and_usage_last(edge, client):
    model = edge.stack.model("openai")
    name = model.split("/")[1]
    edge.stack.fakes["openai"].script(name, {"tool_calls": [("call_w", "get_weather", '{"city": "Paris"}')],
                                             "usage": (20, 9, 0)})
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    calls = [c for chunk in chunks for choice in chunk.choices for c in (choice.delta.tool_calls or [])]
    assert calls[0].id == "call_w" and calls[0].function.name == "get_weather"
    assert json.loads("".join(c.function.arguments or "" for c in calls)) == {"city": "Paris"}
    finishes = [choice.finish_reason for chunk in chunks for choice in chunk.choices if choice.finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 20
    assert all(chunk.usage is None for chunk in chunks[:-1])
    sent = edge.stack.fakes["openai"].requests_for(name)[-1]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


async def test_chat_streamed_text_and_json_response_format(edge, client):
    model = edge.stack.model("openai")
    edge.stack.fakes["openai"].script(model.split("/")[1], {"text": '{"answer": 42}'})
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Answer in JSON"}], stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": {
            "type": "object", "properties": {"answer": {"type": "integer"}}}}})
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert json.loads(text) == {"answer": 42}
    sent = edge.stack.fakes["openai"].requests_for(model.split("/")[1])[-1]
    assert sent["response_format"]["type"] == "json_schema"


async def test_embeddings_float_and_base64(edge, client):
    reply = await client.embeddings.create(model="openai/text-embedding-3-small", input=["one", "two words"],
                                           encoding_format="float", dimensions=8)
    assert len(reply.data) == 2 and len(reply.data[0].embedding) == 8 and reply.data[1].index == 1
    assert reply.usage.prompt_tokens == 3
    # The SDK's default asks for base64 and decodes it.
    decoded = await client.embeddings.create(model="openai/text-embedding-3-small", input="one", dimensions=8)
    assert decoded.data[0].embedding == pytest.approx(reply.data[0].embedding, rel=1e-6)
    raw = await client.embeddings.with_raw_response.create(model="openai/text-embedding-3-small", input="one",
                                                          dimensions=8, encoding_format="base64")
    assert base64.b64decode(json.loads(raw.text)["data"][0]["embedding"])  # bytes of float32s


async def test_errors_arrive_as_the_sdks_typed_exceptions(edge, client):
    model = edge.stack.model("openai")
    with pytest.raises(openai.AuthenticationError) as unauthenticated:
        bad = openai.AsyncOpenAI(api_key="pk_live_not-a-key", base_url=edge.base_url, max_retries=0)
        await bad.models.list()
    assert unauthenticated.value.status_code == 401 and unauthenticated.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as missing:
        await client.chat.completions.create(model=model, messages=[{"role": "bogus", "content": "x"}])
    assert missing.value.body["param"].startswith("messages[0]")
    with pytest.raises(openai.BadRequestError) as wrong_type:
        await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                             temperature="hot")
    assert wrong_type.value.body["param"] == "temperature"
    with pytest.raises(openai.UnprocessableEntityError) as unsupported:
        await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], n=2)
    assert unsupported.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        await client.beta.assistants.retrieve("asst_not-even-hex")
    # The vendor's rate limit, after the llm service's retries: 429 with Retry-After.
    name = model.split("/")[1]
    edge.stack.fakes["openai"].script(name, *[{"status": 429, "headers": {"retry-after": "7"}}] * 8)
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert limited.value.status_code == 429


async def test_bodies_are_checked_before_anything_is_written(edge):
    key = await edge.key()
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {key}"}) as http:
        async with http.post(f"{edge.base_url}/chat/completions", data=b"{not json",
                             headers={"content-type": "application/json"}) as bad_json:
            assert bad_json.status == 400 and (await bad_json.json())["error"]["code"] == "invalid_json"
        async with http.post(f"{edge.base_url}/assistants",
                             data=b'{"model": "' + b"x" * (300 * 1024) + b'"}') as huge:
            assert huge.status == 413 and (await huge.json())["error"]["type"] == "invalid_request_error"
        async with http.get(f"{edge.base_url}/nothing-here") as unknown:
            assert unknown.status == 404 and "error" in await unknown.json()
        async with http.get(f"{edge.base_url}/assistants") as listed:
            assert (await listed.json())["data"] == []  # the oversized create stored nothing


async def test_health_and_openapi_document(edge):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{edge.port}/healthz") as health:
            assert await health.json() == {"status": "SERVING"}
        async with http.get(f"http://127.0.0.1:{edge.port}/openapi.json") as reply:
            document = await reply.json()
    assert {"/v1/chat/completions", "/v1/threads/{thread_id}/runs", "/v1/vector_stores/{store_id}/search"} <= set(
        document["paths"])


async def test_the_gateways_limits_and_scopes_reach_the_client(edge):
    from services.gateway.models import NewApiKey, Principal, RateLimits

    keys = edge.stack.keys
    _, limited_key = await keys.create(Principal("rest-limited", frozenset({"admin"}), "cli"),
                                       NewApiKey("limited", ("llm",), None, RateLimits(requests_per_minute=1), False))
    async with openai.AsyncOpenAI(api_key=limited_key, base_url=edge.base_url, max_retries=0) as limited:
        with pytest.raises(openai.RateLimitError) as refused:
            for _ in range(5):  # the gateway's window lets at most one through
                await limited.models.list()
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert refused.value.body["type"] == "rate_limit_error"
    _, llm_only = await keys.create(Principal("rest-scoped", frozenset({"admin"}), "cli"),
                                    NewApiKey("scoped", ("llm",), None, RateLimits(), False))
    async with openai.AsyncOpenAI(api_key=llm_only, base_url=edge.base_url, max_retries=0) as scoped:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await scoped.beta.assistants.list()
        assert denied.value.status_code == 403
