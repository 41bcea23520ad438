"""`parley.client`'s admin surface and the `parley audit` / `parley admin` commands against the
real gateway and backends: listing and exporting the audit log, deleting a user's data (the
command asks unless --yes), and keys made by `create-admin-key` are audited too."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from parley.cli._main import moment
from parley.client import ParleyClient, error_details
from tests.gateway.audit_helpers import flush
from tests.gateway.test_client_and_cli import run_cli


@pytest.fixture
async def servers(gateway, sessions_backend, llm_backend, files_backend):
    return gateway, sessions_backend, llm_backend, files_backend


async def test_the_client_lists_exports_and_deletes(gateway, make_key, servers):
    admin = await make_key(f"client-admin-{uuid.uuid4().hex[:6]}", ["admin"])
    user = f"client-user-{uuid.uuid4().hex[:6]}"
    secret = await make_key(user, ["sessions"])
    async with ParleyClient(f"127.0.0.1:{gateway.port}", secret) as theirs:
        session = await theirs.sessions.create("mine")
        await theirs.sessions.delete(session.id)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await theirs.admin.list_audit_events()
        assert error_details(refused.value).reason == "ADMIN_REQUIRED"
    await flush(*servers)
    async with ParleyClient(f"127.0.0.1:{gateway.port}", admin) as parley:
        events = [e async for e in parley.admin.audit_events(subject=user, page_size=1)]
        assert [e.kind for e in events] == ["session.deleted", "api_key.created"]
        one = [e async for e in parley.admin.audit_events(subject=user, limit=1, kinds=["api_key.created"],
                                                          since=datetime.now(timezone.utc) - timedelta(hours=1))]
        assert [e.kind for e in one] == ["api_key.created"]
        exported = b"".join([c async for c in parley.admin.export_audit_events(subject=user, services=["sessions"])])
        assert [json.loads(line)["kind"] for line in exported.decode().splitlines()] == ["session.deleted"]
        reply = await parley.admin.delete_user_data(user)
        assert {d.service: dict(d.removed) for d in reply.deletions}["sessions"]["sessions"] == 0  # deleted before
        assert {d.service: dict(d.removed) for d in reply.deletions}["gateway"] == {"api_keys": 1}


async def test_the_cli_lists_exports_and_deletes_after_asking(gateway, make_key, servers, tmp_path):
    admin = await make_key(f"cli-admin-{uuid.uuid4().hex[:6]}", ["admin"])
    user = f"cli-user-{uuid.uuid4().hex[:6]}"
    await make_key(user, ["sessions"])
    await flush(*servers)
    env = {"PARLEY_TARGET": f"127.0.0.1:{gateway.port}", "PARLEY_API_KEY": admin}
    listed = await run_cli("audit", "list", "--user", user, "--kind", "api_key.created", "--since", "1h", env=env)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 1 and "api_key.created" in listed.stdout and user in listed.stdout
    exported = await run_cli("audit", "export", "--user", user, "--service", "gateway", "--kind", "api_key.created",
                             env=env)
    assert [json.loads(line)["subject_user_id"] for line in exported.stdout.splitlines()] == [user]
    # Not on a terminal and without --yes: nothing happens.
    refused = await run_cli("admin", "delete-user", user, env=env, stdin="")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    deleted = await run_cli("admin", "delete-user", user, "--yes", env=env)
    assert deleted.returncode == 0, deleted.stderr
    lines = dict(line.split(None, 1) for line in deleted.stdout.splitlines())
    assert lines["gateway"] == "api_keys 1" and lines["assistants"].startswith("not configured")
    bad = await run_cli("admin", "delete-user", "not a user!", "--yes", env=env)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
    missing = await run_cli("admin", "delete-user", env=env)
    assert missing.returncode == 2


def test_times_on_the_command_line():
    now = datetime.now(timezone.utc)
    assert abs((now - moment("7d")) - timedelta(days=7)) < timedelta(seconds=5)
    assert abs((now - moment("90m")) - timedelta(minutes=90)) < timedelta(seconds=5)
    assert moment("2025-01-31T12:00") == datetime(2025, 1, 31, 12, tzinfo=timezone.utc)
    assert moment("2025-01-31T12:00:00Z") == datetime(2025, 1, 31, 12, tzinfo=timezone.utc)
    with pytest.raises(Exception, match="not a time"):
        moment("last tuesday")


async def test_keys_made_from_the_shell_are_audited_too(gateway, admin_url, make_key, servers):
    user = f"root-{uuid.uuid4().hex[:6]}"
    made = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.gateway", "create-admin-key",
                                                    "--user", user], env={**os.environ, "PARLEY_DATABASE_URL": admin_url},
                                   capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    from tests.gateway.conftest import sensitive

    sensitive(made.stdout.strip())
    auditor = await make_key(f"auditor-{uuid.uuid4().hex[:6]}", ["admin"])
    async with ParleyClient(f"127.0.0.1:{gateway.port}", auditor) as parley:
        events = [e async for e in parley.admin.audit_events(subject=user)]
    assert [(e.kind, e.actor_user_id) for e in events] == [("api_key.created", user)]
    assert dict(events[0].details)["caller"] == "cli" and dict(events[0].details)["scopes"] == "admin"
