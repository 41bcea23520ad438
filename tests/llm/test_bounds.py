"""Memory a caller can make the service keep is bounded (cooldowns, queues, metric labels,
the response cache by bytes), and CPU-heavy per-request work leaves the event loop."""

from __future__ import annotations

import asyncio
import threading

from parley.llm.v1 import llm_service_pb2 as api
from services.llm import metrics
from services.llm.cache import MemoryCache
from services.llm.capabilities import check_prompt_size
from services.llm.catalog import Limits, load_catalog
from services.llm.limits import Cooldowns, Queues
from services.llm.models import OFF_LOOP_CHARS, ChatRequest, Message, Role, TextPart
from services.llm.tokens import TokenCounter


def test_cooldowns_forget_the_oldest_models():
    cooldowns = Cooldowns(threshold=1, seconds=60, max_keys=100)
    for i in range(10_000):
        cooldowns.failed(f"ollama/model-{i}")
    assert len(cooldowns._failures) <= 100 and len(cooldowns._until) <= 100
    assert cooldowns.until("ollama/model-9999") is not None  # the recent ones are kept
    assert cooldowns.until("ollama/model-0") is None


async def test_queues_forget_idle_deployments_only():
    queues = Queues(max_queues=10)
    limits = Limits(rpm=600, concurrency=1)
    loop = asyncio.get_running_loop()
    held = await queues.acquire("ollama/busy", limits, 1, 2, loop.time() + 5)
    for i in range(1000):
        lease = await queues.acquire(f"ollama/model-{i}", limits, 1, 2, loop.time() + 5)
        lease.release()
    assert queues.count <= 11
    busy = queues.get("ollama/busy", limits)
    assert busy is not None and busy.active == 1  # a deployment with a call in flight is never dropped
    held.release()


def test_metric_model_labels_are_bounded():
    label = metrics.ModelLabels(max_extra=50)
    label.know(["openai/gpt-4o-mini"])
    labels = {label(f"ollama/m-{i}") for i in range(1000)}
    assert len(labels) == 51 and label.OTHER in labels
    assert label("openai/gpt-4o-mini") == "openai/gpt-4o-mini"  # catalog models always keep their id


async def test_the_memory_cache_is_bounded_by_bytes():
    cache = MemoryCache(max_entries=1_000_000, max_bytes=1_000_000)
    value = b"x" * 10_000
    await cache.set_many({f"k{i}": value for i in range(1000)}, ttl=60)
    assert cache.size_bytes <= 1_000_000 and 50 <= cache.count < 100
    assert (await cache.get_many(["k999"]))[0] == value  # the newest survive
    assert (await cache.get_many(["k0"]))[0] is None
    await cache.set_many({"huge": b"y" * 200_000}, ttl=60)  # more than a tenth of the budget
    assert (await cache.get_many(["huge"]))[0] is None
    await cache.set_many({"k999": b"small"}, ttl=60)  # replacing an entry re-counts its size
    assert cache.size_bytes == sum(len(k) + len(v) + 100 for k, (_, v) in cache._entries.items())


class _ThreadRecordingCounter(TokenCounter):
    def __init__(self) -> None:
        self.threads: list[str] = []

    def count_chat(self, spec, messages, tools=()):
        self.threads.append(threading.current_thread().name)
        return super().count_chat(spec, messages, tools)


async def test_large_prompts_are_counted_off_the_event_loop():
    spec = load_catalog(None).resolve("local/echo")
    counter = _ThreadRecordingCounter()
    small = ChatRequest(model="local/echo", messages=(Message(Role.USER, (TextPart("hi"),)),))
    large = ChatRequest(model="local/echo", messages=(Message(Role.USER, (TextPart("word " * (OFF_LOOP_CHARS // 4)),)),))
    await check_prompt_size(counter, spec, small, 2)
    await check_prompt_size(counter, spec, large, OFF_LOOP_CHARS + 1)
    main = threading.current_thread().name
    assert counter.threads[0] == main and counter.threads[1] != main


async def test_a_large_prompt_is_counted_through_the_service(local_stub, as_user):
    """Through gRPC, the worker-thread path gives the same count as the event-loop one."""
    text = "lorem ipsum dolor " * (OFF_LOOP_CHARS // 9)
    large = await local_stub.CountTokens(api.CountTokensRequest(model="local/echo", text=text), metadata=as_user("bo"))
    expected, _ = TokenCounter().count_text(load_catalog(None).resolve("local/echo"), text)
    assert len(text) > OFF_LOOP_CHARS and large.token_count == expected


async def test_large_embedding_batches_are_hashed_off_the_event_loop(monkeypatch):
    from services.llm import cache_codec

    threads: list[str] = []
    original = cache_codec.embedding_key

    def recording(*args):
        threads.append(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(cache_codec, "embedding_key", recording)
    small = await cache_codec.embedding_keys("local/m", 384, False, ["a", "b"])
    large = await cache_codec.embedding_keys("local/m", 384, False, ["x" * (OFF_LOOP_CHARS // 2)] * 3)
    assert small[0] != small[1] and len(set(large)) == 1
    main = threading.current_thread().name
    assert threads[:2] == [main, main] and all(t != main for t in threads[2:])
