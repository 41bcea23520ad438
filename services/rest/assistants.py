"""/v1/assistants, /v1/threads (listing them too, an extension) and /v1/threads/{id}/messages
over AssistantService and SessionService."""

from __future__ import annotations

import json

from fastapi import APIRouter
from openai.types.beta import assistant_create_params, thread_create_params
from openai.types.beta.threads import message_create_params
from starlette.requests import Request

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as aapi
from parley.files.v1 import files_service_pb2 as fapi
from parley.sessions.v1 import sessions_pb2 as spb
from parley.sessions.v1 import sessions_service_pb2 as sapi
from services.rest import ids
from services.rest.convert import (
    TOOL_RESOURCES_KEY,
    assistant_out,
    message_in,
    message_out,
    metadata,
    provisional_message_id,
    response_format_in,
    thread_out,
    tool_resources_in,
    tools_in,
)
from services.rest.errors import ApiError
from services.rest.http import json_response, paginate, read_json

router = APIRouter(tags=["assistants"])


def _gateway(request: Request):
    return request.app.state.gateway


def _limit(request: Request) -> int:
    return request.app.state.settings.max_body_bytes


# ---- assistants ------------------------------------------------------------------------------


async def _inline_stores(request: Request, resources: dict | None, param: str) -> dict | None:
    """tool_resources.file_search.vector_stores (stores to create on the fly) as vector_store_ids."""
    search = (resources or {}).get("file_search") or {}
    if not search.get("vector_stores"):
        return resources
    gateway, created = _gateway(request), []
    for index, store in enumerate(search["vector_stores"]):
        file_ids = [ids.internal_or_400("file", f, f"{param}.file_search.vector_stores[{index}].file_ids[{i}]")
                    for i, f in enumerate(store.get("file_ids") or [])]
        made = await gateway.call(request, gateway.files.CreateVectorStore, fapi.CreateVectorStoreRequest(
            file_ids=file_ids, metadata=metadata(store.get("metadata"))))
        created.append(ids.public("vector_store", made.id))
    return {**resources, "file_search": {"vector_store_ids": [*(search.get("vector_store_ids") or []), *created]}}


def _assistant_fields(body: dict) -> dict:
    fields = {}
    for name in ("name", "description", "model", "instructions"):
        if name in body:
            fields[name] = body[name] or ""
    if "tools" in body:
        fields["tools"] = tools_in(body["tools"])
    if "metadata" in body:
        fields["metadata"] = metadata(body["metadata"])
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            fields[name] = float(body[name])
    if body.get("response_format") is not None:
        fields["response_format"] = response_format_in(body["response_format"])
    return fields


@router.post("/assistants", summary="Create an assistant")
async def create_assistant(request: Request):
    body = await read_json(request, _limit(request), assistant_create_params.AssistantCreateParams)
    fields = _assistant_fields(body)
    resources = tool_resources_in(body.get("tool_resources"))  # checked before any store is created
    if body.get("tool_resources"):
        resources = tool_resources_in(await _inline_stores(request, body["tool_resources"], "tool_resources"))
    gateway = _gateway(request)
    assistant = await gateway.call(request, gateway.assistants.CreateAssistant,
                                   aapi.CreateAssistantRequest(tool_resources=resources, **fields))
    return json_response(assistant_out(assistant))


@router.get("/assistants", summary="List assistants")
async def list_assistants(request: Request):
    gateway = _gateway(request)

    async def fetch(token, size):
        page = await gateway.call(request, gateway.assistants.ListAssistants,
                                  aapi.ListAssistantsRequest(page_size=size, page_token=token))
        return [assistant_out(a) for a in page.assistants], page.next_page_token

    return json_response(await paginate(request, "assistants", fetch))


@router.get("/assistants/{assistant_id}", summary="Retrieve an assistant")
async def get_assistant(request: Request, assistant_id: str):
    gateway = _gateway(request)
    assistant = await gateway.call(request, gateway.assistants.GetAssistant,
                                   aapi.GetAssistantRequest(assistant_id=ids.internal("assistant", assistant_id)))
    return json_response(assistant_out(assistant))


@router.post("/assistants/{assistant_id}", summary="Modify an assistant")
async def update_assistant(request: Request, assistant_id: str):
    parley_id = ids.internal("assistant", assistant_id)
    body = await read_json(request, _limit(request), optional=True)
    fields = _assistant_fields(body)
    assistant = apb.Assistant(id=parley_id, **fields)
    paths = list(fields)
    if "tool_resources" in body:
        assistant.tool_resources.CopyFrom(tool_resources_in(body["tool_resources"]))
        paths.append("tool_resources")
    for name in ("temperature", "top_p", "response_format"):
        if name in body and name not in fields:
            paths.append(name)  # null: back to the model's default
    gateway = _gateway(request)
    if not paths:
        return await get_assistant(request, assistant_id)
    updated = await gateway.call(request, gateway.assistants.UpdateAssistant,
                                 aapi.UpdateAssistantRequest(assistant=assistant, update_mask={"paths": paths}))
    return json_response(assistant_out(updated))


@router.delete("/assistants/{assistant_id}", summary="Delete an assistant")
async def delete_assistant(request: Request, assistant_id: str):
    gateway = _gateway(request)
    await gateway.call(request, gateway.assistants.DeleteAssistant,
                       aapi.DeleteAssistantRequest(assistant_id=ids.internal("assistant", assistant_id)))
    return json_response({"id": assistant_id, "object": "assistant.deleted", "deleted": True})


# ---- threads ---------------------------------------------------------------------------------


def thread_metadata(body: dict, param: str = "") -> dict[str, str]:
    """The session's metadata: the thread's, plus its tool_resources (hidden in the output)."""
    values = metadata(body.get("metadata"), f"{param}metadata")
    resources = body.get("tool_resources")
    if resources:
        tool_resources_in(resources, f"{param}tool_resources")  # ids checked
        values[TOOL_RESOURCES_KEY] = json.dumps(resources, separators=(",", ":"))
    return values


def new_thread_messages(body: dict, param: str = "messages") -> list[spb.Message]:
    return [message_in(m, f"{param}[{i}]") for i, m in enumerate(body.get("messages") or [])]


@router.post("/threads", summary="Create a thread, optionally with messages")
async def create_thread(request: Request):
    body = await read_json(request, _limit(request), thread_create_params.ThreadCreateParams, optional=True)
    messages = new_thread_messages(body)  # every message checked before anything is written
    gateway = _gateway(request)
    session = await gateway.call(request, gateway.sessions.CreateSession,
                                 sapi.CreateSessionRequest(metadata=thread_metadata(body)))
    try:
        for message in messages:
            await gateway.call(request, gateway.sessions.CreateMessage, _create_message(session.id, message))
    except BaseException:
        # One request, one thread: a message the backend refused (or a client that left) leaves
        # no half-made thread. Not through gateway.call: that would be cancelled by the hang-up.
        await gateway.sessions.DeleteSession(sapi.DeleteSessionRequest(session_id=session.id),
                                             metadata=gateway.metadata(request), timeout=gateway.timeout)
        raise
    return json_response(thread_out(session))


def _create_message(session_id: str, message: spb.Message) -> sapi.CreateMessageRequest:
    return sapi.CreateMessageRequest(session_id=session_id, role=message.role, content=message.content,
                                     attachments=message.attachments, metadata=message.metadata)


@router.get("/threads", summary="List threads (a Parley extension)")
async def list_threads(request: Request):
    gateway = _gateway(request)

    async def fetch(token, size):
        page = await gateway.call(request, gateway.sessions.ListSessions,
                                  sapi.ListSessionsRequest(page_size=size, page_token=token))
        return [thread_out(s) for s in page.sessions], page.next_page_token

    return json_response(await paginate(request, "threads", fetch))


@router.get("/threads/{thread_id}", summary="Retrieve a thread")
async def get_thread(request: Request, thread_id: str):
    gateway = _gateway(request)
    session = await gateway.call(request, gateway.sessions.GetSession,
                                 sapi.GetSessionRequest(session_id=ids.internal("thread", thread_id)))
    return json_response(thread_out(session))


@router.post("/threads/{thread_id}", summary="Modify a thread")
async def update_thread(request: Request, thread_id: str):
    session_id = ids.internal("thread", thread_id)
    body = await read_json(request, _limit(request), optional=True)
    gateway = _gateway(request)
    if "metadata" not in body and "tool_resources" not in body:
        return await get_thread(request, thread_id)
    current = await gateway.call(request, gateway.sessions.GetSession, sapi.GetSessionRequest(session_id=session_id))
    values = dict(current.metadata)
    if "metadata" in body:
        kept = values.get(TOOL_RESOURCES_KEY)
        values = metadata(body["metadata"])
        if kept:
            values[TOOL_RESOURCES_KEY] = kept
    if "tool_resources" in body:
        values.pop(TOOL_RESOURCES_KEY, None)
        values.update({k: v for k, v in thread_metadata({"tool_resources": body["tool_resources"]}).items()})
    updated = await gateway.call(request, gateway.sessions.UpdateSession, sapi.UpdateSessionRequest(
        session=spb.Session(id=session_id, metadata=values), update_mask={"paths": ["metadata"]}))
    return json_response(thread_out(updated))


@router.delete("/threads/{thread_id}", summary="Delete a thread")
async def delete_thread(request: Request, thread_id: str):
    gateway = _gateway(request)
    await gateway.call(request, gateway.sessions.DeleteSession,
                       sapi.DeleteSessionRequest(session_id=ids.internal("thread", thread_id)))
    return json_response({"id": thread_id, "object": "thread.deleted", "deleted": True})


# ---- messages --------------------------------------------------------------------------------


async def run_messages(request: Request, run_ids) -> dict[str, tuple[str, list]]:
    """Messages written by runs: message id → (the id of its message_creation step, its
    citations, which are kept on that step)."""
    gateway, found = _gateway(request), {}
    for run_id in run_ids:
        token = ""
        while True:
            page = await gateway.call(request, gateway.assistants.ListRunSteps,
                                      aapi.ListRunStepsRequest(run_id=run_id, page_size=100, page_token=token))
            for step in page.run_steps:
                if step.WhichOneof("step_details") == "message_creation" and step.message_creation.message_id:
                    found[step.message_creation.message_id] = (step.id, list(step.message_creation.annotations))
            token = page.next_page_token
            if not token:
                break
    return found


def shown(message: spb.Message, written: dict) -> dict:
    step_id, annotations = written.get(message.id, (None, ()))
    return message_out(message, annotations, message_id=provisional_message_id(step_id) if step_id else None)


async def resolve_message(request: Request, session_id: str, message_id: str) -> str:
    """The Parley id of a public message id: a message's own, or (for a message a run wrote)
    that of its message_creation step."""
    parley_id = ids.internal("message", message_id)
    gateway = _gateway(request)
    try:
        await gateway.call(request, gateway.sessions.GetMessage,
                           sapi.GetMessageRequest(session_id=session_id, message_id=parley_id))
        return parley_id
    except ApiError as error:
        if error.status != 404:
            raise
    token = ""
    while True:
        page = await gateway.call(request, gateway.assistants.ListRuns,
                                  aapi.ListRunsRequest(session_id=session_id, page_size=100, page_token=token))
        written = await run_messages(request, [run.id for run in page.runs])
        for stored_id, (step_id, _) in written.items():
            if step_id == parley_id:
                return stored_id
        token = page.next_page_token
        if not token:
            raise ApiError(404, f"No message found with id '{message_id[:100]}'.", code="message_not_found")


@router.post("/threads/{thread_id}/messages", summary="Create a message")
async def create_message(request: Request, thread_id: str):
    session_id = ids.internal("thread", thread_id)
    body = await read_json(request, _limit(request), message_create_params.MessageCreateParams)
    message = message_in(body, "body")
    gateway = _gateway(request)
    created = await gateway.call(request, gateway.sessions.CreateMessage, _create_message(session_id, message))
    return json_response(message_out(created))


@router.get("/threads/{thread_id}/messages", summary="List messages")
async def list_messages(request: Request, thread_id: str):
    session_id = ids.internal("thread", thread_id)
    run_filter = request.query_params.get("run_id")
    run_id = ids.internal("run", run_filter) if run_filter else ""
    gateway = _gateway(request)
    order = request.query_params.get("order", "desc")
    sort = sapi.SORT_ORDER_ASCENDING if order == "asc" else sapi.SORT_ORDER_DESCENDING

    async def fetch(token, size):
        page = await gateway.call(request, gateway.sessions.ListMessages, sapi.ListMessagesRequest(
            session_id=session_id, page_size=size, page_token=token, order=sort, run_id=run_id))
        visible = [m for m in page.messages if m.role in (spb.ROLE_USER, spb.ROLE_ASSISTANT) and m.content]
        written = await run_messages(request, {m.run_id for m in visible if m.run_id})
        return [shown(m, written) for m in visible], page.next_page_token

    return json_response(await paginate(request, f"messages:{session_id}:{order}:{run_id}", fetch,
                                        native_order=order))


@router.get("/threads/{thread_id}/messages/{message_id}", summary="Retrieve a message")
async def get_message(request: Request, thread_id: str, message_id: str):
    gateway, session_id = _gateway(request), ids.internal("thread", thread_id)
    message = await gateway.call(request, gateway.sessions.GetMessage, sapi.GetMessageRequest(
        session_id=session_id, message_id=await resolve_message(request, session_id, message_id)))
    written = await run_messages(request, [message.run_id] if message.run_id else [])
    return json_response(shown(message, written))


@router.post("/threads/{thread_id}/messages/{message_id}", summary="Modify a message (not supported)")
async def update_message(request: Request, thread_id: str, message_id: str):
    await get_message(request, thread_id, message_id)  # 404 first, as OpenAI
    raise ApiError(422, "Modifying a message is not supported by Parley: messages are immutable.",
                   param="metadata", code="unsupported_parameter")


@router.delete("/threads/{thread_id}/messages/{message_id}", summary="Delete a message")
async def delete_message(request: Request, thread_id: str, message_id: str):
    gateway, session_id = _gateway(request), ids.internal("thread", thread_id)
    await gateway.call(request, gateway.sessions.DeleteMessage, sapi.DeleteMessageRequest(
        session_id=session_id, message_id=await resolve_message(request, session_id, message_id)))
    return json_response({"id": message_id, "object": "thread.message.deleted", "deleted": True})
