"""Parley's async Python client: typed methods over the gateway, credentials on every call,
retries of idempotent calls through gRPC's service config, and helpers for token and run
streams.

    from parley.client import ParleyClient, TextDelta

    async with ParleyClient() as parley:
        async for text in parley.llm.stream("Hello!", model="local/echo"):
            print(text, end="", flush=True)

        assistant = await parley.assistants.create("helper", model="openai/gpt-4o-mini", tools=[get_weather])
        result = await parley.assistants.run(assistant.id, "Weather in Paris?",
                                             functions={"get_weather": get_weather}).result()
        async for event in parley.assistants.stream_run(assistant.id, "Hi", session_id=result.session_id):
            if isinstance(event, TextDelta):
                print(event.text, end="")
"""

from parley.client._admin import Admin, audit_filter
from parley.client._assistants import (
    Assistants,
    code_interpreter_tool,
    file_search_tool,
    function_tool,
    parameters_of,
    run_request,
    user_turn,
)
from parley.client._channel import open_channel, service_config
from parley.client._client import ParleyClient, system_message, user_message
from parley.client._config import DEFAULT_TARGET, resolve_api_key, resolve_target
from parley.client._errors import ErrorDetails, error_details
from parley.client._runs import (
    Citation,
    FunctionRun,
    MessageCreated,
    RunDone,
    RunErrored,
    RunEvent,
    RunResult,
    RunStatus,
    RunStatusChanged,
    RunStream,
    StepCreated,
    StepUpdated,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    typed_event,
)
from parley.client._streams import TokenStream

__all__ = [
    "DEFAULT_TARGET",
    "Admin",
    "Assistants",
    "Citation",
    "ErrorDetails",
    "FunctionRun",
    "MessageCreated",
    "ParleyClient",
    "RunDone",
    "RunErrored",
    "RunEvent",
    "RunResult",
    "RunStatus",
    "RunStatusChanged",
    "RunStream",
    "StepCreated",
    "StepUpdated",
    "TextDelta",
    "TokenStream",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "audit_filter",
    "code_interpreter_tool",
    "error_details",
    "file_search_tool",
    "function_tool",
    "open_channel",
    "parameters_of",
    "resolve_api_key",
    "resolve_target",
    "run_request",
    "service_config",
    "system_message",
    "typed_event",
    "user_message",
    "user_turn",
]
