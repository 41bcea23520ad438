"""The sandbox service as a service: identity, isolation between users, bad input with the
right status, one execution at a time, idle expiry, health and reflection, and the refusal
when the walls are missing."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from parley.sandbox.v1 import sandbox_pb2, sandbox_service_pb2, sandbox_service_pb2_grpc
from services.sandbox.app import build_app
from tests.conftest import channel_to, expect_error, serve_app
from tests.sandbox.conftest import download, execute, new_sandbox, sandbox_root, sandbox_settings, upload

USER = "service-user"


@pytest.fixture
async def sandbox(stub, as_user):
    created = await new_sandbox(stub, as_user(USER))
    yield created
    try:
        await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=created.id), metadata=as_user(USER))
    except grpc.aio.AioRpcError:
        pass


async def test_callers_without_a_minted_identity_are_refused(stub, sandbox):
    request = sandbox_service_pb2.GetSandboxRequest(sandbox_id=sandbox.id)
    reason, _ = await expect_error(stub.GetSandbox(request), grpc.StatusCode.UNAUTHENTICATED)
    assert reason == "IDENTITY_MISSING"
    await expect_error(stub.GetSandbox(request, metadata=(("x-parley-identity", "forged"),)),
                       grpc.StatusCode.UNAUTHENTICATED)
    call = stub.ExecuteCode(sandbox_service_pb2.ExecuteCodeRequest(sandbox_id=sandbox.id, code="print(1)"))
    await expect_error(call.read(), grpc.StatusCode.UNAUTHENTICATED)


async def test_another_users_sandbox_is_not_found(stub, as_user, sandbox):
    mallory = as_user("mallory")
    for call in (
        stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(sandbox_id=sandbox.id), metadata=mallory),
        stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=sandbox.id), metadata=mallory),
        stub.ListSandboxFiles(sandbox_service_pb2.ListSandboxFilesRequest(sandbox_id=sandbox.id), metadata=mallory),
        execute(stub, mallory, sandbox.id, "print(1)"),
        upload(stub, mallory, sandbox.id, "x.txt", b"x"),
        download(stub, mallory, sandbox.id, "x.txt"),
    ):
        reason, _ = await expect_error(call, grpc.StatusCode.NOT_FOUND)
        assert reason == "SANDBOX_NOT_FOUND"
    # Exactly like one that does not exist.
    reason, _ = await expect_error(stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(
        sandbox_id="00000000-0000-0000-0000-000000000000"), metadata=as_user(USER)), grpc.StatusCode.NOT_FOUND)
    assert reason == "SANDBOX_NOT_FOUND"
    # The owner's sandbox is untouched.
    assert (await stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(sandbox_id=sandbox.id),
                                  metadata=as_user(USER))).user_id == USER


async def test_bad_input_gets_invalid_argument_naming_the_field(stub, as_user, sandbox):
    md = as_user(USER)
    reason, fields = await expect_error(execute(stub, md, sandbox.id, "x = 1\n" * 200_000), grpc.StatusCode.INVALID_ARGUMENT)
    assert reason == "CODE_TOO_LARGE" and fields == ["code"]
    _, fields = await expect_error(execute(stub, md, sandbox.id, "   "), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields == ["code"]
    for path in ("../escape.txt", "a/../../b", "/etc/passwd", "a//b", "./a"):
        reason, fields = await expect_error(upload(stub, md, sandbox.id, path, b"x"), grpc.StatusCode.INVALID_ARGUMENT)
        assert fields == ["metadata.path"], path
    reason, _ = await expect_error(download(stub, md, sandbox.id, "../../etc/passwd"), grpc.StatusCode.INVALID_ARGUMENT)
    assert reason == "PATH_TRAVERSAL"
    await expect_error(stub.ListSandboxFiles(sandbox_service_pb2.ListSandboxFilesRequest(
        sandbox_id=sandbox.id, directory="../.."), metadata=md), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_error(download(stub, md, sandbox.id, "missing.txt"), grpc.StatusCode.NOT_FOUND)
    _, fields = await expect_error(new_sandbox(stub, md, limits=sandbox_pb2.SandboxLimits(memory_bytes=1 << 40)),
                                   grpc.StatusCode.INVALID_ARGUMENT)
    assert fields == ["limits.memory_bytes"]
    await expect_error(new_sandbox(stub, md, idle_timeout=duration_pb2.Duration(seconds=10 * 86400)),
                       grpc.StatusCode.INVALID_ARGUMENT)
    # The sandbox still works after all that.
    assert (await execute(stub, md, sandbox.id, "print('ok')")).stdout == "ok\n"


async def test_two_executions_at_once_the_second_is_aborted(stub, as_user, sandbox):
    md = as_user(USER)
    first = asyncio.create_task(execute(stub, md, sandbox.id, "import time\ntime.sleep(2)\nprint('first')"))
    # Wait until the first one holds the sandbox.
    for _ in range(600):
        got = await stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(sandbox_id=sandbox.id), metadata=md)
        if got.status == sandbox_pb2.SANDBOX_STATUS_BUSY:
            break
        await asyncio.sleep(0.05)
    assert got.status == sandbox_pb2.SANDBOX_STATUS_BUSY
    reason, _ = await expect_error(execute(stub, md, sandbox.id, "print('second')"), grpc.StatusCode.ABORTED)
    assert reason == "SANDBOX_BUSY"
    assert (await first).stdout == "first\n"


async def test_a_cancelled_execution_is_stopped_before_the_next(stub, as_user, sandbox):
    md = as_user(USER)
    await execute(stub, md, sandbox.id, "kept = 'still here'")
    call = stub.ExecuteCode(sandbox_service_pb2.ExecuteCodeRequest(
        sandbox_id=sandbox.id, code="import time\nprint('started', flush=True)\ntime.sleep(60)"), metadata=md)
    async for event in call:
        if event.WhichOneof("event") == "stdout":
            break
    call.cancel()
    for _ in range(200):
        try:
            ran = await execute(stub, md, sandbox.id, "print(kept)")
            break
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.ABORTED
            await asyncio.sleep(0.1)
    # The sleep was interrupted, not the kernel killed: the variable survived.
    assert ran.stdout == "still here\n" and not ran.result.kernel_restarted


async def test_a_sandbox_expires_after_its_idle_timeout(stub, as_user):
    md = as_user(USER)
    short = await new_sandbox(stub, md, idle_timeout=duration_pb2.Duration(seconds=1))
    await execute(stub, md, short.id, "open('f.txt', 'w').write('x')")
    for _ in range(100):
        got = await stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(sandbox_id=short.id), metadata=md)
        if got.status == sandbox_pb2.SANDBOX_STATUS_EXPIRED:
            break
        await asyncio.sleep(0.1)
    assert got.status == sandbox_pb2.SANDBOX_STATUS_EXPIRED
    reason, _ = await expect_error(execute(stub, md, short.id, "print(1)"), grpc.StatusCode.FAILED_PRECONDITION)
    assert reason == "SANDBOX_EXPIRED"
    # Its session gets a new sandbox.
    again = await new_sandbox(stub, md)
    assert again.id != short.id
    await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=again.id), metadata=md)


async def test_delete_removes_the_sandbox_and_its_files(stub, as_user, sandbox_server):
    md = as_user(USER)
    doomed = await new_sandbox(stub, md)
    await execute(stub, md, doomed.id, "open('f.txt', 'w').write('x')")
    directory = sandbox_server.app.sandboxes.settings.root_dir / doomed.id
    assert directory.exists()
    await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=doomed.id), metadata=md)
    assert not directory.exists()
    await expect_error(stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(sandbox_id=doomed.id), metadata=md),
                       grpc.StatusCode.NOT_FOUND)


async def test_delete_by_session_removes_only_the_callers_sandbox_of_that_session(stub, as_user, sandbox_server):
    md, other = as_user(USER), as_user("another-session-user")
    doomed = await new_sandbox(stub, md, session_id="deleted-thread")
    kept = await new_sandbox(stub, md, session_id="kept-thread")
    theirs = await new_sandbox(stub, other, session_id="deleted-thread")
    try:
        directory = sandbox_server.app.sandboxes.settings.root_dir / doomed.id
        assert directory.exists()
        await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(session_id="deleted-thread"), metadata=md)
        assert not directory.exists()
        await expect_error(stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(sandbox_id=doomed.id), metadata=md),
                           grpc.StatusCode.NOT_FOUND)
        for sandbox, who in ((kept, md), (theirs, other)):
            alive = await stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(sandbox_id=sandbox.id), metadata=who)
            assert alive.status == sandbox_pb2.SANDBOX_STATUS_READY
        # A session without a live sandbox: NOT_FOUND (the engine ignores it).
        await expect_error(stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(session_id="deleted-thread"),
                                              metadata=md), grpc.StatusCode.NOT_FOUND)
    finally:
        for sandbox, who in ((kept, md), (theirs, other)):
            await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=sandbox.id), metadata=who)


async def test_health_and_reflection(sandbox_channel):
    health = health_pb2_grpc.HealthStub(sandbox_channel)
    for service in ("", "parley.sandbox.v1.SandboxService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(sandbox_channel)
    responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    async for response in responses:
        names = [s.name for s in response.list_services_response.service]
        assert "parley.sandbox.v1.SandboxService" in names
        break


async def test_without_bubblewrap_executions_are_refused_naming_what_to_install(identity_public_key, as_user):
    app = await build_app(sandbox_settings(sandbox_root(), bwrap=None))
    running = await serve_app(app, "sandbox", identity_public_key)
    try:
        async with channel_to(running) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
            degraded = await health.Check(health_pb2.HealthCheckRequest(service="parley.sandbox.v1.SandboxService"))
            assert degraded.status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = sandbox_service_pb2_grpc.SandboxServiceStub(channel)
            created = await new_sandbox(stub, as_user(USER))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await execute(stub, as_user(USER), created.id, "print(1)")
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "bubblewrap" in caught.value.details() and "apt-get install bubblewrap" in caught.value.details()
    finally:
        await running.stop(0.5)


async def test_insecure_mode_runs_code_without_walls(identity_public_key, as_user):
    app = await build_app(sandbox_settings(sandbox_root(), bwrap=None, insecure=True))
    running = await serve_app(app, "sandbox", identity_public_key)
    try:
        async with channel_to(running) as channel:
            stub = sandbox_service_pb2_grpc.SandboxServiceStub(channel)
            created = await new_sandbox(stub, as_user(USER))
            first = await execute(stub, as_user(USER), created.id, "value = 20")
            ran = await execute(stub, as_user(USER), created.id, "print(value + 22)")
            assert first.result.exit_code == 0 and ran.stdout == "42\n"
            await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=created.id),
                                     metadata=as_user(USER))
    finally:
        await running.stop(0.5)



async def test_a_sandbox_directory_the_sandbox_uids_cannot_reach_is_refused_naming_the_fix(identity_public_key, as_user):
    import os
    import tempfile
    from pathlib import Path

    if os.geteuid() != 0:
        pytest.skip("only root gives each sandbox its own uid")  # the service's own uid reaches its own files
    hidden = Path(tempfile.mkdtemp(prefix="parley-test-sandbox-hidden-"))  # mode 0700
    app = await build_app(sandbox_settings(hidden / "sandboxes"))
    running = await serve_app(app, "sandbox", identity_public_key)
    try:
        async with channel_to(running) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            degraded = await health.Check(health_pb2.HealthCheckRequest(service="parley.sandbox.v1.SandboxService"))
            assert degraded.status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = sandbox_service_pb2_grpc.SandboxServiceStub(channel)
            created = await new_sandbox(stub, as_user(USER))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await execute(stub, as_user(USER), created.id, "print(1)")
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"chmod o+x {hidden}" in caught.value.details()
    finally:
        await running.stop(0.5)
        import shutil
        shutil.rmtree(hidden, ignore_errors=True)


def test_the_gateway_does_not_route_the_sandbox():
    """Only the run engine calls the sandbox; through the gateway its methods are unknown."""
    from parley.sandbox.v1 import sandbox_service_pb2 as sandbox_api
    from services.gateway.routes import build_routes, service_names

    routes = build_routes()
    sandbox_service = sandbox_api.DESCRIPTOR.services_by_name["SandboxService"]
    assert sandbox_service.full_name not in service_names()
    assert not [m for m in routes if m.startswith(f"/{sandbox_service.full_name}/")]
    assert any(m.startswith("/parley.assistants.v1.AssistantService/") for m in routes)
