"""Helpers for the audit and deletion tests: write every service's queued audit events now
(instead of waiting for the flushers), and read the merged log through AdminService."""

from __future__ import annotations

import json

from google.protobuf.json_format import MessageToDict

from parley.admin.v1 import admin_service_pb2 as aapi
from parley.admin.v1 import admin_service_pb2_grpc as agrpc
from parley.admin.v1 import audit_pb2
from tests.gateway.conftest import bearer


async def flush(*servers) -> None:
    """Writes the queued events of in-process servers (their RunningServer)."""
    for server in servers:
        await server.app.audit_log.flush()


async def audit_events(channel, admin_secret: str, *, services=(), page_size: int = 1000,
                       **filters) -> list[audit_pb2.AuditEvent]:
    """Every event matching `filters` (AuditEventFilter fields), newest first, all pages."""
    stub = agrpc.AdminServiceStub(channel)
    found, token = [], ""
    while True:
        page = await stub.ListAuditEvents(aapi.ListAuditEventsRequest(
            filter=audit_pb2.AuditEventFilter(**filters), services=list(services), page_size=page_size,
            page_token=token), metadata=bearer(admin_secret))
        found.extend(page.audit_events)
        token = page.next_page_token
        if not token:
            return found


def as_json(event: audit_pb2.AuditEvent) -> str:
    return json.dumps(MessageToDict(event, preserving_proto_field_name=True))


def details(event: audit_pb2.AuditEvent) -> dict:
    return MessageToDict(event.details)
