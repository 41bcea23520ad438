"""The shared bootstrap, exercised on a real service process: health, reflection, graceful
shutdown, and a clean refusal to start without its configuration."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(admin_url: str, public_key_path: str, port: int) -> dict[str, str]:
    return dict(os.environ, PARLEY_DATABASE_URL=admin_url, PARLEY_SESSIONS_PORT=str(port),
                PARLEY_IDENTITY_PUBLIC_KEY_FILE=public_key_path, PARLEY_SHUTDOWN_GRACE_SECONDS="2")


async def wait_serving(channel: grpc.aio.Channel, process: subprocess.Popen) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(300):
        assert process.poll() is None, "the service exited while starting"
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the service never became healthy")


async def test_health_reflection_and_graceful_shutdown(admin_url, identity_public_key, tmp_path):
    key_file = tmp_path / "identity.pub.pem"
    key_file.write_bytes(identity_public_key)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "services.sessions"], env=service_env(admin_url, str(key_file), port),
                               stderr=subprocess.PIPE)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(channel, process)
            health = health_pb2_grpc.HealthStub(channel)
            named = await health.Check(health_pb2.HealthCheckRequest(service="parley.sessions.v1.SessionService"))
            assert named.status == health_pb2.HealthCheckResponse.SERVING

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            services = [s.name async for r in responses for s in r.list_services_response.service]
            assert "parley.sessions.v1.SessionService" in services
            assert "grpc.health.v1.Health" in services

            watch = health.Watch(health_pb2.HealthCheckRequest(service="parley.sessions.v1.SessionService"))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            process.send_signal(signal.SIGTERM)
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await asyncio.to_thread(process.wait, 20) == 0
        log = process.stderr.read().decode()
        assert "shutting down" in log and "stopped" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_refuses_to_start_without_the_identity_key(admin_url):
    env = service_env(admin_url, "", free_port())
    env.pop("PARLEY_IDENTITY_PUBLIC_KEY_FILE")
    env.pop("PARLEY_IDENTITY_PUBLIC_KEY", None)
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.sessions"], env=env, capture_output=True, timeout=60
    )
    assert result.returncode == 2
    assert b"PARLEY_IDENTITY_PUBLIC_KEY" in result.stderr
    assert b"Traceback" not in result.stderr
