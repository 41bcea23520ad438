"""SessionService over gRPC: each RPC converts, calls the domain as the verified caller, and
converts back. Errors and identity are handled by the shared interceptors."""

from __future__ import annotations

from google.protobuf.empty_pb2 import Empty

from parley.sessions.v1 import sessions_service_pb2 as api
from parley.sessions.v1 import sessions_service_pb2_grpc as api_grpc
from services.runtime.interceptors import current_identity
from services.sessions import convert
from services.sessions.domain import Sessions


class SessionServicer(api_grpc.SessionServiceServicer):
    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    async def CreateSession(self, request, context):
        session = await self._sessions.create_session(current_identity().user_id, convert.new_session(request))
        return convert.session_to_proto(session)

    async def GetSession(self, request, context):
        return convert.session_to_proto(await self._sessions.get_session(current_identity().user_id, request.session_id))

    async def ListSessions(self, request, context):
        page = await self._sessions.list_sessions(
            current_identity().user_id, status=request.status, size=request.page_size, token=request.page_token,
            title_contains=request.title_contains,
        )
        return api.ListSessionsResponse(
            sessions=[convert.session_to_proto(s) for s in page.items], next_page_token=page.next_page_token
        )

    async def UpdateSession(self, request, context):
        session = await self._sessions.update_session(
            current_identity().user_id,
            request.session.id,
            list(request.update_mask.paths),
            convert.session_patch(request.session),
        )
        return convert.session_to_proto(session)

    async def DeleteSession(self, request, context):
        await self._sessions.delete_session(current_identity().user_id, request.session_id)
        return Empty()

    async def CreateMessage(self, request, context):
        message = await self._sessions.create_message(
            current_identity().user_id, request.session_id, convert.new_message(request)
        )
        return convert.message_to_proto(message)

    async def GetMessage(self, request, context):
        message = await self._sessions.get_message(current_identity().user_id, request.session_id, request.message_id)
        return convert.message_to_proto(message)

    async def ListMessages(self, request, context):
        page = await self._sessions.list_messages(
            current_identity().user_id,
            request.session_id,
            size=request.page_size,
            token=request.page_token,
            order=request.order,
            run_id=request.run_id,
        )
        return api.ListMessagesResponse(
            messages=[convert.message_to_proto(m) for m in page.items], next_page_token=page.next_page_token
        )

    async def DeleteMessage(self, request, context):
        await self._sessions.delete_message(current_identity().user_id, request.session_id, request.message_id)
        return Empty()

    async def ExportSession(self, request, context):
        media_type, filename, chunks = await self._sessions.export_session(
            current_identity().user_id, request.session_id, request.format
        )
        first = True
        async for data in chunks:
            if first:
                yield api.ExportSessionResponse(media_type=media_type, filename=filename, data=data)
                first = False
            else:
                yield api.ExportSessionResponse(data=data)

    async def SubmitFeedback(self, request, context):
        feedback = await self._sessions.submit_feedback(
            current_identity().user_id, request.session_id, request.message_id, request.rating, request.comment
        )
        return convert.feedback_to_proto(feedback)
