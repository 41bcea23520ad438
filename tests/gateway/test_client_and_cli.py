"""The async client and the `parley` command against a real gateway, and the key
bootstrap commands of `python -m services.gateway`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import grpc
import pytest

from parley.client import ParleyClient, error_details, service_config
from tests.gateway.conftest import sensitive

# A PNG signature and header: enough for the files service to take the upload as an image.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")


@pytest.fixture
async def client(gateway, make_key):
    secret = await make_key("client-user", ["admin"])
    async with ParleyClient(f"127.0.0.1:{gateway.port}", secret) as parley:
        yield parley


async def test_client_sessions_round_trip(client):
    session = await client.sessions.create("from the client", metadata={"k": "v"})
    await client.sessions.add_message(session.id, "hello")
    assert [m.content[0].text async for m in client.sessions.messages(session.id)] == ["hello"]
    listed = await client.sessions.list()
    assert session.id in [s.id for s in listed.sessions]
    assert b"hello" in await client.sessions.export(session.id, markdown=True)
    await client.sessions.delete(session.id)


async def test_client_manages_keys(client, gateway):
    created = await client.keys.create("ci", ["sessions"], requests_per_minute=10)
    sensitive(created.secret)
    assert created.api_key.rate_limits.requests_per_minute == 10
    async with ParleyClient(f"127.0.0.1:{gateway.port}", created.secret) as other:
        await other.sessions.list()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await other.keys.list()
    assert error_details(caught.value).reason == "SCOPE_MISSING"
    rotated = await client.keys.rotate(created.api_key.id)
    sensitive(rotated.secret)
    revoked = await client.keys.revoke(created.api_key.id)
    assert revoked.revoke_time.seconds > 0
    assert created.api_key.id in [k.id for k in await client.keys.list()]


async def test_client_error_details(client):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.sessions.get("not-an-id")
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT and "session_id" in details.field_violations


def test_idempotent_methods_are_retried_by_the_channel():
    config = json.loads(service_config())
    policy = config["methodConfig"][0]
    names = {(n["service"], n["method"]) for n in policy["name"]}
    assert ("parley.llm.v1.LLMService", "ListModels") in names
    assert ("parley.sessions.v1.SessionService", "GetSession") in names
    assert ("parley.llm.v1.LLMService", "Generate") not in names  # not idempotent: never repeated
    assert policy["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


async def run_cli(*args, env: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "parley.cli", *args], env={**os.environ, **env}, input=stdin,
        capture_output=True, text=True, timeout=60,
    )


async def test_cli_sessions_and_keys(gateway, make_key, tmp_path):
    secret = await make_key("cli-user", ["admin"])
    env = {"PARLEY_TARGET": f"127.0.0.1:{gateway.port}", "PARLEY_API_KEY": secret}
    created = await run_cli("sessions", "create", "cli", "session", env=env)
    assert created.returncode == 0, created.stderr
    session_id = created.stdout.strip()
    listed = await run_cli("sessions", "list", env=env)
    assert session_id in listed.stdout and "cli session" in listed.stdout
    as_json = await run_cli("--json", "sessions", "show", session_id, env=env)
    assert json.loads(as_json.stdout)["id"] == session_id
    key = await run_cli("keys", "create", "from", "cli", "--scope", "sessions", env=env)
    assert key.returncode == 0 and key.stdout.startswith("pk_live_"), key.stderr
    sensitive(key.stdout.strip())
    keys = await run_cli("keys", "list", env=env)
    assert "from cli" in keys.stdout and key.stdout.strip() not in keys.stdout


async def test_cli_reads_the_dev_key_file_and_reports_errors(gateway, make_key, tmp_path):
    secret = await make_key("cli-user", ["sessions"])
    (tmp_path / ".parley").mkdir()
    (tmp_path / ".parley" / "dev-api-key").write_text(secret + "\n")
    env = {"PARLEY_TARGET": f"127.0.0.1:{gateway.port}", "PARLEY_API_KEY": "",
           "PARLEY_STATE_DIR": str(tmp_path / ".parley")}
    listed = await run_cli("sessions", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    denied = await run_cli("keys", "list", env=env)
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr
    assert secret not in denied.stderr


async def test_bootstrap_admin_key_and_dev_key_commands(gateway, admin_url, tmp_path):
    env = {**os.environ, "PARLEY_DATABASE_URL": admin_url}
    made = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.gateway", "create-admin-key",
                                                    "--user", "root-admin"], env=env, capture_output=True, text=True,
                                   timeout=120)
    assert made.returncode == 0, made.stderr
    admin = sensitive(made.stdout.strip())
    async with ParleyClient(f"127.0.0.1:{gateway.port}", admin) as parley:
        created = await parley.keys.create("delegated", ["admin"])  # an admin key may pass admin on
        sensitive(created.secret)
    path = tmp_path / "dev-api-key"
    first = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.gateway", "dev-key", "--file",
                                                     str(path)], env=env, capture_output=True, text=True, timeout=120)
    second = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.gateway", "dev-key", "--file",
                                                      str(path)], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    sensitive(first.stdout.strip())
    assert first.stdout == second.stdout == path.read_text()  # reused while it works
    assert oct(path.stat().st_mode & 0o777) == "0o600"


async def test_upload_streams_through_the_gateway_with_progress(client, tmp_path):
    from parley.files.v1 import files_pb2

    path = tmp_path / "picture.png"
    data = PNG + bytes(range(256)) * 13_000  # ~3.3 MB: four chunks
    path.write_bytes(data)
    seen: list[tuple[int, int]] = []
    uploaded = await client.files.upload(path, purpose=files_pb2.FILE_PURPOSE_VISION,
                                         progress=lambda sent, total: seen.append((sent, total)))
    assert uploaded.size_bytes == len(data) and uploaded.filename == "picture.png"
    assert [s for s, _ in seen] == sorted(s for s, _ in seen) and seen[-1] == (len(data), len(data))
    assert len(seen) == 4
    listed = await client.files.list()
    assert uploaded.id in [f.id for f in listed.files]


async def test_oversized_upload_chunk_is_refused_at_the_gateway(client):
    from parley.files.v1 import files_pb2
    from parley.files.v1 import files_service_pb2 as fapi

    async def requests():
        yield fapi.UploadFileRequest(metadata=fapi.UploadFileMetadata(filename="big.bin",
                                                                      purpose=files_pb2.FILE_PURPOSE_VISION))
        yield fapi.UploadFileRequest(chunk=b"x" * (2 * 1024 * 1024))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.files.stub.UploadFile(requests())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(caught.value).reason == "REQUEST_TOO_LARGE"


async def test_cli_uploads_with_a_progress_bar(gateway, make_key, tmp_path):
    secret = await make_key("cli-user", ["files"])
    path = tmp_path / "cli.png"
    path.write_bytes(PNG + b"hello from the cli\n" * 100_000)
    env = {"PARLEY_TARGET": f"127.0.0.1:{gateway.port}", "PARLEY_API_KEY": secret}
    result = await run_cli("files", "upload", str(path), "--purpose", "vision", "--progress", env=env)
    assert result.returncode == 0, result.stderr
    assert "100.0%" in result.stderr and "cli.png" in result.stderr
    listed = await run_cli("files", "list", env=env)
    assert result.stdout.strip() in listed.stdout


async def test_cli_chat_streams_tokens_and_lists_models(gateway, make_key):
    secret = await make_key("cli-user", ["llm"])
    env = {"PARLEY_TARGET": f"127.0.0.1:{gateway.port}", "PARLEY_API_KEY": secret}
    chat = await run_cli("chat", "-m", "local/echo", "streamed", "to", "the", "terminal", env=env)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() == "streamed to the terminal"
    assert "local/echo" in chat.stderr and "out" in chat.stderr  # the usage line
    piped = await run_cli("chat", "-m", "local/echo", "-q", env=env, stdin="from standard input\n")
    assert piped.stdout.strip() == "from standard input" and not piped.stderr
    models = await run_cli("models", env=env)
    assert "local/echo" in models.stdout


async def test_client_token_stream_helper(client):
    stream = client.llm.stream("one two three", model="local/echo")
    assert "".join([piece async for piece in stream]) == "one two three"
    assert stream.finish.usage.output_tokens == 3
    answer = await client.llm.generate("hello", model="local/echo")
    assert answer.message.content[0].text == "hello"
    assert "local/echo" in [m.id for m in await client.llm.list_models()]


async def test_cli_usage_reports_the_callers_calls(gateway, make_key):
    secret = await make_key("usage-user", ["llm"])
    env = {"PARLEY_TARGET": f"127.0.0.1:{gateway.port}", "PARLEY_API_KEY": secret}
    assert (await run_cli("chat", "-m", "local/echo", "-q", "count", "these", "tokens", env=env)).returncode == 0
    for _ in range(50):  # the llm service records usage in batches
        report = await run_cli("--json", "usage", "--by", "model", env=env)
        assert report.returncode == 0, report.stderr
        rows = json.loads(report.stdout).get("rows", [])
        if rows:
            break
        await asyncio.sleep(0.2)
    assert rows[0]["model"] == "local/echo" and int(rows[0]["request_count"]) == 1
    text = await run_cli("usage", env=env)
    assert "total" in text.stdout and "1 calls" in text.stdout
