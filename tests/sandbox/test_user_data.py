"""The sandbox service's part of a user's data deletion (asked by the engine, relaying an
administrator's identity): every sandbox of the user goes, running kernel, files and
directory included; another user's stay; only the admin scope may ask; repeating it is
harmless."""

from __future__ import annotations

import logging
import uuid

import grpc

from parley.admin.v1 import audit_pb2
from parley.admin.v1 import user_data_service_pb2_grpc as ugrpc
from parley.sandbox.v1 import sandbox_pb2, sandbox_service_pb2
from tests.conftest import expect_error
from tests.sandbox.conftest import execute, new_sandbox

ADMIN = ("admin",)


async def test_every_sandbox_of_the_user_goes_and_nobody_elses(stub, sandbox_channel, as_user, sandbox_server, caplog):
    user, other = f"sbx-gone-{uuid.uuid4().hex[:8]}", f"sbx-stays-{uuid.uuid4().hex[:8]}"
    md, theirs = as_user(user, ("sandbox",)), as_user(other, ("sandbox",))
    running = await new_sandbox(stub, md, session_id="thread-1")
    await execute(stub, md, running.id, "x = 41\nopen('notes.txt', 'w').write('private')")
    idle = await new_sandbox(stub, md)
    kept = await new_sandbox(stub, theirs, session_id="thread-1")
    root = sandbox_server.app.sandboxes.settings.root_dir
    assert (root / running.id / "data" / "notes.txt").exists() and (root / idle.id).exists()
    users = ugrpc.UserDataServiceStub(sandbox_channel)
    try:
        with caplog.at_level(logging.INFO, logger="parley.audit"):
            reply = await users.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=user),
                                               metadata=as_user("sbx-admin", ADMIN))
        assert [(d.service, dict(d.removed)) for d in reply.deletions] == [("sandbox", {"sandboxes": 2})]
        assert not (root / running.id).exists() and not (root / idle.id).exists()
        for gone in (running, idle):
            await expect_error(stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(sandbox_id=gone.id), metadata=md),
                               grpc.StatusCode.NOT_FOUND)
        alive = await stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(sandbox_id=kept.id), metadata=theirs)
        assert alive.status == sandbox_pb2.SANDBOX_STATUS_READY
        event = next(r.fields["audit"] for r in caplog.records if r.name == "parley.audit")
        assert (event["kind"], event["actor_user_id"], event["subject_user_id"], event["details"]) == (
            "user_data.deleted", "sbx-admin", user, {"sandboxes": 2})
        again = await users.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=user),
                                           metadata=as_user("sbx-admin", ADMIN))
        assert dict(again.deletions[0].removed) == {"sandboxes": 0}
        await expect_error(users.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id=other), metadata=md),
                           grpc.StatusCode.PERMISSION_DENIED)
        _, fields = await expect_error(users.DeleteUserData(audit_pb2.DeleteUserDataRequest(user_id="bad id"),
                                                            metadata=as_user("sbx-admin", ADMIN)),
                                       grpc.StatusCode.INVALID_ARGUMENT)
        assert fields == ["user_id"]
    finally:
        await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=kept.id), metadata=theirs)
