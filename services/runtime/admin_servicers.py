"""The internal administration services the bootstrap registers for any app that has what
they serve: `parley.admin.v1.AuditLogService` (an app whose `audit_log` has a database) and
`parley.admin.v1.UserDataService` (an app with a `delete_user_data(user_id)` coroutine).
Both answer only callers whose gateway identity holds the admin scope. Also the protobuf
conversions of audit events and filters, which the gateway's AdminService shares."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence

from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from parley.admin.v1 import audit_log_service_pb2 as log_api
from parley.admin.v1 import audit_log_service_pb2_grpc as log_grpc
from parley.admin.v1 import audit_pb2 as pb
from parley.admin.v1 import user_data_service_pb2_grpc as user_data_grpc
from services.runtime import errors
from services.runtime.audit import AuditEvent, AuditFilter, AuditLog
from services.runtime.identity import Identity
from services.runtime.interceptors import current_identity
from services.runtime.pagination import page_size
from services.runtime.user_data import Removed, checked_user_id, not_yourself
from services.runtime.validation import timestamp_to_datetime

AUDIT_LOG_SERVICE = log_api.DESCRIPTOR.services_by_name["AuditLogService"].full_name
USER_DATA_SERVICE = "parley.admin.v1.UserDataService"
DEFAULT_PAGE = 100
MAX_PAGE = 1000

OUTCOMES = {"success": pb.AUDIT_OUTCOME_SUCCESS, "failure": pb.AUDIT_OUTCOME_FAILURE,
            "denied": pb.AUDIT_OUTCOME_DENIED}


def require_admin(identity: Identity) -> Identity:
    if "admin" not in identity.scopes:
        raise errors.PermissionDenied("this method needs the admin scope", reason="ADMIN_REQUIRED",
                                      metadata={"scope": "admin"})
    return identity


# --- conversions ---------------------------------------------------------------------------


def _stamp(moment) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def event_to_proto(event: AuditEvent) -> pb.AuditEvent:
    details = Struct()
    details.update(dict(event.details))
    return pb.AuditEvent(
        id=str(event.id), event_time=_stamp(event.event_time), service=event.service, kind=event.kind,
        actor_user_id=event.actor_user_id, subject_user_id=event.subject_user_id, request_id=event.request_id,
        trace_id=event.trace_id, source=event.source, resource_id=event.resource_id,
        outcome=OUTCOMES.get(event.outcome, pb.AUDIT_OUTCOME_UNSPECIFIED), details=details)


def filter_from_proto(message: pb.AuditEventFilter, prefix: str = "filter.") -> AuditFilter:
    query = AuditFilter(
        start=timestamp_to_datetime(message.start_time, f"{prefix}start_time")
        if message.HasField("start_time") else None,
        end=timestamp_to_datetime(message.end_time, f"{prefix}end_time") if message.HasField("end_time") else None,
        kinds=tuple(message.kinds), actor_user_id=message.actor_user_id, subject_user_id=message.subject_user_id)
    errors.collect(query.violations(prefix))
    return query


def filter_to_proto(query: AuditFilter) -> pb.AuditEventFilter:
    message = pb.AuditEventFilter(kinds=list(query.kinds), actor_user_id=query.actor_user_id,
                                  subject_user_id=query.subject_user_id)
    if query.start is not None:
        message.start_time.CopyFrom(_stamp(query.start))
    if query.end is not None:
        message.end_time.CopyFrom(_stamp(query.end))
    return message


def deletion_to_proto(removed: Removed) -> pb.ServiceDataDeletion:
    return pb.ServiceDataDeletion(service=removed.service, removed=dict(removed.counts), kept=list(removed.kept))


# --- the servicers -------------------------------------------------------------------------


class AuditLogServicer(log_grpc.AuditLogServiceServicer):
    def __init__(self, audit_log: AuditLog) -> None:
        self._log = audit_log

    async def ListServiceAuditEvents(self, request, context):
        identity = require_admin(current_identity())
        query = filter_from_proto(request.filter)
        limit = page_size(request.page_size, default=DEFAULT_PAGE, maximum=MAX_PAGE)
        after = None
        if request.HasField("after"):
            moment = timestamp_to_datetime(request.after.event_time, "after.event_time")
            try:
                after = (moment, uuid.UUID(request.after.id))
            except ValueError:
                raise errors.InvalidArgument.for_field("after.id", "is not an audit event id") from None
        events, more = await self._log.list(identity.user_id, query, after=after, limit=limit)
        return log_api.ListServiceAuditEventsResponse(audit_events=[event_to_proto(e) for e in events], more=more)


DeleteUserData = Callable[[str], Awaitable[Sequence[Removed]]]


class UserDataServicer(user_data_grpc.UserDataServiceServicer):
    def __init__(self, delete: DeleteUserData) -> None:
        self._delete = delete

    async def DeleteUserData(self, request, context):
        identity = require_admin(current_identity())
        user_id = checked_user_id(request.user_id)
        if user_id == identity.user_id:
            raise not_yourself()
        removed = await self._delete(user_id)
        return pb.DeleteUserDataResponse(user_id=user_id, deletions=[deletion_to_proto(r) for r in removed])


def register(server, app, *, guarded: bool) -> list[str]:
    """Adds the internal administration services `app` has what for (only on servers that
    verify gateway identities: the gateway, which does not, must never expose them);
    returns their names."""
    if not guarded:
        return []
    names = []
    audit_log = getattr(app, "audit_log", None)
    if audit_log is not None and audit_log.queryable:
        log_grpc.add_AuditLogServiceServicer_to_server(AuditLogServicer(audit_log), server)
        names.append(AUDIT_LOG_SERVICE)
    delete = getattr(app, "delete_user_data", None)
    if delete is not None:
        user_data_grpc.add_UserDataServiceServicer_to_server(UserDataServicer(delete), server)
        names.append(USER_DATA_SERVICE)
    return names
