"""Admin options of the llm service through the gateway: another user's usage and budget.
A `target_user_id` that is no user id at all is the caller's mistake (INVALID_ARGUMENT
naming it), never UNAUTHENTICATED: the gateway speaks for the caller, not the target."""

from __future__ import annotations

import grpc
import pytest

from parley.llm.v1 import llm_service_pb2 as lapi
from parley.llm.v1 import llm_service_pb2_grpc as lgrpc
from tests.conftest import expect_error
from tests.gateway.conftest import bearer

BAD_TARGETS = ["*", "a b", "x" * 200, "-leading-dash", "%"]


def _calls(stub, target: str, metadata):
    return [
        stub.GetBudget(lapi.GetBudgetRequest(target_user_id=target), metadata=metadata),
        stub.SetBudget(lapi.SetBudgetRequest(target_user_id=target), metadata=metadata),
        stub.GetUsage(lapi.GetUsageRequest(target_user_id=target), metadata=metadata),
    ]


@pytest.mark.parametrize("target", BAD_TARGETS, ids=lambda t: t[:12])
@pytest.mark.parametrize("scopes", [["admin"], ["llm"]], ids=["admin", "not admin"])
async def test_a_malformed_target_user_is_invalid_argument(gw_channel, make_key, target, scopes):
    secret = await make_key("llm-admin-caller", scopes)
    stub = lgrpc.LLMServiceStub(gw_channel)
    for call in _calls(stub, target, bearer(secret)):
        _, fields = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert fields == ["target_user_id"]


async def test_an_admin_reads_another_users_budget_and_usage(gw_channel, make_key):
    admin = await make_key("llm-admin-caller", ["admin"])
    user = await make_key("llm-admin-target", ["llm"])
    stub = lgrpc.LLMServiceStub(gw_channel)
    for call in _calls(stub, "llm-admin-target", bearer(admin)):
        await call
    # Not so for a caller without the admin scope.
    await expect_error(stub.GetBudget(lapi.GetBudgetRequest(target_user_id="llm-admin-caller"), metadata=bearer(user)),
                       grpc.StatusCode.PERMISSION_DENIED)
