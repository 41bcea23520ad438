"""Parley's protobuf objects in OpenAI's shapes (built with the `openai` package's own types),
and OpenAI's request fields as Parley's messages, for assistants, threads, messages, runs
and steps."""

from __future__ import annotations

import json

from google.protobuf import struct_pb2
from openai.types.beta import Assistant, Thread
from openai.types.beta.threads import (
    FileCitationAnnotation,
    FilePathAnnotation,
    Message,
    RequiredActionFunctionToolCall,
    Run,
    Text,
    TextContentBlock,
)
from openai.types.beta.threads.runs import RunStep

from parley.assistants.v1 import assistants_pb2 as apb
from parley.sessions.v1 import sessions_pb2 as spb
from services.rest import ids
from services.rest.errors import ApiError
from services.rest.http import dump, unsupported

# Kept in a thread's metadata (hidden from its OpenAI shape): the thread's tool_resources.
TOOL_RESOURCES_KEY = "openai.tool_resources"


def seconds(timestamp) -> int | None:
    return timestamp.seconds if timestamp is not None and (timestamp.seconds or timestamp.nanos) else None


def struct(value: dict | None, param: str) -> struct_pb2.Struct | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
    message = struct_pb2.Struct()
    try:
        message.update(value)
    except (ValueError, TypeError) as error:
        raise ApiError(400, f"Invalid value for '{param}': {error}.", param=param, code="invalid_value") from None
    return message


def struct_dict(message) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message)


def metadata(value, param: str = "metadata") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ApiError(400, f"Invalid type for '{param}': expected an object of strings.", param=param,
                       code="invalid_type")
    return dict(value)


# ---- tools and formats -----------------------------------------------------------------------


def tools_in(tools, param: str = "tools") -> list[apb.Tool]:
    result = []
    for index, tool in enumerate(tools or []):
        kind = tool.get("type")
        if kind == "code_interpreter":
            result.append(apb.Tool(code_interpreter=apb.CodeInterpreterTool()))
        elif kind == "file_search":
            options = tool.get("file_search") or {}
            search = apb.FileSearchTool(max_num_results=options.get("max_num_results") or 0)
            ranking = options.get("ranking_options") or {}
            if ranking.get("score_threshold") is not None:
                search.ranking_options.score_threshold = ranking["score_threshold"]
            result.append(apb.Tool(file_search=search))
        elif kind == "function":
            function = tool.get("function") or {}
            message = apb.FunctionTool(name=function.get("name", ""), description=function.get("description") or "",
                                       strict=bool(function.get("strict")))
            parameters = struct(function.get("parameters"), f"{param}[{index}].function.parameters")
            if parameters is not None:
                message.parameters.CopyFrom(parameters)
            result.append(apb.Tool(function=message))
        else:
            raise unsupported(f"{param}[{index}].type", f"The tool type '{kind}'")
    return result


def tools_out(tools) -> list[dict]:
    result = []
    for tool in tools:
        kind = tool.WhichOneof("tool")
        if kind == "code_interpreter":
            result.append({"type": "code_interpreter"})
        elif kind == "file_search":
            search = {"max_num_results": tool.file_search.max_num_results or 20,
                      "ranking_options": {"ranker": "auto", "score_threshold":
                                          tool.file_search.ranking_options.score_threshold
                                          if tool.file_search.ranking_options.HasField("score_threshold") else 0.0}}
            result.append({"type": "file_search", "file_search": search})
        elif kind == "function":
            function = {"name": tool.function.name, "description": tool.function.description or None,
                        "parameters": struct_dict(tool.function.parameters) if tool.function.HasField("parameters")
                        else None, "strict": tool.function.strict}
            result.append({"type": "function", "function": function})
    return result


def tool_resources_in(value, param: str = "tool_resources") -> apb.ToolResources:
    resources = apb.ToolResources()
    if not value:
        return resources
    code = value.get("code_interpreter") or {}
    resources.code_interpreter.file_ids.extend(
        ids.internal_or_400("file", f, f"{param}.code_interpreter.file_ids[{i}]")
        for i, f in enumerate(code.get("file_ids") or []))
    search = value.get("file_search") or {}
    resources.file_search.vector_store_ids.extend(
        ids.internal_or_400("vector_store", v, f"{param}.file_search.vector_store_ids[{i}]")
        for i, v in enumerate(search.get("vector_store_ids") or []))
    return resources


def tool_resources_out(resources) -> dict:
    return {"code_interpreter": {"file_ids": [ids.public("file", f) for f in resources.code_interpreter.file_ids]},
            "file_search": {"vector_store_ids": [ids.public("vector_store", v)
                                                 for v in resources.file_search.vector_store_ids]}}


_FORMAT_IN = {"text": apb.RESPONSE_FORMAT_TYPE_TEXT, "json_object": apb.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
              "json_schema": apb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA}


def response_format_in(value, param: str = "response_format") -> apb.ResponseFormat | None:
    if value is None:
        return None
    if value == "auto":
        return apb.ResponseFormat(type=apb.RESPONSE_FORMAT_TYPE_AUTO)
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in _FORMAT_IN:
        raise ApiError(400, f"Invalid value for '{param}'.", param=param, code="invalid_value")
    result = apb.ResponseFormat(type=_FORMAT_IN[kind])
    if kind == "json_schema":
        schema = value.get("json_schema") or {}
        result.json_schema.name = schema.get("name", "")
        result.json_schema.description = schema.get("description") or ""
        result.json_schema.strict = bool(schema.get("strict"))
        body = struct(schema.get("schema"), f"{param}.json_schema.schema")
        if body is not None:
            result.json_schema.schema.CopyFrom(body)
    return result


def response_format_out(value):
    if value.type in (apb.RESPONSE_FORMAT_TYPE_UNSPECIFIED, apb.RESPONSE_FORMAT_TYPE_AUTO):
        return "auto"
    if value.type == apb.RESPONSE_FORMAT_TYPE_TEXT:
        return {"type": "text"}
    if value.type == apb.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {
        "name": value.json_schema.name, "description": value.json_schema.description or None,
        "schema": struct_dict(value.json_schema.schema), "strict": value.json_schema.strict}}


# ---- assistants and threads ------------------------------------------------------------------


def assistant_out(assistant: apb.Assistant) -> dict:
    return dump(Assistant.model_construct(
        id=ids.public("assistant", assistant.id), object="assistant", created_at=seconds(assistant.create_time) or 0,
        name=assistant.name or None, description=assistant.description or None, model=assistant.model,
        instructions=assistant.instructions or None, tools=tools_out(assistant.tools),
        tool_resources=tool_resources_out(assistant.tool_resources), metadata=dict(assistant.metadata),
        temperature=assistant.temperature if assistant.HasField("temperature") else None,
        top_p=assistant.top_p if assistant.HasField("top_p") else None,
        response_format=response_format_out(assistant.response_format)))


def thread_out(session: spb.Session) -> dict:
    metadata_ = dict(session.metadata)
    stored = metadata_.pop(TOOL_RESOURCES_KEY, None)
    resources = json.loads(stored) if stored else None
    return dump(Thread.model_construct(id=ids.public("thread", session.id), object="thread",
                                       created_at=seconds(session.create_time) or 0, metadata=metadata_,
                                       tool_resources=resources))


# ---- messages --------------------------------------------------------------------------------

_ROLE_IN = {"user": spb.ROLE_USER, "assistant": spb.ROLE_ASSISTANT}
_ROLE_OUT = {spb.ROLE_USER: "user", spb.ROLE_ASSISTANT: "assistant", spb.ROLE_SYSTEM: "assistant",
             spb.ROLE_TOOL: "assistant"}
_DETAIL = {"auto": spb.IMAGE_DETAIL_AUTO, "low": spb.IMAGE_DETAIL_LOW, "high": spb.IMAGE_DETAIL_HIGH}


def message_in(message: dict, param: str) -> spb.Message:
    """An OpenAI message-create body (or one of a thread's `messages`) as a Parley message."""
    role = message.get("role")
    if role not in _ROLE_IN:
        raise ApiError(400, f"Invalid value for '{param}.role': expected 'user' or 'assistant'.",
                       param=f"{param}.role", code="invalid_value")
    result = spb.Message(role=_ROLE_IN[role], metadata=metadata(message.get("metadata"), f"{param}.metadata"))
    content = message.get("content")
    if isinstance(content, str):
        result.content.append(spb.ContentPart(text=content))
    else:
        for index, part in enumerate(content or []):
            where = f"{param}.content[{index}]"
            kind = part.get("type")
            if kind == "text":
                result.content.append(spb.ContentPart(text=part.get("text", "")))
            elif kind == "image_file":
                image = part.get("image_file") or {}
                result.content.append(spb.ContentPart(image_file=spb.ImageFile(
                    file_id=ids.internal_or_400("file", image.get("file_id"), f"{where}.image_file.file_id"),
                    detail=_DETAIL.get(image.get("detail") or "auto", spb.IMAGE_DETAIL_AUTO))))
            elif kind == "image_url":
                image = part.get("image_url") or {}
                result.content.append(spb.ContentPart(image_url=spb.ImageUrl(
                    url=image.get("url", ""), detail=_DETAIL.get(image.get("detail") or "auto", spb.IMAGE_DETAIL_AUTO))))
            else:
                raise unsupported(f"{where}.type", f"The content type '{kind}'")
    if not result.content:
        raise ApiError(400, f"Invalid '{param}.content': a message needs content.", param=f"{param}.content",
                       code="invalid_value")
    for index, attachment in enumerate(message.get("attachments") or []):
        where = f"{param}.attachments[{index}]"
        result.attachments.append(spb.Attachment(
            file_id=ids.internal_or_400("file", attachment.get("file_id"), f"{where}.file_id"),
            tools=[tool.get("type", "") for tool in attachment.get("tools") or []]))
    return result


def annotation_out(annotation: apb.Annotation, index: int | None = None) -> dict:
    base = {"text": annotation.text, "start_index": annotation.start_index, "end_index": annotation.end_index}
    if index is not None:
        base["index"] = index
    if annotation.WhichOneof("annotation") == "file_path":
        body = {"type": "file_path", "file_path": {"file_id": ids.public("file", annotation.file_path.file_id)},
                **base}
        return body if index is not None else dump(FilePathAnnotation.model_construct(**body))
    citation = annotation.file_citation
    # file_name and page are Parley's additions (OpenAI's citation names only the file).
    body = {"type": "file_citation", **base, "file_citation": {
        "file_id": ids.public("file", citation.file_id), "quote": citation.quote, "file_name": citation.filename,
        "page": citation.page or None}}
    return body if index is not None else dump(FileCitationAnnotation.model_construct(**body))


def message_out(message: spb.Message, annotations=(), message_id: str | None = None) -> dict:
    content = []
    for index, part in enumerate(message.content):
        kind = part.WhichOneof("part")
        if kind == "text":
            marks = [annotation_out(a) for a in annotations if a.content_index == index]
            content.append(dump(TextContentBlock.model_construct(
                type="text", text=Text.model_construct(value=part.text, annotations=marks))))
        elif kind == "image_file":
            content.append({"type": "image_file", "image_file": {
                "file_id": ids.public("file", part.image_file.file_id), "detail": "auto"}})
        elif kind == "image_url":
            content.append({"type": "image_url", "image_url": {"url": part.image_url.url, "detail": "auto"}})
    created = seconds(message.create_time) or 0
    return dump(Message.model_construct(
        id=message_id or ids.public("message", message.id), object="thread.message", created_at=created,
        thread_id=ids.public("thread", message.session_id), role=_ROLE_OUT.get(message.role, "assistant"),
        content=content, assistant_id=ids.optional("assistant", message.assistant_id),
        run_id=ids.optional("run", message.run_id), status="completed", completed_at=created,
        incomplete_at=None, incomplete_details=None, metadata=dict(message.metadata),
        attachments=[{"file_id": ids.public("file", a.file_id), "tools": [{"type": t} for t in a.tools]}
                     for a in message.attachments]))


# ---- runs and steps --------------------------------------------------------------------------

RUN_STATUS = {apb.RUN_STATUS_QUEUED: "queued", apb.RUN_STATUS_IN_PROGRESS: "in_progress",
              apb.RUN_STATUS_REQUIRES_ACTION: "requires_action", apb.RUN_STATUS_CANCELLING: "cancelling",
              apb.RUN_STATUS_CANCELLED: "cancelled", apb.RUN_STATUS_FAILED: "failed",
              apb.RUN_STATUS_COMPLETED: "completed", apb.RUN_STATUS_INCOMPLETE: "incomplete",
              apb.RUN_STATUS_EXPIRED: "expired"}
_ERROR_CODE = {apb.RUN_ERROR_CODE_RATE_LIMIT_EXCEEDED: "rate_limit_exceeded",
               apb.RUN_ERROR_CODE_INVALID_PROMPT: "invalid_prompt", apb.RUN_ERROR_CODE_BUDGET_EXCEEDED:
               "rate_limit_exceeded"}
_INCOMPLETE = {apb.INCOMPLETE_REASON_MAX_COMPLETION_TOKENS: "max_completion_tokens",
               apb.INCOMPLETE_REASON_MAX_PROMPT_TOKENS: "max_prompt_tokens",
               apb.INCOMPLETE_REASON_CONTENT_FILTER: "max_completion_tokens"}
_TOOL_CHOICE_OUT = {apb.TOOL_CHOICE_TYPE_NONE: "none", apb.TOOL_CHOICE_TYPE_REQUIRED: "required"}


def usage_out(usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def run_error_out(error) -> dict:
    return {"code": _ERROR_CODE.get(error.code, "server_error"), "message": error.message}


def tool_choice_out(choice):
    if choice.type == apb.TOOL_CHOICE_TYPE_FUNCTION:
        return {"type": "function", "function": {"name": choice.function_name}}
    return _TOOL_CHOICE_OUT.get(choice.type, "auto")


def tool_choice_in(value, param: str = "tool_choice") -> apb.ToolChoice | None:
    if value is None:
        return None
    simple = {"none": apb.TOOL_CHOICE_TYPE_NONE, "auto": apb.TOOL_CHOICE_TYPE_AUTO,
              "required": apb.TOOL_CHOICE_TYPE_REQUIRED}
    if isinstance(value, str):
        if value not in simple:
            raise ApiError(400, f"Invalid value for '{param}'.", param=param, code="invalid_value")
        return apb.ToolChoice(type=simple[value])
    kind = value.get("type")
    if kind == "function":
        return apb.ToolChoice(type=apb.TOOL_CHOICE_TYPE_FUNCTION, function_name=(value.get("function") or {})
                              .get("name", ""))
    if kind in ("file_search", "code_interpreter"):
        # The engine offers its built-in tools to the model as functions of these names.
        return apb.ToolChoice(type=apb.TOOL_CHOICE_TYPE_FUNCTION, function_name=kind)
    raise ApiError(400, f"Invalid value for '{param}.type'.", param=f"{param}.type", code="invalid_value")


def required_action_out(run: apb.Run):
    if run.status != apb.RUN_STATUS_REQUIRES_ACTION or not run.HasField("required_action"):
        return None
    calls = [RequiredActionFunctionToolCall.model_construct(
        id=call.id, type="function", function={"name": call.name, "arguments": call.arguments})
        for call in run.required_action.submit_tool_outputs.tool_calls]
    return {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [dump(c) for c in calls]}}


def run_out(run: apb.Run) -> dict:
    truncation = {"type": "last_messages" if run.truncation_strategy.type == apb.TRUNCATION_TYPE_LAST_MESSAGES
                  else "auto", "last_messages": run.truncation_strategy.last_messages or None}
    ended = run.status in (apb.RUN_STATUS_COMPLETED, apb.RUN_STATUS_FAILED, apb.RUN_STATUS_CANCELLED,
                           apb.RUN_STATUS_INCOMPLETE, apb.RUN_STATUS_EXPIRED)
    return dump(Run.model_construct(
        id=ids.public("run", run.id), object="thread.run", created_at=seconds(run.create_time) or 0,
        thread_id=ids.public("thread", run.session_id), assistant_id=ids.public("assistant", run.assistant_id),
        status=RUN_STATUS.get(run.status, "queued"), required_action=required_action_out(run),
        last_error=run_error_out(run.last_error) if run.HasField("last_error") and run.last_error.code else None,
        expires_at=seconds(run.expire_time), started_at=seconds(run.start_time),
        cancelled_at=seconds(run.cancel_time), failed_at=seconds(run.fail_time),
        completed_at=seconds(run.complete_time),
        incomplete_details={"reason": _INCOMPLETE.get(run.incomplete_details.reason, "max_completion_tokens")}
        if run.status == apb.RUN_STATUS_INCOMPLETE else None,
        model=run.model, instructions=run.instructions, tools=tools_out(run.tools), metadata=dict(run.metadata),
        usage=usage_out(run.usage) if ended else None,
        temperature=run.temperature if run.HasField("temperature") else None,
        top_p=run.top_p if run.HasField("top_p") else None,
        max_prompt_tokens=run.max_prompt_tokens or None, max_completion_tokens=run.max_completion_tokens or None,
        truncation_strategy=truncation, response_format=response_format_out(run.response_format),
        tool_choice=tool_choice_out(run.tool_choice), parallel_tool_calls=run.parallel_tool_calls))


STEP_STATUS = {apb.RUN_STEP_STATUS_IN_PROGRESS: "in_progress", apb.RUN_STEP_STATUS_CANCELLED: "cancelled",
               apb.RUN_STEP_STATUS_FAILED: "failed", apb.RUN_STEP_STATUS_COMPLETED: "completed",
               apb.RUN_STEP_STATUS_EXPIRED: "expired"}


def provisional_message_id(step_id: str) -> str:
    """The public id of a message a run writes: derived from its message_creation step, because
    the stream announces the message (thread.message.created) before Parley stores it, once,
    whole, under its own id. Listings and retrievals show run-written messages under this same
    id, and it resolves back through the step (see docs/rest.md)."""
    return ids.public("message", step_id)


def tool_call_out(detail: apb.ToolCallDetail) -> dict:
    kind = detail.WhichOneof("call")
    if kind == "function":
        return {"id": detail.id, "type": "function", "function": {
            "name": detail.function.name, "arguments": detail.function.arguments,
            "output": detail.function.output or None}}
    if kind == "file_search":
        search = detail.file_search
        return {"id": detail.id, "type": "file_search", "file_search": {
            "ranking_options": {"ranker": "auto", "score_threshold": search.ranking_options.score_threshold
                                if search.ranking_options.HasField("score_threshold") else 0.0},
            "results": [{"file_id": ids.public("file", r.file_id), "file_name": r.filename, "score": r.score,
                         "content": [{"type": "text", "text": r.text}]} for r in search.results]}}
    outputs = []
    for output in detail.code_interpreter.outputs:
        if output.WhichOneof("output") == "logs":
            outputs.append({"type": "logs", "logs": output.logs})
        else:
            outputs.append({"type": "image", "image": {"file_id": ids.public("file", output.image.file_id)}})
    return {"id": detail.id, "type": "code_interpreter",
            "code_interpreter": {"input": detail.code_interpreter.input, "outputs": outputs}}


def step_out(step: apb.RunStep) -> dict:
    if step.WhichOneof("step_details") == "tool_calls":
        details = {"type": "tool_calls", "tool_calls": [tool_call_out(d) for d in step.tool_calls.tool_calls]}
    else:
        details = {"type": "message_creation", "message_creation": {"message_id": provisional_message_id(step.id)}}
    ended = step.status not in (apb.RUN_STEP_STATUS_IN_PROGRESS, apb.RUN_STEP_STATUS_UNSPECIFIED)
    return dump(RunStep.model_construct(
        id=ids.public("step", step.id), object="thread.run.step", created_at=seconds(step.create_time) or 0,
        run_id=ids.public("run", step.run_id), thread_id=ids.public("thread", step.session_id),
        assistant_id=ids.public("assistant", step.assistant_id),
        type="tool_calls" if step.type == apb.RUN_STEP_TYPE_TOOL_CALLS else "message_creation",
        status=STEP_STATUS.get(step.status, "in_progress"), step_details=details,
        last_error=run_error_out(step.last_error) if step.HasField("last_error") and step.last_error.code else None,
        completed_at=seconds(step.complete_time), cancelled_at=seconds(step.cancel_time),
        failed_at=seconds(step.fail_time), expired_at=seconds(step.expire_time), metadata={},
        usage=usage_out(step.usage) if ended and step.HasField("usage") else None))
