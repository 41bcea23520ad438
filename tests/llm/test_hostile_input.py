"""Requests an attacker (or a fuzzer) sends: unknown enum numbers, NaN and Infinity inside
Struct fields, timestamps and page positions out of range, huge model names. Every one is
INVALID_ARGUMENT (or NOT_FOUND) naming the field, never INTERNAL, and nothing is recorded."""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from parley.llm.v1 import llm_pb2 as pb
from parley.llm.v1 import llm_service_pb2 as api
from services.runtime.status import error_details, from_rpc_error
from tests.llm.helpers import collect, user, weather_tool

UNKNOWN = 99


def _with(builder):
    request = api.GenerateRequest(model="local/echo", messages=[user("hi")])
    builder(request)
    return request


def _bad_role(r):
    r.messages[0].role = UNKNOWN


def _bad_image_detail(r):
    r.messages[0].content.add(image_url=pb.ImageUrl(url="https://example.com/a.png", detail=UNKNOWN))
    r.model = "openai/gpt-4o-mini"


def _bad_tool_choice(r):
    r.tools.append(weather_tool())
    r.tool_choice.mode = UNKNOWN


def _bad_response_format(r):
    r.response_format.type = UNKNOWN


def _bad_cache_policy(r):
    r.cache_policy = UNKNOWN


def _bad_priority(r):
    r.priority = UNKNOWN


CHAT_ENUMS = {
    "messages[0].role": _bad_role,
    "image_url.detail": _bad_image_detail,
    "tool_choice.mode": _bad_tool_choice,
    "response_format.type": _bad_response_format,
    "cache_policy": _bad_cache_policy,
    "priority": _bad_priority,
}


async def _refused(call, *codes: grpc.StatusCode) -> grpc.aio.AioRpcError:
    codes = codes or (grpc.StatusCode.INVALID_ARGUMENT,)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        result = call()
        if hasattr(result, "__aiter__"):
            await collect(result)
        else:
            await result
    assert caught.value.code() in codes, (caught.value.code(), caught.value.details()[:300])
    return caught.value


@pytest.mark.parametrize("field", sorted(CHAT_ENUMS))
async def test_unknown_enum_numbers_in_chat_requests(stub, as_user, field):
    request = _with(CHAT_ENUMS[field])
    for call in (
        lambda: stub.Generate(request, metadata=as_user("ivan")),
        lambda: stub.StreamGenerate(api.StreamGenerateRequest.FromString(request.SerializeToString()),
                                    metadata=as_user("ivan")),
    ):
        error = await _refused(call)
        assert error_details(from_rpc_error(error))["BadRequest"].field_violations


@pytest.mark.parametrize("field", ["cache_policy", "priority"])
async def test_unknown_enum_numbers_in_embed(stub, as_user, field):
    request = api.EmbedRequest(model="openai/text-embedding-3-small", inputs=["a"])
    setattr(request, field, UNKNOWN)
    await _refused(lambda: stub.Embed(request, metadata=as_user("ivan")))


async def test_unknown_enum_numbers_elsewhere(stub, as_user):
    me = as_user("ivan")
    for value in (UNKNOWN, 0):  # 0 is each enum's _UNSPECIFIED: known, but it names nothing
        await _refused(lambda: stub.ListModels(api.ListModelsRequest(capabilities=[1, value]), metadata=me))
        await _refused(lambda: stub.GetUsage(api.GetUsageRequest(group_by=[value, 1]), metadata=me))
        await _refused(lambda: stub.SetBudget(
            api.SetBudgetRequest(limits=[pb.BudgetLimit(period=value, limit_usd=1)]), metadata=me))
    await _refused(lambda: stub.SetBudget(
        api.SetBudgetRequest(limits=[pb.BudgetLimit(period=UNKNOWN, limit_usd=1)]), metadata=me))
    bad_role = pb.ChatMessage(role=UNKNOWN, content=[pb.ContentPart(text="x")])
    await _refused(lambda: stub.CountTokens(api.CountTokensRequest(model="local/echo", messages=[bad_role]),
                                            metadata=me))


def _names(error: grpc.aio.AioRpcError, field: str) -> bool:
    """Whether a BadRequest violation names `field` (or a path inside it)."""
    fields = {v.field for v in error_details(from_rpc_error(error))["BadRequest"].field_violations}
    return any(f == field or f.startswith(field + ".") for f in fields)


def _struct_with(value: float) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({"type": "object", "properties": {"x": {"type": "number", "maximum": value}}})
    return struct


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
async def test_nan_and_infinity_inside_structs(stub, as_user, value):
    me = as_user("ivan")
    tool = pb.Tool(function=pb.FunctionDefinition(name="f", parameters=_struct_with(value)))
    with_tool = api.GenerateRequest(model="local/echo", messages=[user("hi")], tools=[tool])
    error = await _refused(lambda: stub.Generate(with_tool, metadata=me))
    assert _names(error, "tools[0].function.parameters")
    await _refused(lambda: stub.StreamGenerate(
        api.StreamGenerateRequest.FromString(with_tool.SerializeToString()), metadata=me))
    schema = pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
                               json_schema=pb.JsonSchema(name="out", schema=_struct_with(value)))
    with_schema = api.GenerateRequest(model="openai/gpt-4o-mini", messages=[user("hi")], response_format=schema)
    error = await _refused(lambda: stub.Generate(with_schema, metadata=me))
    assert _names(error, "response_format.json_schema.schema")
    await _refused(lambda: stub.CountTokens(api.CountTokensRequest(model="local/echo", messages=[user("x")],
                                                                   tools=[tool]), metadata=me))


def _stamp(year: int, month: int = 1, day: int = 1) -> timestamp_pb2.Timestamp:
    from datetime import datetime, timezone

    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime(year, month, day, tzinfo=timezone.utc))
    return stamp


async def test_usage_ranges_at_the_ends_of_time(stub, as_user):
    me = as_user("ivan")
    year_one, year_9999 = _stamp(1), _stamp(9999, 12, 31)
    for fields in (
        {"start_time": year_one},
        {"end_time": year_one},
        {"start_time": year_9999},
        {"end_time": year_9999},
        {"start_time": _stamp(9999, 6, 1), "end_time": year_9999},
        {"start_time": year_one, "end_time": _stamp(1, 6, 1)},
    ):
        await _refused(lambda: stub.GetUsage(api.GetUsageRequest(**fields), metadata=me))
    # Seconds beyond what a Timestamp may hold.
    await _refused(lambda: stub.GetUsage(
        api.GetUsageRequest(end_time=timestamp_pb2.Timestamp(seconds=2**62)), metadata=me))


def _forged(payload) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


FORGED_TOKENS = [
    "[" * 5000 + "]" * 5000,
    _forged("[" * 5000 + "]" * 5000),
    _forged([1, "0" * 16, [2**63]]),
    _forged([1, "0" * 16, [2**63, "2026-01-01T00:00:00+00:00"]]),
    _forged([1, "0" * 16, [{"a": 1}, None]]),
    "x" * 20_000,
]


@pytest.mark.parametrize("token", FORGED_TOKENS, ids=range(len(FORGED_TOKENS)))
async def test_forged_page_tokens(stub, as_user, token):
    me = as_user("ivan")
    await _refused(lambda: stub.ListModels(api.ListModelsRequest(page_token=token), metadata=me))
    await _refused(lambda: stub.GetUsage(api.GetUsageRequest(page_token=token), metadata=me))


async def test_page_positions_of_the_right_listing_but_out_of_range(stub, as_user):
    """Tokens carrying this very listing's fingerprint (as one who read the code could make
    them) with positions of the wrong type or out of range."""
    from services.runtime import pagination

    me = as_user("ivan")
    listing = await stub.ListModels(api.ListModelsRequest(page_size=1), metadata=me)
    assert listing.next_page_token  # a real token works
    assert (await stub.ListModels(api.ListModelsRequest(page_size=1, page_token=listing.next_page_token),
                                  metadata=me)).models
    for position in ([2**63], [None], [["nested"]], []):
        token = pagination.encode_token("|[]|False", position)
        await _refused(lambda: stub.ListModels(api.ListModelsRequest(page_size=1, page_token=token), metadata=me))


LONG_NAME = "openai/" + "x" * 20_000


async def test_a_20000_character_model_name_is_refused_with_a_short_error(stub, as_user):
    me = as_user("ivan")
    codes = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    calls = [
        lambda: stub.Generate(api.GenerateRequest(model=LONG_NAME, messages=[user("hi")]), metadata=me),
        lambda: stub.StreamGenerate(api.StreamGenerateRequest(model=LONG_NAME, messages=[user("hi")]), metadata=me),
        lambda: stub.Generate(api.GenerateRequest(model="local/echo", messages=[user("hi")],
                                                  fallback_models=[LONG_NAME]), metadata=me),
        lambda: stub.Embed(api.EmbedRequest(model=LONG_NAME, inputs=["a"]), metadata=me),
        lambda: stub.GetModel(api.GetModelRequest(model_id=LONG_NAME), metadata=me),
        lambda: stub.CountTokens(api.CountTokensRequest(model=LONG_NAME, text="a"), metadata=me),
        lambda: stub.GetUsage(api.GetUsageRequest(models=[LONG_NAME]), metadata=me),
        lambda: stub.Generate(api.GenerateRequest(model="bogus/" + "y" * 20_000, messages=[user("hi")]), metadata=me),
    ]
    for call in calls:
        error = await _refused(call, *codes)
        assert len(error.details()) < 1024
        status = from_rpc_error(error)
        assert status is not None and len(status.SerializeToString()) < 4096


async def test_malformed_target_users_and_budget_amounts(stub, as_user):
    me, admin = as_user("ivan"), as_user("ivan-admin", ("llm", "admin"))
    for metadata in (me, admin):
        for call in (
            lambda: stub.GetBudget(api.GetBudgetRequest(target_user_id="*"), metadata=metadata),
            lambda: stub.SetBudget(api.SetBudgetRequest(target_user_id="*"), metadata=metadata),
            lambda: stub.GetUsage(api.GetUsageRequest(target_user_id="*"), metadata=metadata),
            lambda: stub.GetUsage(api.GetUsageRequest(target_user_id="x" * 20_000), metadata=metadata),
        ):
            error = await _refused(call)
            assert _names(error, "target_user_id")
    for amount in (float("nan"), float("inf"), 0.0, -1.0):
        await _refused(lambda: stub.SetBudget(
            api.SetBudgetRequest(limits=[pb.BudgetLimit(period=pb.BUDGET_PERIOD_DAY, limit_usd=amount)]), metadata=me))
    assert not (await stub.GetBudget(api.GetBudgetRequest(), metadata=me)).limits  # nothing was stored


async def test_usage_page_positions_at_and_past_the_int64_edge(stub, as_user):
    """Signed tokens of this very listing (as a replica with the secret would issue them)."""
    from services.runtime import pagination

    me = as_user("ivan-pages")
    listing = "ivan-pages|False|||['model']|[]"
    edge = pagination.encode_token(listing, [2**63 - 1, "2026-01-01T00:00:00+00:00"])
    reply = await stub.GetUsage(api.GetUsageRequest(group_by=[pb.USAGE_GROUP_BY_MODEL], page_token=edge),
                                metadata=me)
    assert not reply.rows and not reply.next_page_token
    for position in ([2**63, "2026-01-01T00:00:00+00:00"], [-1, "2026-01-01T00:00:00+00:00"],
                     [0, "0001-01-01T00:00:00+00:00"], [0, "9999-12-31T00:00:00+00:00"], [0, "yesterday"], [0]):
        token = pagination.encode_token(listing, position)
        await _refused(lambda: stub.GetUsage(
            api.GetUsageRequest(group_by=[pb.USAGE_GROUP_BY_MODEL], page_token=token), metadata=me))
