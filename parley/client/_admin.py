"""The administration surface of `ParleyClient` (API keys with the admin scope): the audit
log of every service, listed or exported as JSON lines, and the deletion of one user's data
across every service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import datetime

from parley.admin.v1 import admin_service_pb2 as admin_api
from parley.admin.v1 import admin_service_pb2_grpc as admin_grpc
from parley.admin.v1 import audit_pb2


def audit_filter(*, kinds: Iterable[str] = (), actor: str = "", subject: str = "", since: datetime | None = None,
                 until: datetime | None = None) -> audit_pb2.AuditEventFilter:
    found = audit_pb2.AuditEventFilter(kinds=list(kinds), actor_user_id=actor, subject_user_id=subject)
    if since is not None:
        found.start_time.FromDatetime(since)
    if until is not None:
        found.end_time.FromDatetime(until)
    return found


class Admin:
    def __init__(self, channel, timeout: float | None) -> None:
        self.stub = admin_grpc.AdminServiceStub(channel)
        self._timeout = timeout

    async def list_audit_events(self, *, kinds: Iterable[str] = (), actor: str = "", subject: str = "",
                                since: datetime | None = None, until: datetime | None = None,
                                services: Iterable[str] = (), page_size: int = 100,
                                page_token: str = "") -> admin_api.ListAuditEventsResponse:
        """One page of the merged audit log, newest first."""
        return await self.stub.ListAuditEvents(admin_api.ListAuditEventsRequest(
            filter=audit_filter(kinds=kinds, actor=actor, subject=subject, since=since, until=until),
            services=list(services), page_size=page_size, page_token=page_token), timeout=self._timeout)

    async def audit_events(self, *, limit: int | None = None, page_size: int = 100,
                           **filters) -> AsyncIterator[audit_pb2.AuditEvent]:
        """Every matching event (at most `limit`), newest first, page by page."""
        token, seen = "", 0
        while True:
            page = await self.list_audit_events(page_size=page_size, page_token=token, **filters)
            for event in page.audit_events:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield event
            token = page.next_page_token
            if not token:
                return

    async def export_audit_events(self, *, kinds: Iterable[str] = (), actor: str = "", subject: str = "",
                                  since: datetime | None = None, until: datetime | None = None,
                                  services: Iterable[str] = ()) -> AsyncIterator[bytes]:
        """The matching events as JSON lines (one AuditEvent per line), in chunks."""
        call = self.stub.ExportAuditEvents(admin_api.ExportAuditEventsRequest(
            filter=audit_filter(kinds=kinds, actor=actor, subject=subject, since=since, until=until),
            services=list(services)))
        async for chunk in call:
            yield chunk.data

    async def delete_user_data(self, user_id: str, *, timeout: float | None = None) -> audit_pb2.DeleteUserDataResponse:
        """Removes every row and stored file of `user_id` in every service; safe to repeat."""
        return await self.stub.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=user_id),
                                              timeout=timeout or self._timeout)
