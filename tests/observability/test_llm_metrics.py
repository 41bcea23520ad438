"""The llm service's reliability metrics on a real llm server talking to fake vendors (the
vendors' own wire formats, tests/llm/fakes.py): retries, fallbacks, cooldowns and budget
checks near their limit, as the metrics endpoint shows them."""

from __future__ import annotations

import math

from parley.llm.v1 import llm_pb2 as pb
from parley.llm.v1 import llm_service_pb2 as api
from tests.llm.conftest import fakes, models_file, stub, vendor_llm  # noqa: F401 - the llm tests' fixtures
from tests.observability.test_call_metrics import samples, scrape


def user(text: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=pb.ROLE_USER, content=[pb.ContentPart(text=text)])


def total(text: str, name: str, **labels: str) -> float:
    return sum(value for found, value in samples(text, name) if all(found.get(k) == v for k, v in labels.items()))


async def test_retries_fallbacks_and_cooldowns_are_counted(metrics_endpoint, stub, fakes, as_user):  # noqa: F811
    before = scrape(metrics_endpoint)
    fakes["openai"].script("obs-flaky", {"status": 429, "error": "Rate limit reached"}, {"text": "Worth it."})
    reply = await stub.Generate(api.GenerateRequest(model="openai/obs-flaky", messages=[user("hi")]),
                                metadata=as_user("olga"))
    assert reply.message.content[0].text == "Worth it."
    fakes["openai"].script("obs-broken", *[{"status": 500, "error": "boom"}] * 3)
    fakes["anthropic"].script("claude-haiku-4-5", {"text": "Anthropic to the rescue."})
    rescued = await stub.Generate(api.GenerateRequest(model="openai/obs-broken", messages=[user("hi")],
                                                      fallback_models=["anthropic/claude-haiku-4-5"]),
                                  metadata=as_user("olga"))
    assert rescued.model == "anthropic/claude-haiku-4-5"
    after = scrape(metrics_endpoint)
    retries = "parley_llm_retries_total"
    assert total(after, retries, gen_ai_provider_name="openai") - total(before, retries, gen_ai_provider_name="openai") >= 3
    fallbacks = "parley_llm_fallbacks_total"
    assert total(after, fallbacks, gen_ai_provider_name="openai") == total(before, fallbacks, gen_ai_provider_name="openai") + 1
    cooldowns = "parley_llm_cooldowns_total"
    assert total(after, cooldowns, gen_ai_provider_name="openai") >= total(before, cooldowns, gen_ai_provider_name="openai") + 1
    # The queue wait of each call that reached a vendor.
    assert total(after, "parley_llm_queue_wait_seconds_count", gen_ai_provider_name="anthropic") >= 1


async def test_a_budget_near_its_limit_is_counted(metrics_endpoint, stub, as_user):  # noqa: F811
    admin = as_user("boss", scopes=("llm", "admin"))
    first = await stub.Generate(api.GenerateRequest(model="local/echo", messages=[user("count my tokens please " * 50)]),
                                metadata=as_user("nearly"))
    used = first.usage.total_tokens
    assert used > 100
    # A limit the first call used 95% of: the next call's check is near the limit, not over it.
    await stub.SetBudget(api.SetBudgetRequest(target_user_id="nearly", limits=[pb.BudgetLimit(
        period=pb.BUDGET_PERIOD_DAY, limit_tokens=math.floor(used / 0.95))]), metadata=admin)
    before = total(scrape(metrics_endpoint), "parley_llm_budget_checks_total", state="near_limit")
    await stub.Generate(api.GenerateRequest(model="local/echo", messages=[user("x")]), metadata=as_user("nearly"))
    after = total(scrape(metrics_endpoint), "parley_llm_budget_checks_total", state="near_limit")
    assert after == before + 1
