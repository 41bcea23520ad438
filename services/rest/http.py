"""Request bodies (size-limited while they stream in, validated against the `openai`
package's own request types before anything is written), pagination in OpenAI's cursor
style over Parley's page tokens, and server-sent event streams with heartbeats."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache

from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.rest.errors import ApiError


def json_response(body, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":"), ensure_ascii=False), status_code=status,
                    media_type="application/json", headers=headers)


def dump(model) -> dict:
    """An `openai.types` model built with model_construct, as JSON-ready data."""
    return model.model_dump(mode="json", warnings=False)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"The request body is larger than the limit of {limit} bytes.", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"The request body is larger than the limit of {limit} bytes.",
                           code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int, params_type=None, *, optional: bool = False,
                    path: dict | None = None) -> dict:
    """The JSON object body. `path`: path parameters the SDK's params type also declares."""
    raw = await read_body(request, limit)
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "We could not parse the JSON body of your request: it is empty.", code="invalid_json")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                            "aren't using your HTTP library correctly.)", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    if params_type is not None:
        validate(params_type, {**body, **(path or {})} if path else body)
    return body


@lru_cache(maxsize=None)
def _adapter(params_type) -> TypeAdapter:
    return TypeAdapter(params_type)


def validate(params_type, body: dict) -> None:
    """Checks `body` against an `openai.types` request TypedDict, nested lists included
    (pydantic validates `Iterable` fields lazily, so they are drained here)."""
    try:
        _drain(_adapter(params_type).validate_python(body), ())
    except _NestedError as nested:
        raise _bad_request(nested.error, nested.path) from None
    except ValidationError as error:
        raise _bad_request(error, ()) from None


class _NestedError(Exception):
    def __init__(self, error: ValidationError, path: tuple) -> None:
        self.error, self.path = error, path


def _is_lazy(value) -> bool:
    return type(value).__name__ == "ValidatorIterator"  # pydantic-core's lazy Iterable validator


def _drain(value, path: tuple) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if _is_lazy(item):
                try:
                    value[key] = item = list(item)
                except ValidationError as error:
                    raise _NestedError(error, (*path, key)) from None
            _drain(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if _is_lazy(item):
                try:
                    value[index] = item = list(item)
                except ValidationError as error:
                    raise _NestedError(error, (*path, index)) from None
            _drain(item, (*path, index))


def param_path(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _bad_request(error: ValidationError, prefix: tuple) -> ApiError:
    first = error.errors(include_url=False)[0]
    # Union members add their type names to the location; keep the field path only.
    loc = [p for p in first["loc"] if isinstance(p, int) or not (p[:1].isupper() or "[" in p or "-" in p)]
    path = param_path((*prefix, *loc))
    missing = first["type"] == "missing"
    message = f"Missing required parameter: '{path}'." if missing else f"Invalid value for '{path}': {first['msg']}."
    return ApiError(400, message, param=path or None, code="missing_required_parameter" if missing else
                    "invalid_value")


def unsupported(param: str, what: str) -> ApiError:
    """A valid OpenAI request that Parley cannot serve: 422, naming the parameter."""
    return ApiError(422, f"{what} is not supported by Parley.", param=param, code="unsupported_parameter")


def now() -> int:
    return int(time.time())


# ---- pagination ------------------------------------------------------------------------------


class Cursors:
    """Remembers, per caller and listing, which Parley page token follows an item id, so that
    `after=<last_id>` (what OpenAI's SDKs send for the next page) resumes in one call. An id
    not remembered (another replica, or evicted) is found by walking the listing from the
    start: slower, never wrong."""

    def __init__(self, size: int = 10_000) -> None:
        self._tokens: OrderedDict[tuple, str] = OrderedDict()
        self._size = size

    def get(self, key: tuple) -> str | None:
        token = self._tokens.get(key)
        if token is not None:
            self._tokens.move_to_end(key)
        return token

    def put(self, key: tuple, token: str) -> None:
        self._tokens[key] = token
        self._tokens.move_to_end(key)
        while len(self._tokens) > self._size:
            self._tokens.popitem(last=False)


CURSORS = Cursors()
MAX_WALK_ITEMS = 10_000


def page_params(request: Request) -> tuple[int, str, str | None, str | None]:
    query = request.query_params
    limit_text = query.get("limit", "20")
    try:
        limit = int(limit_text)
    except ValueError:
        raise ApiError(400, f"Invalid 'limit': expected an integer, got '{limit_text[:50]}'.", param="limit",
                       code="invalid_value") from None
    if not 1 <= limit <= 100:
        raise ApiError(400, "Invalid 'limit': integer below minimum value of 1 or above maximum value of 100.",
                       param="limit", code="invalid_value")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"Invalid 'order': expected 'asc' or 'desc', got '{order[:50]}'.", param="order",
                       code="invalid_value")
    return limit, order, query.get("after") or None, query.get("before") or None


# fetch(page_token, page_size) → (items already in OpenAI shape with an "id", next_page_token)
Fetch = Callable[[str, int], Awaitable[tuple[list[dict], str]]]


async def paginate(request: Request, listing: str, fetch: Fetch, *, native_order: str = "desc",
                   order_override: str | None = None) -> dict:
    """An OpenAI list page over a Parley listing. `native_order` is the order Parley lists in;
    the other order, and `before`, walk the listing (at most MAX_WALK_ITEMS items)."""
    limit, order, after, before = page_params(request)
    order = order_override or order
    caller = hashlib.sha256(request.headers.get("authorization", "").encode()).hexdigest()[:32]
    if order == native_order and before is None:
        token = ""
        if after is not None:
            token = CURSORS.get((caller, listing, after))
            if token is None:
                items, has_more = await _walk_after(fetch, after, limit)
                return _page(items, has_more)
        items, next_token = await fetch(token, limit)
        if items and next_token:
            CURSORS.put((caller, listing, items[-1]["id"]), next_token)
        return _page(items, bool(next_token) and bool(items))
    everything = await _walk_all(fetch)
    if order != native_order:
        everything.reverse()
    if after is not None:
        ids = [item["id"] for item in everything]
        everything = everything[ids.index(after) + 1:] if after in ids else []
    if before is not None:
        ids = [item["id"] for item in everything]
        everything = everything[:ids.index(before)] if before in ids else []
        return _page(everything[-limit:], len(everything) > limit)
    return _page(everything[:limit], len(everything) > limit)


async def _walk_all(fetch: Fetch) -> list[dict]:
    items, token = [], ""
    while True:
        page, token = await fetch(token, 100)
        items.extend(page)
        if not token or len(items) >= MAX_WALK_ITEMS:
            return items


async def _walk_after(fetch: Fetch, after: str, limit: int) -> tuple[list[dict], bool]:
    collected, token, seen, found = [], "", 0, False
    while True:
        page, token = await fetch(token, 100)
        for item in page:
            if found:
                collected.append(item)
            elif item["id"] == after:
                found = True
        seen += len(page)
        if len(collected) > limit or not token or seen >= MAX_WALK_ITEMS:
            return collected[:limit], len(collected) > limit or (bool(token) and found)


def _page(items: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}


# ---- server-sent events ----------------------------------------------------------------------

HEARTBEAT = b": keep-alive\n\n"


def sse(event: str | None, data) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return (f"event: {event}\ndata: {payload}\n\n" if event else f"data: {payload}\n\n").encode()


async def with_heartbeats(events: AsyncIterator[bytes], interval: float) -> AsyncIterator[bytes]:
    """Yields `events`, and a comment line whenever none came for `interval` seconds (proxies
    and clients keep an idle stream open). One reader task for the whole stream and a timer
    re-armed per event: nothing is created per token, and no pending read is ever cancelled."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def read() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait(error)
        finally:
            queue.put_nowait(done)

    def beat() -> None:
        nonlocal timer
        queue.put_nowait(HEARTBEAT)
        timer = loop.call_later(interval, beat)

    reader = asyncio.ensure_future(read())
    timer = loop.call_later(interval, beat)
    try:
        while True:
            item = await queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            if item is not HEARTBEAT:
                timer.cancel()
                timer = loop.call_later(interval, beat)
            yield item
    finally:
        timer.cancel()
        reader.cancel()  # its stream's own cleanup (cancelling the gRPC call) runs as it stops
        try:
            await reader
        except BaseException:  # noqa: BLE001, S110 - cancelled on purpose
            pass


def event_stream(events: AsyncIterator[bytes], interval: float, headers: dict | None = None) -> StreamingResponse:
    return StreamingResponse(with_heartbeats(events, interval), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)
