"""LLMService over gRPC: each RPC converts the request, calls the domain as the verified
caller with the call's remaining deadline, and converts back. Streaming handlers `yield`."""

from __future__ import annotations

from parley.llm.v1 import llm_service_pb2 as api
from parley.llm.v1 import llm_service_pb2_grpc as api_grpc
from services.llm import convert, reports
from services.llm.coalesce import coalesced
from services.llm.engine import LLM
from services.runtime import errors
from services.runtime.interceptors import current_identity
from services.runtime.pagination import decode_token, encode_token, page_size


def remaining(context) -> float | None:
    """Seconds left before the caller's deadline, or None without one."""
    left = context.time_remaining()
    return None if left is None or left > 1e8 else max(left, 0.0)


class LLMServicer(api_grpc.LLMServiceServicer):
    def __init__(self, llm: LLM, usage=None, budgets=None) -> None:
        self._llm = llm
        self._usage = usage
        self._budgets = budgets

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
        return api.EmbedResponse(
            embeddings=[api.Embedding(values=v, cache_hit=hit) for v, hit in zip(result.vectors, result.cache_hits)],
            model=result.model, usage=convert.usage_to_proto(result.usage), cost_usd=result.cost_usd,
        )

    def _model(self, spec):
        return convert.model_to_proto(
            spec, configured=self._llm.catalog.is_configured(spec), cooldown_until=self._llm.cooldowns.until(spec.id)
        )

    async def ListModels(self, request, context):
        current_identity()
        size = page_size(request.page_size, default=100, maximum=1000)
        caps = convert.capabilities(request.capabilities)
        query = f"{request.provider}|{sorted(caps)}|{request.include_unconfigured}"
        after = decode_token(request.page_token, query)
        specs = self._llm.list_models(provider=request.provider, capabilities=caps,
                                      include_unconfigured=request.include_unconfigured)
        if after:
            specs = [s for s in specs if s.id > after[0]]
        page, more = specs[:size], len(specs) > size
        return api.ListModelsResponse(
            models=[self._model(s) for s in page], next_page_token=encode_token(query, [page[-1].id]) if more else ""
        )

    async def GetModel(self, request, context):
        current_identity()
        if not request.model_id:
            raise errors.InvalidArgument.for_field("model_id", "is required", "FIELD_REQUIRED")
        return self._model(self._llm.resolve(request.model_id, field="model_id"))

    async def CountTokens(self, request, context):
        current_identity()
        messages, tools = convert.messages_only(request.messages, request.tools)
        count, exact, spec = self._llm.count_tokens(request.model, messages, tools, request.text)
        return api.CountTokensResponse(token_count=count, exact=exact, model=spec.id)

    def _ledger(self):
        if self._usage is None or self._budgets is None:
            raise errors.FailedPrecondition("this deployment records no usage (no database)", reason="NO_LEDGER")

    def _target(self, target_user_id: str) -> str:
        identity = current_identity()
        if target_user_id and target_user_id != identity.user_id:
            if not identity.has_scope("admin"):
                raise errors.PermissionDenied("only the admin scope may act on another user", reason="ADMIN_REQUIRED")
            return target_user_id
        return identity.user_id

    async def GetUsage(self, request, context):
        self._ledger()
        identity = current_identity()
        if request.all_users and request.target_user_id:
            raise errors.InvalidArgument.for_field("all_users", "excludes target_user_id", "CONFLICTING_FIELDS")
        if request.all_users and not identity.has_scope("admin"):
            raise errors.PermissionDenied("only the admin scope may report on all users", reason="ADMIN_REQUIRED")
        user_id = self._target(request.target_user_id)
        models = [self._llm.resolve(m, field="models").id for m in request.models]
        return await reports.get_usage(self._usage, user_id, request, models)

    async def SetBudget(self, request, context):
        self._ledger()
        user_id = self._target(request.target_user_id)
        limits = reports.limits_from_proto(request.limits)
        await self._budgets.set_limits(user_id, limits, admin=current_identity().has_scope("admin"))
        return await reports.budget(self._budgets, self._usage, user_id)

    async def GetBudget(self, request, context):
        self._ledger()
        user_id = self._target(request.target_user_id)
        return await reports.budget(self._budgets, self._usage, user_id)
