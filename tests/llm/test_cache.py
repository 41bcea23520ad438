"""The response and embeddings caches: in memory, and in the running Redis shared by two
replicas."""

from __future__ import annotations

import uuid

import pytest

from parley.llm.v1 import llm_pb2 as pb
from parley.llm.v1 import llm_service_pb2 as api
from services.llm.app import build_app
from tests.conftest import channel_to, redis_url_for_tests, serve_app
from tests.llm.conftest import llm_settings, vendor_environment
from tests.llm.helpers import collect, user

# PARLEY_TEST_REDIS_URL, or the test run's own redis-server (tests/conftest.py).
REDIS_URL = redis_url_for_tests()


async def test_response_cache_hit_and_miss(stub, fakes, as_user):
    fake = fakes["openai"]
    question = f"What is {uuid.uuid4()}?"
    request = api.GenerateRequest(model="openai/gpt-4o-mini", messages=[user(question)], temperature=0)
    before = len(fake.requests)
    miss = await stub.Generate(request, metadata=as_user("cora"))
    hit = await stub.Generate(request, metadata=as_user("dave"))
    assert (miss.cache_hit, hit.cache_hit) == (False, True)
    assert len(fake.requests) - before == 1
    assert hit.message == miss.message and hit.model == miss.model
    assert hit.cost_usd == 0 and miss.cost_usd > 0
    # The stream of a cached answer says so too.
    _, _, finish, _ = await collect(stub.StreamGenerate(
        api.StreamGenerateRequest.FromString(request.SerializeToString()), metadata=as_user("cora")))
    assert finish.cache_hit and finish.cost_usd == 0
    # BYPASS always calls the vendor; another temperature is another request.
    request.cache_policy = pb.CACHE_POLICY_BYPASS
    assert not (await stub.Generate(request, metadata=as_user("cora"))).cache_hit
    assert len(fake.requests) - before == 2


async def test_non_deterministic_requests_are_cached_only_when_forced(stub, fakes, as_user):
    request = api.GenerateRequest(model="openai/gpt-4o-mini", messages=[user(f"Poem {uuid.uuid4()}")],
                                  temperature=0.9)
    assert not (await stub.Generate(request, metadata=as_user("cora"))).cache_hit
    assert not (await stub.Generate(request, metadata=as_user("cora"))).cache_hit
    request.cache_policy = pb.CACHE_POLICY_FORCE
    assert not (await stub.Generate(request, metadata=as_user("cora"))).cache_hit
    assert (await stub.Generate(request, metadata=as_user("cora"))).cache_hit


async def test_embedding_cache(local_stub, as_user):
    fresh = f"A sentence nobody embedded before: {uuid.uuid4()}"
    first = await local_stub.Embed(api.EmbedRequest(inputs=["The cat sits on the mat.", fresh]), metadata=as_user("cora"))
    second = await local_stub.Embed(api.EmbedRequest(inputs=[fresh]), metadata=as_user("cora"))
    assert first.embeddings[1].cache_hit is False
    assert second.embeddings[0].cache_hit is True
    assert list(second.embeddings[0].values) == pytest.approx(list(first.embeddings[1].values), abs=1e-6)
    assert second.usage.input_tokens == 0  # nothing was embedded


async def test_redis_cache_is_shared_by_replicas(admin_url, identity_public_key, fakes, models_file, as_user):
    fake = fakes["openai"]
    replicas = []
    with vendor_environment(fakes):
        for _ in range(2):
            app = await build_app(llm_settings(None, models_file=models_file, redis_url=REDIS_URL))
            replicas.append((app, await serve_app(app, "llm", identity_public_key)))
    try:
        first, second = (api_stub(running) for _, running in replicas)
        request = api.GenerateRequest(model="openai/gpt-4o-mini", messages=[user(f"Shared {uuid.uuid4()}")],
                                      seed=7)
        before = len(fake.requests)
        assert not (await first[0].Generate(request, metadata=as_user("cora"))).cache_hit
        assert (await second[0].Generate(request, metadata=as_user("cora"))).cache_hit
        assert len(fake.requests) - before == 1
        text = f"Embedded once, read twice {uuid.uuid4()}"
        a = await first[0].Embed(api.EmbedRequest(inputs=[text]), metadata=as_user("cora"))
        b = await second[0].Embed(api.EmbedRequest(inputs=[text]), metadata=as_user("cora"))
        assert (a.embeddings[0].cache_hit, b.embeddings[0].cache_hit) == (False, True)
        for _, channel in (first, second):
            await channel.close()
    finally:
        for _, running in replicas:
            await running.stop(0.5)


async def test_redis_shares_rate_limits_between_replicas(identity_public_key, fakes, models_file, as_user):
    """6 RPM is one request per 10 s for the whole deployment, whichever replica takes it."""
    import grpc

    from services.runtime.status import error_details, from_rpc_error

    prefix = f"parley:llm-test:{uuid.uuid4().hex}:"
    replicas = []
    with vendor_environment(fakes):
        for _ in range(2):
            app = await build_app(llm_settings(None, models_file=models_file, redis_url=REDIS_URL, redis_prefix=prefix))
            replicas.append((app, await serve_app(app, "llm", identity_public_key)))
    try:
        (first, first_channel), (second, second_channel) = (api_stub(running) for _, running in replicas)
        ok = await first.Generate(api.GenerateRequest(model="openai/shared", messages=[user("one")]),
                                  metadata=as_user("cora"))
        assert ok.message.content
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await second.Generate(api.GenerateRequest(model="openai/shared", messages=[user("two")],
                                                      max_queue_time={"nanos": 300_000_000}), metadata=as_user("cora"))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_details(from_rpc_error(caught.value))["ErrorInfo"].reason == "QUEUE_TIMEOUT"
        await first_channel.close()
        await second_channel.close()
    finally:
        for _, running in replicas:
            await running.stop(0.5)


def api_stub(running):
    from parley.llm.v1 import llm_service_pb2_grpc

    channel = channel_to(running)
    return llm_service_pb2_grpc.LLMServiceStub(channel), channel
