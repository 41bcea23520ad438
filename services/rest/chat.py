"""/v1/models, /v1/chat/completions (streamed and not) and /v1/embeddings over LLMService."""

from __future__ import annotations

import base64
import struct as binary

import grpc
from fastapi import APIRouter
from openai.types import CreateEmbeddingResponse, Embedding
from openai.types import Model as OpenAIModel
from openai.types import embedding_create_params
from openai.types.chat import ChatCompletion, completion_create_params
from starlette.requests import Request

from parley.llm.v1 import llm_pb2 as lpb
from parley.llm.v1 import llm_service_pb2 as lapi
from services.rest.convert import struct
from services.rest.errors import ApiError, from_grpc
from services.rest.gateway import first_and_rest
from services.rest.http import dump, event_stream, json_response, now, read_json, sse, unsupported

router = APIRouter(tags=["chat"])


def _gateway(request: Request):
    return request.app.state.gateway


def _settings(request: Request):
    return request.app.state.settings


# ---- models ----------------------------------------------------------------------------------


def _model_out(model: lpb.Model) -> dict:
    return dump(OpenAIModel.model_construct(id=model.id, object="model", created=0, owned_by=model.provider))


@router.get("/models", summary="List models")
async def list_models(request: Request):
    models = await _gateway(request).all_models(request)
    return json_response({"object": "list", "data": [_model_out(m) for m in models]})


@router.get("/models/{model_id:path}", summary="Retrieve a model")
async def get_model(request: Request, model_id: str):
    gateway = _gateway(request)
    return json_response(_model_out(await gateway.call(request, gateway.llm.GetModel,
                                                       lapi.GetModelRequest(model_id=model_id))))


# ---- chat completions ------------------------------------------------------------------------

_ROLES = {"system": lpb.ROLE_SYSTEM, "developer": lpb.ROLE_SYSTEM, "user": lpb.ROLE_USER,
          "assistant": lpb.ROLE_ASSISTANT, "tool": lpb.ROLE_TOOL}
_DETAIL = {"auto": lpb.IMAGE_DETAIL_AUTO, "low": lpb.IMAGE_DETAIL_LOW, "high": lpb.IMAGE_DETAIL_HIGH}
_FINISH = {lpb.FINISH_REASON_STOP: "stop", lpb.FINISH_REASON_LENGTH: "length",
           lpb.FINISH_REASON_TOOL_CALLS: "tool_calls", lpb.FINISH_REASON_CONTENT_FILTER: "content_filter",
           lpb.FINISH_REASON_ERROR: "stop"}
_FORMATS = {"text": lpb.RESPONSE_FORMAT_TYPE_TEXT, "json_object": lpb.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
            "json_schema": lpb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA}


def _content(content, param: str) -> list[lpb.ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [lpb.ContentPart(text=content)]
    parts = []
    for index, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            parts.append(lpb.ContentPart(text=part.get("text", "")))
        elif kind == "image_url":
            image = part.get("image_url") or {}
            parts.append(lpb.ContentPart(image_url=lpb.ImageUrl(
                url=image.get("url", ""), detail=_DETAIL.get(image.get("detail") or "auto", lpb.IMAGE_DETAIL_AUTO))))
        elif kind == "refusal":
            parts.append(lpb.ContentPart(text=part.get("refusal", "")))
        else:
            raise unsupported(f"{param}[{index}].type", f"The content part type '{kind}'")
    return parts


def generate_request(body: dict) -> lapi.GenerateRequest:
    """An OpenAI chat completion request (already checked against the SDK's own types) as
    Parley's GenerateRequest; StreamGenerateRequest is wire-identical."""
    if (body.get("n") or 1) != 1:
        raise unsupported("n", "More than one choice (n > 1)")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise unsupported("logprobs", "Log probabilities")
    if body.get("audio") or "audio" in (body.get("modalities") or []):
        raise unsupported("audio", "Audio output")
    request = lapi.GenerateRequest(model=body["model"], metadata=body.get("metadata") or {})
    for index, message in enumerate(body["messages"]):
        param = f"messages[{index}]"
        role = message.get("role")
        if role not in _ROLES:
            raise unsupported(f"{param}.role", f"The role '{role}'")
        chat = lpb.ChatMessage(role=_ROLES[role], content=_content(message.get("content"), f"{param}.content"),
                               name=message.get("name") or "", tool_call_id=message.get("tool_call_id") or "")
        for call_index, call in enumerate(message.get("tool_calls") or []):
            if call.get("type") != "function":
                raise unsupported(f"{param}.tool_calls[{call_index}].type", "Custom tool calls")
            function = call.get("function") or {}
            chat.tool_calls.append(lpb.ToolCall(id=call.get("id", ""), name=function.get("name", ""),
                                                arguments=function.get("arguments", "")))
        request.messages.append(chat)
    for index, tool in enumerate(body.get("tools") or []):
        if tool.get("type") != "function":
            raise unsupported(f"tools[{index}].type", f"The tool type '{tool.get('type')}'")
        function = tool["function"]
        definition = lpb.FunctionDefinition(name=function.get("name", ""), description=function.get("description") or "",
                                            strict=bool(function.get("strict")))
        parameters = struct(function.get("parameters"), f"tools[{index}].function.parameters")
        if parameters is not None:
            definition.parameters.CopyFrom(parameters)
        request.tools.append(lpb.Tool(function=definition))
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        mode = {"none": lpb.TOOL_CHOICE_MODE_NONE, "auto": lpb.TOOL_CHOICE_MODE_AUTO,
                "required": lpb.TOOL_CHOICE_MODE_REQUIRED}.get(choice)
        if mode is None:
            raise ApiError(400, "Invalid value for 'tool_choice'.", param="tool_choice", code="invalid_value")
        request.tool_choice.mode = mode
    elif isinstance(choice, dict):
        if choice.get("type") != "function":
            raise unsupported("tool_choice.type", f"The tool choice '{choice.get('type')}'")
        request.tool_choice.function_name = (choice.get("function") or {}).get("name", "")
    if body.get("parallel_tool_calls") is not None:
        request.parallel_tool_calls = bool(body["parallel_tool_calls"])
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            setattr(request, name, float(body[name]))
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        request.max_tokens = int(max_tokens)
    stop = body.get("stop")
    if stop:
        request.stop.extend([stop] if isinstance(stop, str) else list(stop))
    if body.get("seed") is not None:
        request.seed = int(body["seed"])
    response_format = body.get("response_format")
    if response_format:
        kind = response_format.get("type")
        if kind not in _FORMATS:
            raise unsupported("response_format.type", f"The response format '{kind}'")
        request.response_format.type = _FORMATS[kind]
        if kind == "json_schema":
            schema = response_format.get("json_schema") or {}
            request.response_format.json_schema.name = schema.get("name", "")
            request.response_format.json_schema.description = schema.get("description") or ""
            request.response_format.json_schema.strict = bool(schema.get("strict"))
            body_schema = struct(schema.get("schema"), "response_format.json_schema.schema")
            if body_schema is not None:
                request.response_format.json_schema.schema.CopyFrom(body_schema)
    return request


def _usage(usage: lpb.Usage) -> dict:
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens or usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}


@router.post("/chat/completions", summary="Create a chat completion (streamed as SSE with stream: true)")
async def chat_completions(request: Request):
    settings = _settings(request)
    body = await read_json(request, settings.max_body_bytes, completion_create_params.CompletionCreateParamsBase)
    generate = generate_request(body)
    gateway = _gateway(request)
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        call = gateway.stream(request, gateway.llm.StreamGenerate,
                              lapi.StreamGenerateRequest.FromString(generate.SerializeToString()))
        first, rest = await first_and_rest(call)
        return event_stream(_chunks(call, first, rest, body["model"], include_usage), settings.heartbeat_seconds)
    reply = await gateway.call(request, gateway.llm.Generate, generate)
    message = reply.message
    text = "".join(part.text for part in message.content if part.WhichOneof("part") == "text")
    calls = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
             for c in message.tool_calls]
    completion = ChatCompletion.model_construct(
        id=f"chatcmpl-{reply.id}", object="chat.completion", created=now(), model=reply.model,
        choices=[{"index": 0, "finish_reason": _FINISH.get(reply.finish_reason, "stop"), "logprobs": None,
                  "message": {"role": "assistant", "content": text if text or not calls else None,
                              "refusal": None, "tool_calls": calls or None}}],
        usage=_usage(reply.usage), system_fingerprint=None, service_tier=None)
    return json_response(dump(completion))


async def _chunks(call, first, rest, model: str, include_usage: bool):
    """StreamGenerate events as chat.completion.chunk SSE events, then `data: [DONE]`."""
    created = now()
    # The llm service assigns the call's id only in its final event; chunks carry one id from the start.
    chunk_id = "chatcmpl-" + format(id(call), "x") + format(created, "x")
    base = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        # ChatCompletionChunk's fields as a plain dict: a model_construct per token would cost
        # more than the rest of the edge on the token path (tests check them with the SDK).
        return sse(None, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                               "logprobs": None}]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        event = first
        while event is not None:
            kind = event.WhichOneof("event")
            if kind == "text_delta":
                yield chunk({"content": event.text_delta.text})
            elif kind == "tool_call_delta":
                delta = event.tool_call_delta
                call_delta = {"index": delta.index, "function": {"arguments": delta.arguments}}
                if delta.id:
                    call_delta.update(id=delta.id, type="function")
                    call_delta["function"]["name"] = delta.name
                yield chunk({"tool_calls": [call_delta]})
            elif kind == "finish":
                finish = event.finish
                base["model"] = finish.model or model
                yield chunk({}, _FINISH.get(finish.finish_reason, "stop"))
                if include_usage:
                    yield sse(None, {**base, "choices": [], "usage": _usage(finish.usage)})
            try:
                event = await rest.__anext__()
            except StopAsyncIteration:
                event = None
        yield sse(None, "[DONE]")
    except grpc.aio.AioRpcError as error:
        # The stream had started: the failure travels in OpenAI's in-stream error shape.
        yield sse(None, from_grpc(error).body())
    finally:
        call.cancel()




# ---- embeddings ------------------------------------------------------------------------------


@router.post("/embeddings", summary="Create embeddings")
async def embeddings(request: Request):
    settings = _settings(request)
    body = await read_json(request, settings.max_body_bytes, embedding_create_params.EmbeddingCreateParams)
    inputs = body["input"]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not inputs or not all(isinstance(text, str) for text in inputs):
        raise unsupported("input", "Token-array input (send strings)") if inputs else \
            ApiError(400, "Invalid 'input': at least one text is required.", param="input", code="invalid_value")
    embed = lapi.EmbedRequest(model=body["model"], inputs=inputs)
    if body.get("dimensions") is not None:
        embed.dimensions = int(body["dimensions"])
    gateway = _gateway(request)
    reply = await gateway.call(request, gateway.llm.Embed, embed)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, embedding in enumerate(reply.embeddings):
        values = list(embedding.values)
        vector = base64.b64encode(binary.pack(f"<{len(values)}f", *values)).decode() if as_base64 else values
        data.append(Embedding.model_construct(embedding=vector, index=index, object="embedding"))
    response = CreateEmbeddingResponse.model_construct(
        data=data, model=reply.model, object="list",
        usage={"prompt_tokens": reply.usage.input_tokens, "total_tokens": reply.usage.input_tokens})
    return json_response(dump(response))
