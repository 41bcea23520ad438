"""AssistantService over gRPC: each RPC takes the verified caller, calls the domain
(`Assistants`, `Runs`) as that user, and wraps the answer. Streams `yield` their events."""

from __future__ import annotations

from google.protobuf.empty_pb2 import Empty

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as api
from parley.assistants.v1 import assistants_service_pb2_grpc as api_grpc
from services.assistants.assistants import Assistants
from services.assistants.identity import MintedIdentities
from services.assistants.runs import Runs
from services.runtime.interceptors import current_identity


class AssistantServicer(api_grpc.AssistantServiceServicer):
    def __init__(self, assistants: Assistants, runs: Runs, identities: MintedIdentities) -> None:
        self._assistants = assistants
        self._runs = runs
        self._identities = identities

    def _who(self):
        return self._identities.for_user(current_identity().user_id)

    async def CreateAssistant(self, request, context):
        assistant = apb.Assistant(
            name=request.name, description=request.description, model=request.model,
            instructions=request.instructions, tools=request.tools, tool_resources=request.tool_resources,
            response_format=request.response_format, metadata=request.metadata)
        if request.HasField("temperature"):
            assistant.temperature = request.temperature
        if request.HasField("top_p"):
            assistant.top_p = request.top_p
        return await self._assistants.create(self._who(), assistant)

    async def GetAssistant(self, request, context):
        return await self._assistants.get(self._who(), request.assistant_id)

    async def ListAssistants(self, request, context):
        page = await self._assistants.list(self._who(), request.page_size, request.page_token)
        return api.ListAssistantsResponse(assistants=page.assistants, next_page_token=page.next_page_token)

    async def UpdateAssistant(self, request, context):
        return await self._assistants.update(self._who(), request.assistant, list(request.update_mask.paths))

    async def DeleteAssistant(self, request, context):
        await self._assistants.delete(self._who(), request.assistant_id)
        return Empty()

    async def CreateRun(self, request, context):
        return await self._runs.create(self._who(), request)

    async def StreamRun(self, request, context):
        async for event in self._runs.stream_new(self._who(), request.run):
            yield api.StreamRunResponse(event=event)

    async def GetRun(self, request, context):
        return await self._runs.get(self._who(), request.run_id)

    async def ListRuns(self, request, context):
        page = await self._runs.list(self._who(), request.session_id, request.page_size, request.page_token)
        return api.ListRunsResponse(runs=page.runs, next_page_token=page.next_page_token)

    async def ListRunSteps(self, request, context):
        page = await self._runs.list_steps(self._who(), request.run_id, request.page_size, request.page_token)
        return api.ListRunStepsResponse(run_steps=page.run_steps, next_page_token=page.next_page_token)

    async def CancelRun(self, request, context):
        return await self._runs.cancel(self._who(), request.run_id)

    async def SubmitToolOutputs(self, request, context):
        async for event in self._runs.submit(self._who(), request.run_id, list(request.tool_outputs)):
            yield api.SubmitToolOutputsResponse(event=event)

    async def WatchRun(self, request, context):
        async for event in self._runs.follow(self._who(), request.run_id, request.after_sequence, until_action=False):
            yield api.WatchRunResponse(event=event)
