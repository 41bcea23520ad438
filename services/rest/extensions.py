"""Parley's own endpoints, under /v1/parley: what the web console (and any client) needs where
OpenAI has no endpoint. Threads with titles and a title search, messages with their feedback,
feedback, export as Markdown or JSON, a run's event stream resumable from any sequence, usage
reports and budgets. Same ids, errors and credentials as the OpenAI-shaped endpoints; pages
are Parley's signed page tokens (`page_token` in, `next_page_token` out)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi import APIRouter
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.requests import Request
from starlette.responses import StreamingResponse

from parley.assistants.v1 import assistants_service_pb2 as aapi
from parley.llm.v1 import llm_pb2 as lpb
from parley.llm.v1 import llm_service_pb2 as lapi
from parley.sessions.v1 import sessions_pb2 as spb
from parley.sessions.v1 import sessions_service_pb2 as sapi
from services.rest import ids
from services.rest.assistants import resolve_message, run_messages, shown
from services.rest.convert import TOOL_RESOURCES_KEY, metadata, seconds
from services.rest.errors import ApiError
from services.rest.gateway import first_and_rest
from services.rest.http import event_stream, json_response, read_json
from services.rest.runs import RunEvents, get_run_of_thread

router = APIRouter(prefix="/parley", tags=["parley extensions"])

_STATUS_OUT = {spb.SESSION_STATUS_ACTIVE: "active", spb.SESSION_STATUS_ARCHIVED: "archived",
               spb.SESSION_STATUS_CLOSED: "closed"}
_STATUS_IN = {v: k for k, v in _STATUS_OUT.items()}
_RATING_OUT = {spb.RATING_THUMBS_UP: "thumbs_up", spb.RATING_THUMBS_DOWN: "thumbs_down"}
_RATING_IN = {v: k for k, v in _RATING_OUT.items()}
_EXPORT_FORMATS = {"json": sapi.EXPORT_FORMAT_JSON, "markdown": sapi.EXPORT_FORMAT_MARKDOWN}
_GROUP_BY = {"user": lpb.USAGE_GROUP_BY_USER, "model": lpb.USAGE_GROUP_BY_MODEL, "day": lpb.USAGE_GROUP_BY_DAY}
_PERIOD_OUT = {lpb.BUDGET_PERIOD_DAY: "day", lpb.BUDGET_PERIOD_WEEK: "week", lpb.BUDGET_PERIOD_MONTH: "month"}
_PERIOD_IN = {v: k for k, v in _PERIOD_OUT.items()}
# Usage reports are read whole (every page) up to this many rows.
MAX_USAGE_ROWS = 10_000


def _gateway(request: Request):
    return request.app.state.gateway


def _settings(request: Request):
    return request.app.state.settings


def _limit(request: Request, default: int, maximum: int = 100) -> int:
    text = request.query_params.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise ApiError(400, f"Invalid 'limit': expected an integer from 1 to {maximum}.", param="limit",
                       code="invalid_value")
    return int(text)


def _page(items: list[dict], next_token: str) -> dict:
    return {"object": "list", "data": items, "next_page_token": next_token or None}


async def _listing(request: Request, method, message):
    """A Parley listing call: a bad page token is named `page_token` here (the OpenAI-shaped
    listings call it `after`)."""
    gateway = _gateway(request)
    try:
        return await gateway.call(request, method, message)
    except ApiError as error:
        if error.param == "after":
            error.param = "page_token"
        raise


def _string(body: dict, name: str, default: str = "") -> str:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"Invalid type for '{name}': expected a string.", param=name, code="invalid_type")
    return value


# ---- threads with titles ---------------------------------------------------------------------


def thread_out(session: spb.Session) -> dict:
    values = dict(session.metadata)
    values.pop(TOOL_RESOURCES_KEY, None)
    return {"id": ids.public("thread", session.id), "object": "parley.thread", "title": session.title,
            "status": _STATUS_OUT.get(session.status, "active"), "created_at": seconds(session.create_time) or 0,
            "updated_at": seconds(session.update_time) or 0, "message_count": session.message_count,
            "assistant_id": ids.optional("assistant", session.assistant_id), "metadata": values}


@router.get("/threads", summary="Search the caller's threads by title, newest first")
async def list_threads(request: Request):
    query = request.query_params
    status = query.get("status", "")
    if status and status not in _STATUS_IN:
        raise ApiError(400, "Invalid 'status': expected 'active', 'archived' or 'closed'.", param="status",
                       code="invalid_value")
    gateway = _gateway(request)
    page = await _listing(request, gateway.sessions.ListSessions, sapi.ListSessionsRequest(
        page_size=_limit(request, 20), page_token=query.get("page_token", ""), title_contains=query.get("query", ""),
        status=_STATUS_IN.get(status, spb.SESSION_STATUS_UNSPECIFIED)))
    return json_response(_page([thread_out(s) for s in page.sessions], page.next_page_token))


@router.post("/threads", summary="Create a thread with a title")
async def create_thread(request: Request):
    body = await read_json(request, _settings(request).max_body_bytes, optional=True)
    assistant = _string(body, "assistant_id")
    gateway = _gateway(request)
    session = await gateway.call(request, gateway.sessions.CreateSession, sapi.CreateSessionRequest(
        title=_string(body, "title"), metadata=metadata(body.get("metadata")),
        assistant_id=ids.internal_or_400("assistant", assistant, "assistant_id") if assistant else ""))
    return json_response(thread_out(session))


@router.get("/threads/{thread_id}", summary="Retrieve a thread with its title")
async def get_thread(request: Request, thread_id: str):
    gateway = _gateway(request)
    session = await gateway.call(request, gateway.sessions.GetSession,
                                 sapi.GetSessionRequest(session_id=ids.internal("thread", thread_id)))
    return json_response(thread_out(session))


@router.post("/threads/{thread_id}", summary="Rename a thread, or change its status")
async def update_thread(request: Request, thread_id: str):
    session_id = ids.internal("thread", thread_id)
    body = await read_json(request, _settings(request).max_body_bytes)
    session, paths = spb.Session(id=session_id), []
    if "title" in body:
        session.title = _string(body, "title")
        paths.append("title")
    if "status" in body:
        if body["status"] not in _STATUS_IN:
            raise ApiError(400, "Invalid 'status': expected 'active', 'archived' or 'closed'.", param="status",
                           code="invalid_value")
        session.status = _STATUS_IN[body["status"]]
        paths.append("status")
    if not paths:
        raise ApiError(400, "Nothing to change: give 'title' and/or 'status'.", param="title", code="invalid_value")
    gateway = _gateway(request)
    updated = await gateway.call(request, gateway.sessions.UpdateSession, sapi.UpdateSessionRequest(
        session=session, update_mask={"paths": paths}))
    return json_response(thread_out(updated))


# ---- messages, feedback, export --------------------------------------------------------------


def feedback_out(feedback: spb.Feedback) -> dict | None:
    if not feedback.message_id:
        return None
    return {"rating": _RATING_OUT.get(feedback.rating), "comment": feedback.comment,
            "updated_at": seconds(feedback.update_time) or 0}


@router.get("/threads/{thread_id}/messages", summary="A thread's messages, oldest first, with the caller's feedback")
async def list_messages(request: Request, thread_id: str):
    session_id, gateway = ids.internal("thread", thread_id), _gateway(request)
    order = request.query_params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "Invalid 'order': expected 'asc' or 'desc'.", param="order", code="invalid_value")
    page = await _listing(request, gateway.sessions.ListMessages, sapi.ListMessagesRequest(
        session_id=session_id, page_size=_limit(request, 50), page_token=request.query_params.get("page_token", ""),
        order=sapi.SORT_ORDER_ASCENDING if order == "asc" else sapi.SORT_ORDER_DESCENDING))
    visible = [m for m in page.messages if m.role in (spb.ROLE_USER, spb.ROLE_ASSISTANT) and m.content]
    written = await run_messages(request, {m.run_id for m in visible if m.run_id})
    items = [{**shown(m, written), "feedback": feedback_out(m.feedback)} for m in visible]
    return json_response(_page(items, page.next_page_token))


@router.post("/threads/{thread_id}/messages/{message_id}/feedback",
             summary="Rate a message (thumbs up or down) and/or comment on it; replaces earlier feedback")
async def submit_feedback(request: Request, thread_id: str, message_id: str):
    session_id = ids.internal("thread", thread_id)
    body = await read_json(request, _settings(request).max_body_bytes)
    rating = body.get("rating")
    if rating is not None and rating not in _RATING_IN:
        raise ApiError(400, "Invalid 'rating': expected 'thumbs_up', 'thumbs_down' or null.", param="rating",
                       code="invalid_value")
    comment = _string(body, "comment")
    gateway = _gateway(request)
    feedback = await gateway.call(request, gateway.sessions.SubmitFeedback, sapi.SubmitFeedbackRequest(
        session_id=session_id, message_id=await resolve_message(request, session_id, message_id),
        rating=_RATING_IN.get(rating, spb.RATING_UNSPECIFIED), comment=comment))
    return json_response({"object": "parley.feedback", "message_id": message_id, **feedback_out(feedback)})


@router.get("/threads/{thread_id}/export", summary="Download a thread as Markdown or JSON")
async def export_thread(request: Request, thread_id: str):
    session_id = ids.internal("thread", thread_id)
    wanted = request.query_params.get("format", "markdown")
    if wanted not in _EXPORT_FORMATS:
        raise ApiError(400, "Invalid 'format': expected 'markdown' or 'json'.", param="format", code="invalid_value")
    gateway = _gateway(request)
    call = gateway.stream(request, gateway.sessions.ExportSession, sapi.ExportSessionRequest(
        session_id=session_id, format=_EXPORT_FORMATS[wanted]))
    first, rest = await first_and_rest(call)  # NOT_FOUND and the like as an HTTP status
    first = first or sapi.ExportSessionResponse()

    async def body():
        try:
            yield first.data
            async for chunk in rest:
                yield chunk.data
        finally:
            call.cancel()

    filename = (first.filename or f"{thread_id}.{'md' if wanted == 'markdown' else 'json'}").replace('"', "")
    return StreamingResponse(body(), media_type=first.media_type or "application/octet-stream",
                             headers={"content-disposition": f'attachment; filename="{filename}"',
                                      "cache-control": "no-store"})


# ---- a run's events, resumable ---------------------------------------------------------------


def _after_sequence(request: Request) -> int:
    text = request.query_params.get("after_sequence") or request.headers.get("last-event-id") or "0"
    if not text.isdigit():
        raise ApiError(400, "Invalid 'after_sequence' (or Last-Event-ID): expected a run event sequence number.",
                       param="after_sequence", code="invalid_value")
    return int(text)


@router.get("/threads/{thread_id}/runs/{run_id}/events",
            summary="A run's Assistants v2 event stream, from the start or resumed after a sequence number")
async def run_events(request: Request, thread_id: str, run_id: str):
    after = _after_sequence(request)
    run = await get_run_of_thread(request, thread_id, run_id)
    gateway = _gateway(request)
    # From the first event: those up to `after` rebuild the stream's state and are not sent.
    call = gateway.stream(request, gateway.assistants.WatchRun, aapi.WatchRunRequest(run_id=run.id))
    first, rest = await first_and_rest(call)
    return event_stream(RunEvents(created=True, after=after).stream(call, first, rest),
                        _settings(request).heartbeat_seconds)


# ---- models ----------------------------------------------------------------------------------

_CAPABILITIES = {lpb.MODEL_CAPABILITY_STREAMING: "streaming", lpb.MODEL_CAPABILITY_TOOLS: "tools",
                 lpb.MODEL_CAPABILITY_VISION: "vision", lpb.MODEL_CAPABILITY_EMBEDDINGS: "embeddings",
                 lpb.MODEL_CAPABILITY_JSON_OUTPUT: "json_output", lpb.MODEL_CAPABILITY_JSON_SCHEMA: "json_schema"}
_AVAILABILITY = {lpb.MODEL_AVAILABILITY_AVAILABLE: "available", lpb.MODEL_AVAILABILITY_COOLDOWN: "cooldown",
                 lpb.MODEL_AVAILABILITY_UNCONFIGURED: "unconfigured"}


def model_out(model: lpb.Model) -> dict:
    return {"id": model.id, "object": "parley.model", "provider": model.provider,
            "display_name": model.display_name or model.id, "description": model.description,
            "aliases": list(model.aliases), "capabilities": [_CAPABILITIES[c] for c in model.capabilities
                                                             if c in _CAPABILITIES],
            "context_window": model.context_window, "max_output_tokens": model.max_output_tokens,
            "pricing": {"input_usd_per_million": model.pricing.input_usd_per_million,
                        "output_usd_per_million": model.pricing.output_usd_per_million,
                        "cached_input_usd_per_million": model.pricing.cached_input_usd_per_million},
            "availability": _AVAILABILITY.get(model.availability, "available")}


@router.get("/models", summary="Every model with its capabilities, limits, prices and availability")
async def list_models(request: Request):
    models = await _gateway(request).all_models(request)
    return json_response({"object": "list", "data": [model_out(m) for m in models]})


# ---- usage and budgets -----------------------------------------------------------------------


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _usage_row(row: lpb.UsageRow) -> dict:
    out = {"requests": row.request_count, "errors": row.error_count, "cache_hits": row.cache_hit_count,
           "input_tokens": row.usage.input_tokens, "output_tokens": row.usage.output_tokens,
           "cached_input_tokens": row.usage.cached_input_tokens, "total_tokens": row.usage.total_tokens,
           "cost_usd": row.cost_usd}
    if row.model:
        out["model"] = row.model
    if row.user_id:
        out["user"] = row.user_id
    if row.HasField("day_start_time"):
        out["day"] = row.day_start_time.ToDatetime(tzinfo=timezone.utc).date().isoformat()
    return out


@router.get("/usage", summary="Tokens, calls and cost, grouped by model, day and/or user")
async def usage(request: Request):
    query = request.query_params
    days_text = query.get("days", "30")
    if not days_text.isdigit() or not 1 <= int(days_text) <= 366:
        raise ApiError(400, "Invalid 'days': expected an integer from 1 to 366.", param="days", code="invalid_value")
    group_by = [g for value in query.getlist("group_by") for g in value.split(",") if g]
    unknown = [g for g in group_by if g not in _GROUP_BY]
    if unknown:
        raise ApiError(400, f"Invalid 'group_by': '{unknown[0][:50]}' is not one of model, day, user.",
                       param="group_by", code="invalid_value")
    all_users = query.get("all_users", "false").lower() in ("1", "true")
    # The last `days` UTC calendar days, today included.
    end = datetime.now(timezone.utc)
    start = datetime.combine(end.date() - timedelta(days=int(days_text) - 1), datetime.min.time(), timezone.utc)
    gateway, rows, token = _gateway(request), [], ""
    while True:
        page = await gateway.call(request, gateway.llm.GetUsage, lapi.GetUsageRequest(
            start_time=_timestamp(start), end_time=_timestamp(end), group_by=[_GROUP_BY[g] for g in group_by],
            models=query.getlist("model"), all_users=all_users, page_size=1000, page_token=token))
        rows.extend(_usage_row(r) for r in page.rows)
        token = page.next_page_token
        if not token or len(rows) >= MAX_USAGE_ROWS:
            break
    return json_response({"object": "parley.usage", "start_time": int(start.timestamp()),
                          "end_time": int(end.timestamp()), "group_by": group_by, "all_users": all_users,
                          "rows": rows, "total": _usage_row(page.total)})


def budget_out(budget: lpb.Budget) -> dict:
    limits = []
    for limit in budget.limits:
        usd = limit.WhichOneof("amount") == "limit_usd"
        limits.append({"period": _PERIOD_OUT.get(limit.period), "unit": "usd" if usd else "tokens",
                       "amount": limit.limit_usd if usd else limit.limit_tokens,
                       "spent": limit.spent_usd if usd else limit.spent_tokens,
                       "period_start": seconds(limit.period_start_time), "resets_at": seconds(limit.reset_time),
                       "admin_set": limit.admin_set})
    return {"object": "parley.budget", "user": budget.user_id, "limits": limits,
            "updated_at": seconds(budget.update_time)}


@router.get("/budget", summary="The caller's spending limits and what the current periods have spent")
async def get_budget(request: Request):
    gateway = _gateway(request)
    budget = await gateway.call(request, gateway.llm.GetBudget, lapi.GetBudgetRequest(
        target_user_id=request.query_params.get("user", "")))
    return json_response(budget_out(budget))


@router.post("/budget", summary="Replace the caller's spending limits")
async def set_budget(request: Request):
    body = await read_json(request, _settings(request).max_body_bytes)
    limits = body.get("limits")
    if not isinstance(limits, list):
        raise ApiError(400, "Missing required parameter: 'limits' (a list, empty to remove every limit).",
                       param="limits", code="missing_required_parameter")
    request_limits = []
    for index, limit in enumerate(limits):
        where = f"limits[{index}]"
        if not isinstance(limit, dict) or limit.get("period") not in _PERIOD_IN:
            raise ApiError(400, f"Invalid '{where}.period': expected 'day', 'week' or 'month'.",
                           param=f"{where}.period", code="invalid_value")
        amount, unit = limit.get("amount"), limit.get("unit", "usd")
        if unit not in ("usd", "tokens") or isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise ApiError(400, f"Invalid '{where}': expected 'unit' ('usd' or 'tokens') and a numeric 'amount'.",
                           param=f"{where}.amount", code="invalid_value")
        if unit == "tokens" and amount != int(amount):
            raise ApiError(400, f"Invalid '{where}.amount': tokens are a whole number.", param=f"{where}.amount",
                           code="invalid_value")
        request_limits.append(lpb.BudgetLimit(period=_PERIOD_IN[limit["period"]], **(
            {"limit_usd": float(amount)} if unit == "usd" else {"limit_tokens": int(amount)})))
    gateway = _gateway(request)
    budget = await gateway.call(request, gateway.llm.SetBudget, lapi.SetBudgetRequest(
        target_user_id=_string(body, "user"), limits=request_limits))
    return json_response(budget_out(budget))

