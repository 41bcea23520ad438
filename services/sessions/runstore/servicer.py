"""RunStoreService over gRPC: internal storage for the assistants run engine. Each RPC converts,
calls the run store as the verified caller, and converts back."""

from __future__ import annotations

from google.protobuf.empty_pb2 import Empty

from parley.runstore.v1 import runstore_service_pb2 as api
from parley.runstore.v1 import runstore_service_pb2_grpc as api_grpc
from services.runtime import errors
from services.runtime.interceptors import current_identity
from services.sessions.runstore import convert
from services.sessions.runstore.session_deletions import SessionDeletions
from services.sessions.runstore.store import RunStore


class RunStoreServicer(api_grpc.RunStoreServiceServicer):
    def __init__(self, store: RunStore, session_deletions: SessionDeletions | None = None) -> None:
        self._store = store
        self._session_deletions = session_deletions

    async def CreateAssistant(self, request, context):
        assistant = await self._store.create_assistant(
            current_identity().user_id, convert.draft(request.assistant, "assistant")
        )
        return convert.assistant_to_proto(assistant)

    async def GetAssistant(self, request, context):
        assistant = await self._store.get_assistant(current_identity().user_id, request.assistant_id)
        return convert.assistant_to_proto(assistant)

    async def ListAssistants(self, request, context):
        page = await self._store.list_assistants(
            current_identity().user_id, size=request.page_size, token=request.page_token
        )
        return api.ListAssistantsResponse(
            assistants=[convert.assistant_to_proto(a) for a in page.items], next_page_token=page.next_page_token
        )

    async def UpdateAssistant(self, request, context):
        assistant = await self._store.update_assistant(
            current_identity().user_id,
            request.assistant.id,
            list(request.update_mask.paths),
            convert.draft(request.assistant, "assistant"),
        )
        return convert.assistant_to_proto(assistant)

    async def DeleteAssistant(self, request, context):
        await self._store.delete_assistant(current_identity().user_id, request.assistant_id)
        return Empty()

    async def CreateRun(self, request, context):
        run = await self._store.create_run(
            current_identity().user_id, convert.draft(request.run, "run"),
            created_event=convert.created_event_body if request.append_created_event else None,
        )
        return convert.run_to_proto(run)

    async def GetRun(self, request, context):
        return convert.run_to_proto(await self._store.get_run(current_identity().user_id, request.run_id))

    async def ListRuns(self, request, context):
        page = await self._store.list_runs(
            current_identity().user_id,
            request.session_id,
            size=request.page_size,
            token=request.page_token,
            statuses=list(request.statuses),
            order=request.order,
        )
        return api.ListRunsResponse(
            runs=[convert.run_to_proto(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def UpdateRun(self, request, context):
        run = await self._store.update_run(
            current_identity().user_id,
            request.run.id,
            list(request.update_mask.paths),
            convert.draft(request.run, "run"),
            expected_statuses=list(request.expected_statuses),
            events=convert.new_events(request.events),
            lease=convert.lease(request.lease) if request.HasField("lease") else None,
            require_session_head=request.require_session_head,
        )
        return convert.run_to_proto(run)

    async def GetActiveRun(self, request, context):
        run = await self._store.get_active_run(current_identity().user_id, request.session_id)
        return api.GetActiveRunResponse(run=convert.run_to_proto(run)) if run else api.GetActiveRunResponse()

    async def CreateRunStep(self, request, context):
        step = await self._store.create_run_step(
            current_identity().user_id, convert.draft(request.run_step, "run_step")
        )
        return convert.run_step_to_proto(step)

    async def UpdateRunStep(self, request, context):
        step = await self._store.update_run_step(
            current_identity().user_id,
            request.run_step.id,
            list(request.update_mask.paths),
            convert.draft(request.run_step, "run_step"),
        )
        return convert.run_step_to_proto(step)

    async def ListRunSteps(self, request, context):
        page = await self._store.list_run_steps(
            current_identity().user_id, request.run_id, size=request.page_size, token=request.page_token
        )
        return api.ListRunStepsResponse(
            run_steps=[convert.run_step_to_proto(s) for s in page.items], next_page_token=page.next_page_token
        )

    async def AppendRunEvents(self, request, context):
        last = await self._store.append_run_events(
            current_identity().user_id, request.run_id, convert.new_events(request.events)
        )
        return api.AppendRunEventsResponse(last_sequence=last)

    async def ListRunEvents(self, request, context):
        page = await self._store.list_run_events(
            current_identity().user_id,
            request.run_id,
            after_sequence=request.after_sequence,
            size=request.page_size,
            token=request.page_token,
        )
        return api.ListRunEventsResponse(
            events=[convert.run_event_to_proto(e) for e in page.items], next_page_token=page.next_page_token
        )

    async def WatchRunEvents(self, request, context):
        changes = self._store.watch_run_events(
            current_identity().user_id, request.run_id, after_sequence=request.after_sequence,
            status_only=request.status_only,
        )
        async for change in changes:
            yield convert.run_change_to_proto(change)

    async def WatchSessionDeletions(self, request, context):
        if self._session_deletions is None:
            raise errors.Unimplemented("this run store does not announce session deletions")
        async for deletion in self._session_deletions.watch(current_identity().scopes):
            yield api.WatchSessionDeletionsResponse(session_id=deletion.session_id, user_id=deletion.user_id)

    async def ClaimRuns(self, request, context):
        claims = await self._store.claim_runs(
            current_identity().scopes, convert.lease(request.lease), max_runs=request.max_runs
        )
        return api.ClaimRunsResponse(claims=[convert.claim_to_proto(c) for c in claims])

    async def RenewRunLeases(self, request, context):
        held = await self._store.renew_run_leases(
            current_identity().scopes, convert.lease(request.lease), list(request.run_ids)
        )
        return api.RenewRunLeasesResponse(run_ids=[str(r) for r in held])

    async def LookupFunctionResults(self, request, context):
        found = await self._store.lookup_function_results(
            current_identity().user_id, convert.function_results(request.keys, "keys")
        )
        return api.LookupFunctionResultsResponse(results=[convert.function_result_to_proto(r) for r in found])

    async def StoreFunctionResults(self, request, context):
        await self._store.store_function_results(
            current_identity().user_id, convert.function_results(request.results, "results")
        )
        return api.StoreFunctionResultsResponse()
