"""AdminService over gRPC (the gateway's own, for API keys with the admin scope), and the
backends' internal audit and deletion services as AdminService's sources and deleters."""

from __future__ import annotations

import uuid

import grpc

from parley.admin.v1 import admin_service_pb2 as api
from parley.admin.v1 import admin_service_pb2_grpc as api_grpc
from parley.admin.v1 import audit_log_service_pb2 as log_api
from parley.admin.v1 import audit_log_service_pb2_grpc as log_grpc
from parley.admin.v1 import audit_pb2 as pb
from parley.admin.v1 import user_data_service_pb2_grpc as user_data_grpc
from services.gateway.admin import Admin, Deleter, Position, SourcePage
from services.gateway.gate import Gate
from services.gateway.models import Principal
from services.gateway.proxy import REQUEST_ID_KEY, Backend
from services.gateway.servicer import authenticated
from services.runtime import audit, errors
from services.runtime.admin_servicers import filter_from_proto, filter_to_proto
from services.runtime.audit import AuditFilter
from services.runtime.identity import METADATA_KEY
from services.runtime.status import domain_error
from services.runtime.user_data import Removed

SERVICE = api.DESCRIPTOR.services_by_name["AdminService"].full_name
# Longest a backend may take with one page of its log, or its part of a deletion.
BACKEND_TIMEOUT_SECONDS = 120.0


class AdminServicer(api_grpc.AdminServiceServicer):
    def __init__(self, gate: Gate, admin: Admin) -> None:
        self._gate = gate
        self._admin = admin

    async def _administrator(self, context, method: str) -> Principal:
        principal = await authenticated(self._gate, context, f"/{SERVICE}/{method}")
        if not principal.is_admin:
            raise errors.PermissionDenied("the admin service needs an API key with the admin scope",
                                          reason="ADMIN_REQUIRED", metadata={"scope": "admin"})
        await self._gate.admit(principal, stream=False)
        return principal

    async def ListAuditEvents(self, request, context):
        admin = await self._administrator(context, "ListAuditEvents")
        events, token = await self._admin.list(admin, filter_from_proto(request.filter), list(request.services),
                                               size=request.page_size, token=request.page_token)
        return api.ListAuditEventsResponse(audit_events=events, next_page_token=token)

    async def ExportAuditEvents(self, request, context):
        admin = await self._administrator(context, "ExportAuditEvents")
        chunks = self._admin.export(admin, filter_from_proto(request.filter), list(request.services))
        async for data in chunks:
            yield api.ExportAuditEventsResponse(data=data)

    async def DeleteUserData(self, request, context):
        admin = await self._administrator(context, "DeleteUserData")
        return await self._admin.delete_user_data(admin, request.user_id)


def _metadata(gate: Gate, admin: Principal) -> tuple[tuple[str, str], ...]:
    return ((METADATA_KEY, gate.identity(admin)), (REQUEST_ID_KEY, audit.current_request_id() or uuid.uuid4().hex))


def _failure(backend: Backend, exc: grpc.aio.AioRpcError) -> errors.ParleyError:
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return backend.unavailable()
    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
        return errors.FailedPrecondition(f"the {backend.name} service does not serve this (an older version?)",
                                         reason="BACKEND_UNSUPPORTED", metadata={"backend": backend.name})
    return domain_error(exc)


def audit_source(backend: Backend, gate: Gate) -> SourcePage:
    """A backend's own audit log, read as the administrator."""

    async def page(admin: Principal, query: AuditFilter, after: Position | None, limit: int
                   ) -> tuple[list[pb.AuditEvent], bool]:
        request = log_api.ListServiceAuditEventsRequest(filter=filter_to_proto(query), page_size=limit)
        if after is not None:
            seconds, nanos, event_id = after
            request.after.event_time.seconds, request.after.event_time.nanos = seconds, nanos
            request.after.id = event_id
        stub = log_grpc.AuditLogServiceStub(backend.channel)
        try:
            reply = await stub.ListServiceAuditEvents(request, metadata=_metadata(gate, admin),
                                                      timeout=BACKEND_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise _failure(backend, exc) from None
        return list(reply.audit_events), reply.more

    return page


def deleter(backend: Backend, gate: Gate) -> Deleter:
    """A backend's DeleteUserData, as the administrator."""

    async def delete(admin: Principal, user_id: str) -> list[Removed]:
        stub = user_data_grpc.UserDataServiceStub(backend.channel)
        try:
            reply = await stub.DeleteUserData(pb.DeleteUserDataRequest(user_id=user_id),
                                              metadata=_metadata(gate, admin), timeout=BACKEND_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise _failure(backend, exc) from None
        return [Removed(d.service, dict(d.removed), tuple(d.kept)) for d in reply.deletions]

    return delete
