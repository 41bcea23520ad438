"""Token streams through the gateway to the real llm service: events unchanged, the
client's cancellation and deadline reaching the vendor, stream and token limits fed by the
final usage event, the prompt PII policy, and a backend killed mid-stream."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from parley.llm.v1 import llm_pb2
from parley.llm.v1 import llm_service_pb2 as lapi
from parley.llm.v1 import llm_service_pb2_grpc as lgrpc
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from services.gateway.models import RateLimits
from services.runtime.status import error_details, from_rpc_error
from tests.conftest import expect_error
from tests.gateway.conftest import (
    EndlessVendor,
    bearer,
    free_port,
    gateway_settings,
    sensitive,
    spawn,
    start_gateway,
    stop,
    wait_serving,
)


def prompt(text: str, **options) -> lapi.StreamGenerateRequest:
    return lapi.StreamGenerateRequest(model="local/echo", messages=[
        llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text=text)])], **options)


def words(count: int) -> str:
    return " ".join(f"w{i}-{uuid.uuid4().hex[:4]}" for i in range(count))


async def eventually(check, attempts: int = 200, pause: float = 0.05) -> None:
    """Polls `check` (bounded), for effects that happen after a call returns."""
    for _ in range(attempts):
        if check():
            return
        await asyncio.sleep(pause)
    assert check()


async def test_stream_through_the_gateway_equals_the_direct_stream(gw_channel, llm_backend, as_user, make_key):
    secret = await make_key("stream-user", ["llm"])
    text = "the same answer either way"
    via_gateway = [e async for e in lgrpc.LLMServiceStub(gw_channel).StreamGenerate(prompt(text),
                                                                                    metadata=bearer(secret))]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{llm_backend.port}") as direct_channel:
        direct = [e async for e in lgrpc.LLMServiceStub(direct_channel).StreamGenerate(
            prompt(text), metadata=as_user("stream-user", ("llm",)))]

    def answer(events):  # deltas may be coalesced differently from one call to the next
        return "".join(e.text_delta.text for e in events), events[-1].finish.usage.total_tokens

    assert answer(via_gateway) == answer(direct) == (text, direct[-1].finish.usage.total_tokens)
    assert via_gateway[-1].finish.usage.output_tokens == 5


async def test_client_cancel_stops_the_backend_and_the_vendor(gw_channel, make_key, vendor):
    secret = await make_key("stream-user", ["llm"])
    vendor.delay = 0.05
    try:
        before = vendor.closed_early
        call = lgrpc.LLMServiceStub(gw_channel).StreamGenerate(prompt(words(400)), metadata=bearer(secret))
        received = 0
        async for event in call:
            received += 1
            if received == 3:
                break
        call.cancel()
        await eventually(lambda: vendor.closed_early > before)
        assert vendor.words_sent[-1] < 400
    finally:
        vendor.delay = 0.0


async def test_the_callers_deadline_reaches_the_vendor(gw_channel, make_key, vendor):
    secret = await make_key("stream-user", ["llm"])
    vendor.delay = 0.05
    try:
        before = vendor.closed_early
        call = lgrpc.LLMServiceStub(gw_channel).StreamGenerate(prompt(words(400)), metadata=bearer(secret), timeout=0.5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: vendor.closed_early > before)
    finally:
        vendor.delay = 0.0


async def test_concurrent_streams_per_key(gw_channel, make_key, vendor):
    secret = await make_key("streams-user", ["llm"], limits=RateLimits(concurrent_streams=1))
    stub = lgrpc.LLMServiceStub(gw_channel)
    vendor.delay = 0.05
    try:
        first = stub.StreamGenerate(prompt(words(200)), metadata=bearer(secret))
        await first.read()
        second = stub.StreamGenerate(prompt("two"), metadata=bearer(secret))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await second.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_details(from_rpc_error(caught.value))["ErrorInfo"].reason == "TOO_MANY_STREAMS"
        first.cancel()
    finally:
        vendor.delay = 0.0
    for _ in range(100):  # the slot frees once the gateway has seen the cancellation
        try:
            assert [e async for e in stub.StreamGenerate(prompt("three"), metadata=bearer(secret))]
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the stream slot was never released")


async def test_tokens_per_minute_from_the_final_usage(gw_channel, make_key):
    secret = await make_key("tokens-user", ["llm"], limits=RateLimits(tokens_per_minute=40))
    stub = lgrpc.LLMServiceStub(gw_channel)
    events = [e async for e in stub.StreamGenerate(prompt(words(30)), metadata=bearer(secret))]
    assert events[-1].finish.usage.total_tokens >= 40
    reason, _ = await expect_error(stub.Generate(lapi.GenerateRequest(model="local/echo", messages=[
        llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text="more")])]),
        metadata=bearer(secret)), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert reason == "RATE_LIMITED"
    # Unary answers count too.
    other = await make_key("tokens-user-2", ["llm"], limits=RateLimits(tokens_per_minute=40))
    await stub.Generate(lapi.GenerateRequest(model="local/echo", messages=[
        llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text=words(40))])]),
        metadata=bearer(other))
    await expect_error(stub.CountTokens(lapi.CountTokensRequest(model="local/echo", text="x"), metadata=bearer(other)),
                       grpc.StatusCode.RESOURCE_EXHAUSTED)


async def test_prompt_pii_policy_redacts_before_the_vendor(gw_channel, make_key):
    email, phone = sensitive("carol.smith@example.com"), sensitive("+1 415 555 0199")
    card = sensitive("4242 4242 4242 4242")
    text = f"reach me at {email} or {phone}, card {card}"
    stub = lgrpc.LLMServiceStub(gw_channel)
    redacting = await make_key("pii-user", ["llm"], redact=True)
    answer = "".join([e.text_delta.text async for e in stub.StreamGenerate(prompt(text), metadata=bearer(redacting))])
    assert answer == "reach me at [EMAIL] or [PHONE], card [CARD_NUMBER]"
    unary = await stub.Generate(lapi.GenerateRequest(model="local/echo", messages=[
        llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text=text)])]),
        metadata=bearer(redacting))
    assert email not in unary.message.content[0].text
    plain = await make_key("pii-user", ["llm"])
    answer = "".join([e.text_delta.text async for e in stub.StreamGenerate(prompt(text), metadata=bearer(plain))])
    assert answer == text


async def test_llm_process_behind_the_gateway_cancel_reaches_the_vendor_and_a_kill_gives_unavailable(
        admin_url, identity_private_key, key_files, sessions_backend, make_key, log_dir):
    """The llm service as its own process, its OpenAI provider pointed at a local vendor
    endpoint that streams slowly: a client cancel closes the vendor's HTTP stream; killing
    the llm process mid-stream gives the client UNAVAILABLE and the gateway keeps serving."""
    vendor = await EndlessVendor().start()
    port = free_port()
    env = {"PARLEY_LLM_PORT": str(port), "PARLEY_DATABASE_URL": admin_url, "PARLEY_LLM_WARM_EMBEDDINGS": "false",
           "PARLEY_IDENTITY_PUBLIC_KEY_FILE": str(key_files[1]), "PARLEY_REDIS_URL": "", "PARLEY_LOG_LEVEL": "INFO",
           "OPENAI_API_KEY": sensitive("sk-test-" + uuid.uuid4().hex), "OPENAI_BASE_URL": vendor.base_url}
    llm = spawn("services.llm", env, log_dir, "llm-killed")
    running = None
    request = lapi.StreamGenerateRequest(model="openai/gpt-4o-mini", messages=[
        llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text="talk for a long time")])])
    try:
        await wait_serving(port, llm)
        running = await start_gateway(gateway_settings(admin_url, identity_private_key, targets={
            "llm": f"127.0.0.1:{port}", "sessions": f"127.0.0.1:{sessions_backend.port}", "files": None,
            "assistants": None}))
        secret = await make_key("kill-user", ["llm", "sessions"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = lgrpc.LLMServiceStub(channel)

            # 1. The client cancels: the vendor's HTTP stream is closed.
            call = stub.StreamGenerate(request, metadata=bearer(secret), timeout=60)
            for _ in range(3):
                await call.read()
            call.cancel()
            await eventually(lambda: vendor.hangups == 1)
            assert vendor.completed == 0

            # 2. The llm process dies mid-stream: UNAVAILABLE at once, naming the backend.
            call = stub.StreamGenerate(request, metadata=bearer(secret), timeout=60)
            for _ in range(3):
                await call.read()
            llm.kill()
            llm.wait()
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                while await call.read() is not grpc.aio.EOF:
                    pass
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_details(from_rpc_error(caught.value))["ErrorInfo"].metadata["backend"] == "llm"
            print(f"UNAVAILABLE {1000 * (loop.time() - killed_at):.1f} ms after the kill")

            # 3. The gateway keeps serving: other backends at once, and llm again once it is back.
            await sgrpc.SessionServiceStub(channel).ListSessions(sapi.ListSessionsRequest(), metadata=bearer(secret))
            await expect_error(stub.ListModels(lapi.ListModelsRequest(), metadata=bearer(secret)),
                               grpc.StatusCode.UNAVAILABLE)
            llm = spawn("services.llm", env, log_dir, "llm-restarted")
            await wait_serving(port, llm)
            for _ in range(100):
                try:
                    await stub.ListModels(lapi.ListModelsRequest(), metadata=bearer(secret))
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("the gateway never reached the restarted llm service")
    finally:
        if running is not None:
            await running.stop(0.5)
        stop(llm)
        await vendor.stop()


@pytest.fixture
async def capped_gateway(admin_url, identity_private_key, llm_backend):
    """A gateway whose backend calls get at most 0.5 s, whatever the caller asks for."""
    running = await start_gateway(gateway_settings(admin_url, identity_private_key, targets={
        "llm": f"127.0.0.1:{llm_backend.port}", "sessions": None, "files": None, "assistants": None},
        max_deadline_seconds=0.5))
    yield running
    await running.stop(0.5)


@pytest.mark.parametrize("timeout", [None, 120.0], ids=["no deadline", "a longer deadline"])
async def test_backend_calls_get_the_maximum_deadline(capped_gateway, make_key, vendor, timeout):
    secret = await make_key("deadline-cap", ["llm"])
    vendor.delay = 0.05
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{capped_gateway.port}") as channel:
            stub = lgrpc.LLMServiceStub(channel)
            before = vendor.closed_early
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stub.StreamGenerate(prompt(words(400)), metadata=bearer(secret), timeout=timeout):
                    pass
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await eventually(lambda: vendor.closed_early > before)
            unary = lapi.GenerateRequest(model="local/echo", messages=prompt(words(400)).messages)
            await expect_error(stub.Generate(unary, metadata=bearer(secret), timeout=timeout),
                               grpc.StatusCode.DEADLINE_EXCEEDED)
            # A short call is unaffected.
            vendor.delay = 0.0
            reply = await stub.Generate(lapi.GenerateRequest(model="local/echo", messages=prompt("hi").messages),
                                        metadata=bearer(secret), timeout=timeout)
            assert reply.usage.output_tokens > 0
    finally:
        vendor.delay = 0.0


def test_the_maximum_deadline_is_configurable(monkeypatch):
    from services.gateway.app import GatewaySettings
    from services.runtime.config import ConfigError

    monkeypatch.setenv("PARLEY_IDENTITY_PRIVATE_KEY", "unused")
    assert GatewaySettings.from_env().max_deadline_seconds == 3600
    monkeypatch.setenv("PARLEY_GATEWAY_MAX_DEADLINE_SECONDS", "30")
    assert GatewaySettings.from_env().max_deadline_seconds == 30
    monkeypatch.setenv("PARLEY_GATEWAY_MAX_DEADLINE_SECONDS", "0")
    with pytest.raises(ConfigError):
        GatewaySettings.from_env()
