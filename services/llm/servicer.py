"""LLMService over gRPC: each RPC converts the request, calls the domain as the verified
caller with the call's remaining deadline, and converts back. Streaming handlers `yield`."""

from __future__ import annotations

from parley.llm.v1 import llm_service_pb2 as api
from parley.llm.v1 import llm_service_pb2_grpc as api_grpc
from services.llm import convert
from services.llm.coalesce import coalesced
from services.llm.engine import LLM
from services.llm.listing import ModelListing
from services.llm.reports import Reports
from services.runtime.interceptors import current_identity


def remaining(context) -> float | None:
    """Seconds left before the caller's deadline, or None without one."""
    left = context.time_remaining()
    return None if left is None or left > 1e8 else max(left, 0.0)


class LLMServicer(api_grpc.LLMServiceServicer):
    def __init__(self, llm: LLM, listing: ModelListing, reports: Reports) -> None:
        self._llm = llm
        self._listing = listing
        self._reports = reports

    async def Generate(self, request, context):
        result = await self._llm.generate(current_identity().user_id, convert.chat_request(request), remaining(context))
        return convert.generate_response(result)

    async def StreamGenerate(self, request, context):
        events = self._llm.stream(current_identity().user_id, convert.chat_request(request), remaining(context))
        merged = coalesced(events)
        try:
            async for event in merged:
                yield convert.event_to_proto(event)
        finally:
            await merged.aclose()

    async def Embed(self, request, context):
        result = await self._llm.embed(current_identity().user_id, convert.embed_request(request), remaining(context))
        return convert.embed_response(result)

    async def ListModels(self, request, context):
        current_identity()
        views, token = await self._listing.page(
            provider=request.provider, capabilities=convert.capabilities(request.capabilities),
            include_unconfigured=request.include_unconfigured, size=request.page_size, token=request.page_token,
        )
        return api.ListModelsResponse(models=[convert.model_to_proto(v) for v in views], next_page_token=token)

    async def GetModel(self, request, context):
        current_identity()
        return convert.model_to_proto(self._listing.get(request.model_id))

    async def CountTokens(self, request, context):
        current_identity()
        messages, tools = convert.count_tokens_input(request)
        count, exact, spec = await self._llm.count_tokens(request.model, messages, tools, request.text)
        return api.CountTokensResponse(token_count=count, exact=exact, model=spec.id)

    async def GetUsage(self, request, context):
        page = await self._reports.usage(current_identity(), convert.usage_query(request))
        return convert.usage_response(page)

    async def SetBudget(self, request, context):
        budget = await self._reports.set_budget(current_identity(), request.target_user_id,
                                                convert.limits(request.limits))
        return convert.budget_to_proto(budget)

    async def GetBudget(self, request, context):
        return convert.budget_to_proto(await self._reports.get_budget(current_identity(), request.target_user_id))
