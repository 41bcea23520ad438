"""Every wall of the sandbox, each shown by an escape attempt that is contained with a clear
result while the service stays healthy and serves other sandboxes.

Network attempts go to loopback addresses only (127.0.0.1), never anywhere else.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
from google.protobuf import duration_pb2

from parley.sandbox.v1 import sandbox_pb2, sandbox_service_pb2
from services.sandbox.settings import PROJECT_DIR
from tests.sandbox.conftest import execute, healthy, new_sandbox

USER = "walls-user"
SECRET = "parley-test-secret-value-7d1f"


@pytest.fixture(scope="module")
async def sandbox(stub, as_user):
    # A secret in the service's own environment before the kernel starts: it must not reach the code.
    os.environ["PARLEY_TEST_SANDBOX_SECRET"] = SECRET
    created = await new_sandbox(stub, as_user(USER))
    yield created
    os.environ.pop("PARLEY_TEST_SANDBOX_SECRET", None)
    await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=created.id), metadata=as_user(USER))


async def run_json(stub, as_user, sandbox, code: str, **request) -> dict:
    ran = await execute(stub, as_user(USER), sandbox.id, code + "\nimport json as _j\nprint(_j.dumps(result))", **request)
    assert ran.result.exit_code == 0, ran.result.error.traceback
    return json.loads(ran.stdout.strip().splitlines()[-1])


def _postgres_socket_dir(url: str) -> str | None:
    hosts = parse_qs(urlsplit(url).query).get("host", [])
    return hosts[0] if hosts and hosts[0].startswith("/") else None


async def test_no_network_not_even_the_hosts_loopback(stub, as_user, sandbox, sandbox_server, postgres_server_url):
    # A listener on the host's loopback standing for PostgreSQL and Redis, plus their usual ports.
    listener = socket.create_server(("127.0.0.1", 0))
    ports = {"sandbox service": sandbox_server.port, "listener": listener.getsockname()[1],
             "postgresql": 5432, "redis": 6379}
    try:
        # The host reaches them (so refusal inside means something).
        socket.create_connection(("127.0.0.1", ports["listener"]), timeout=2).close()
        socket.create_connection(("127.0.0.1", ports["sandbox service"]), timeout=2).close()
        pg_socket = _postgres_socket_dir(postgres_server_url)
        result = await run_json(stub, as_user, sandbox, f"""
import socket, os
result = {{}}
for name, port in {ports!r}.items():
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        result[name] = "connected"
    except OSError as e:
        result[name] = type(e).__name__
pg = {pg_socket!r}
result["postgresql socket dir visible"] = bool(pg) and os.path.exists(pg)
result["interfaces"] = sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:])
""")
    finally:
        listener.close()
    for name in ports:
        assert result[name] == "ConnectionRefusedError", (name, result[name])
    assert result["postgresql socket dir visible"] is False
    assert result["interfaces"] == ["lo"]
    assert await healthy(stub, as_user("bystander"))


async def test_no_secrets_no_host_files_no_other_sandboxes(stub, as_user, sandbox, sandbox_server):
    other = await new_sandbox(stub, as_user("other-user"))
    try:
        await execute(stub, as_user("other-user"), other.id, "open('private.txt', 'w').write('theirs')")
        root = sandbox_server.app.sandboxes.settings.root_dir
        result = await run_json(stub, as_user, sandbox, f"""
import os, glob
def can_read(path):
    try:
        open(path, 'rb').read(1)
        return True
    except OSError as e:
        return type(e).__name__
environ = {{}}
for path in glob.glob('/proc/[0-9]*/environ'):
    try:
        environ[path] = open(path, 'rb').read().decode(errors='replace')
    except OSError:
        pass
result = {{
    "env_keys": sorted(os.environ),
    "secret_anywhere": any({SECRET!r} in text or "PARLEY_" in text for text in environ.values()),
    "proc1": environ.get('/proc/1/environ', ''),
    "shadow": can_read('/etc/shadow'),
    "etc": sorted(os.listdir('/etc')),
    "project": os.path.exists({str(PROJECT_DIR)!r}),
    "state_dir": os.path.exists({str(PROJECT_DIR / '.parley')!r}),
    "sandbox_root": os.path.exists({str(root)!r}),
    "other_sandbox": can_read({str(root / other.id / 'data' / 'private.txt')!r}),
    "work_dir": sorted(os.listdir('/mnt/data')),
    "pids": sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),
}}
""")
    finally:
        await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=other.id),
                                 metadata=as_user("other-user"))
    assert "PARLEY_TEST_SANDBOX_SECRET" not in result["env_keys"]
    assert not any(key.startswith("PARLEY_") or "KEY" in key or "SECRET" in key for key in result["env_keys"])
    assert result["secret_anywhere"] is False
    assert "PARLEY" not in result["proc1"]
    assert result["shadow"] == "FileNotFoundError"
    assert "shadow" not in result["etc"] and "passwd" in result["etc"]
    assert result["project"] is False and result["state_dir"] is False and result["sandbox_root"] is False
    assert result["other_sandbox"] == "FileNotFoundError"
    assert "private.txt" not in result["work_dir"]
    # Its own pid namespace: bubblewrap's init, the kernel, nothing of the host.
    assert len(result["pids"]) <= 4 and 1 in result["pids"]


async def test_read_only_system_fresh_tmp_only_the_working_directory_writable(stub, as_user, sandbox, sandbox_server):
    marker = Path(tempfile.gettempdir()) / f"parley-host-marker-{os.getpid()}"
    marker.write_text("host")
    # Written to /tmp inside: the host's /tmp must not see it.
    inside_tmp = Path("/tmp") / f"parley-sandbox-tmp-{os.getpid()}.txt"
    try:
        result = await run_json(stub, as_user, sandbox, f"""
import os
def try_write(path):
    try:
        with open(path, 'w') as f:
            f.write('x')
        return "written"
    except OSError as e:
        return type(e).__name__
result = {{name: try_write(path) for name, path in [
    ("root", "/escape"), ("usr", "/usr/escape"), ("etc", "/etc/escape"), ("runtime", "/opt/python/escape"),
    ("proc", "/proc/escape"), ("kernel sockets", "/run/kernel/escape"),
    ("work", "/mnt/data/ok.txt"), ("tmp", {str(inside_tmp)!r})]}}
for name, attempt in [("unlink socket", lambda: os.unlink("/run/kernel/k-1")),
                      ("plant symlink", lambda: os.symlink("/tmp", "/run/kernel/k-9"))]:
    try:
        attempt()
        result[name] = "done"
    except OSError as e:
        result[name] = type(e).__name__
result["host_marker_visible"] = os.path.exists({str(marker)!r})
result["uid"] = os.getuid()
result["cap_eff"] = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]
result["seccomp"] = [l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')][0]
result["no_new_privs"] = [l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0]
""")
        assert not inside_tmp.exists()
    finally:
        marker.unlink()
    # The kernel's socket directory is the service's once the kernel is up: no symlink swaps.
    assert result["unlink socket"] == "PermissionError" and result["plant symlink"] == "PermissionError"
    for name in ("root", "usr", "etc", "runtime", "proc", "kernel sockets"):
        assert result[name] in ("OSError", "PermissionError", "FileNotFoundError"), (name, result[name])
    assert result["work"] == "written" and result["tmp"] == "written"
    assert result["host_marker_visible"] is False
    assert result["cap_eff"] == "0000000000000000"
    assert result["seccomp"] == "2" and result["no_new_privs"] == "1"
    # On the host, the code's files belong to an unprivileged uid, not root.
    root = sandbox_server.app.sandboxes.settings.root_dir
    owner = (root / sandbox.id / "data" / "ok.txt").stat().st_uid
    assert owner != 0 and owner == result["uid"]


async def test_seccomp_denies_ptrace_mount_modules_keyctl_bpf_perf_and_raw_sockets(stub, as_user, sandbox):
    result = await run_json(stub, as_user, sandbox, """
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def call(number, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(number, *args)
    return os.strerror(ctypes.get_errno()) if rc == -1 else f"returned {rc}"
# x86_64 syscall numbers
result = {
    "ptrace": call(101, 16, 1, 0, 0),             # PTRACE_ATTACH to pid 1
    "mount": call(165, b"none", b"/mnt/data", b"tmpfs", 0, 0),
    "init_module": call(175, 0, 0, b""),
    "keyctl": call(250, 0, 0, 0, 0, 0),
    "bpf": call(321, 0, 0, 0),
    "perf_event_open": call(298, 0, 0, -1, -1, 0),
    "unshare": call(272, 0x10000000),             # CLONE_NEWUSER
}
for name, family, kind in [("raw_ipv4", socket.AF_INET, socket.SOCK_RAW), ("raw_ipv6", socket.AF_INET6, socket.SOCK_RAW),
                           ("packet", socket.AF_PACKET, socket.SOCK_RAW)]:
    try:
        socket.socket(family, kind).close()
        result[name] = "opened"
    except OSError as e:
        result[name] = type(e).__name__
""")
    for name in ("ptrace", "mount", "init_module", "keyctl", "bpf", "perf_event_open", "unshare"):
        assert result[name] == "Operation not permitted", (name, result[name])
    for name in ("raw_ipv4", "raw_ipv6", "packet"):
        assert result[name] == "PermissionError", (name, result[name])


async def test_a_fork_bomb_stops_at_the_process_limit(stub, as_user, sandbox):
    ran = await execute(stub, as_user(USER), sandbox.id, """
import os, time
started = 0
try:
    while True:
        if os.fork() == 0:
            while True:
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.05)
        started += 1
except OSError as e:
    print("fork refused after", started, type(e).__name__)
""", timeout=duration_pb2.Duration(seconds=20))
    assert "fork refused after" in ran.stdout, (ran.stdout, ran.result.note)
    assert int(ran.stdout.split()[3]) < 64
    # The children are gone and the kernel still answers with its state.
    after = await execute(stub, as_user(USER), sandbox.id, "import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]) <= 4)")
    assert after.stdout == "True\n" and not after.result.kernel_restarted
    assert await healthy(stub, as_user("bystander"))


async def test_an_infinite_loop_is_interrupted_and_the_kernel_keeps_its_state(stub, as_user, sandbox):
    md = as_user(USER)
    await execute(stub, md, sandbox.id, "survivor = 'yes'")
    ran = await execute(stub, md, sandbox.id, "while True:\n    pass", timeout=duration_pb2.Duration(seconds=2))
    assert ran.result.timed_out and not ran.result.kernel_died
    assert ran.result.error.name == "KeyboardInterrupt" and "time limit" in ran.result.note
    assert (await execute(stub, md, sandbox.id, "print(survivor)")).stdout == "yes\n"


async def test_a_loop_that_ignores_interrupts_is_killed(stub, as_user, sandbox):
    md = as_user(USER)
    ran = await execute(stub, md, sandbox.id, "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                              "while True:\n    pass", timeout=duration_pb2.Duration(seconds=1))
    assert ran.result.timed_out and ran.result.kernel_died and ran.result.exit_code < 0
    after = await execute(stub, md, sandbox.id, "print('fresh')")
    assert after.stdout == "fresh\n" and after.result.kernel_restarted
    assert await healthy(stub, as_user("bystander"))


async def test_the_cpu_limit_counts_cpu_not_waiting(stub, as_user, sandbox):
    md = as_user(USER)
    # Sleeping uses no CPU: only the wall limit (20 s here) could stop it; 1 s passes.
    slept = await execute(stub, md, sandbox.id, "import time\ntime.sleep(1)\nprint('slept')")
    assert slept.stdout == "slept\n" and not slept.result.timed_out


async def test_a_memory_bomb_kills_only_its_kernel(stub, as_user, sandbox):
    md = as_user(USER)
    ran = await execute(stub, md, sandbox.id, "hog = b'x' * (1 << 30)\nprint('allocated')")
    assert "allocated" not in ran.stdout
    assert ran.result.memory_exceeded, ran.result
    assert ran.result.kernel_died or ran.result.error.name == "MemoryError"
    assert "memory limit" in ran.result.note or "out of memory" in ran.result.note
    after = await execute(stub, md, sandbox.id, "print('back')")
    assert after.stdout == "back\n"
    assert await healthy(stub, as_user("bystander"))


async def test_gigabytes_of_output_are_truncated_and_stopped(stub, as_user, sandbox):
    md = as_user(USER)
    ran = await execute(stub, md, sandbox.id, "line = 'x' * 9999\nwhile True:\n    print(line)")
    limit = 64 * 1024
    assert ran.result.output_truncated
    assert "[output truncated: more than 65536 bytes" in ran.stdout
    assert len(ran.stdout.encode()) <= limit + 200
    # Stopped at the source, long before gigabytes: the loop ends with a clear error.
    assert ran.result.error.name == "OutputLimitExceeded" and not ran.result.kernel_died
    assert "interrupted" in ran.result.note
    assert (await execute(stub, md, sandbox.id, "print('quiet')")).stdout == "quiet\n"


async def test_one_file_cannot_outgrow_the_disk_limit(stub, as_user, sandbox):
    md = as_user(USER)
    ran = await execute(stub, md, sandbox.id, """
chunk = b'x' * (1 << 20)
with open('big.bin', 'wb') as f:
    for _ in range(256):
        f.write(chunk)
""")
    assert ran.result.error.name == "OSError" and "File too large" in ran.result.error.value
    await execute(stub, md, sandbox.id, "import os\nos.remove('big.bin')")


async def test_many_files_filling_the_disk_are_stopped(stub, as_user, sandbox):
    md = as_user(USER)
    ran = await execute(stub, md, sandbox.id, """
import time
chunk = b'x' * (1 << 20)
for i in range(400):
    with open(f'fill-{i}.bin', 'wb') as f:
        f.write(chunk)
    time.sleep(0.01)
""")
    assert ran.result.disk_exceeded and "disk limit" in ran.result.note
    # The upload path refuses what no longer fits.
    from tests.sandbox.conftest import upload
    from tests.conftest import expect_error
    import grpc
    reason, _ = await expect_error(upload(stub, md, sandbox.id, "more.bin", b"y" * (1 << 20)),
                                   grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert reason == "SANDBOX_DISK_FULL"
    cleaned = await execute(stub, md, sandbox.id, "import glob, os\nfor p in glob.glob('fill-*'): os.remove(p)\nprint('ok')")
    assert cleaned.stdout == "ok\n"
    assert await healthy(stub, as_user("bystander"))


async def test_symlinks_planted_by_the_code_do_not_lead_the_service_outside(stub, as_user, sandbox):
    md = as_user(USER)
    ran = await execute(stub, md, sandbox.id, "import os\nos.symlink('/etc/shadow', 'shadow-link')\n"
                                              "os.mkfifo('pipe')\nos.symlink('/', 'rootdir')")
    assert ran.result.exit_code == 0
    assert not [f for f in ran.result.output_files if f.path in ("shadow-link", "pipe")]
    from tests.sandbox.conftest import download
    from tests.conftest import expect_error
    import grpc
    for path in ("shadow-link", "pipe", "rootdir/etc/shadow"):
        await expect_error(download(stub, md, sandbox.id, path), grpc.StatusCode.NOT_FOUND)
    listed = await stub.ListSandboxFiles(sandbox_service_pb2.ListSandboxFilesRequest(sandbox_id=sandbox.id), metadata=md)
    assert not [f for f in listed.files if f.path.startswith("rootdir")]
    await execute(stub, md, sandbox.id, "import os\nfor p in ('shadow-link', 'pipe', 'rootdir'): os.remove(p)")


async def test_the_cpu_limit_interrupts_a_busy_loop_before_the_wall_limit(stub, as_user):
    md = as_user(USER)
    busy = await new_sandbox(stub, md, limits=sandbox_pb2.SandboxLimits(cpu_seconds=1, wall_time_seconds=120))
    try:
        ran = await execute(stub, md, busy.id, "while True:\n    pass")
        assert ran.result.timed_out and "CPU time limit (1s)" in ran.result.note
        assert ran.result.error.name == "KeyboardInterrupt"
    finally:
        await stub.DeleteSandbox(sandbox_service_pb2.DeleteSandboxRequest(sandbox_id=busy.id), metadata=md)


async def test_without_cgroups_rlimits_bound_memory_and_processes(identity_public_key, as_user):
    """Where the machine has no writable cgroup v1 controllers: RLIMIT_AS and RLIMIT_NPROC."""
    from services.sandbox.app import build_app
    from tests.conftest import channel_to, serve_app
    from tests.sandbox.conftest import sandbox_root, sandbox_settings
    from parley.sandbox.v1 import sandbox_service_pb2_grpc

    app = await build_app(sandbox_settings(sandbox_root(), cgroup_root=Path("/nonexistent-cgroups")))
    assert not app.sandboxes.walls.cgroups
    running = await serve_app(app, "sandbox", identity_public_key)
    try:
        async with channel_to(running) as channel:
            rstub = sandbox_service_pb2_grpc.SandboxServiceStub(channel)
            md = as_user(USER)
            box = await new_sandbox(rstub, md)
            hog = await execute(rstub, md, box.id, "hog = b'x' * (1 << 30)")
            assert hog.result.error.name == "MemoryError" and hog.result.memory_exceeded
            assert not hog.result.kernel_died and "out of memory" in hog.result.note
            bomb = await execute(rstub, md, box.id, """
import os, time
started = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        started += 1
except OSError as e:
    print("fork refused after", started, type(e).__name__)
""")
            assert "fork refused after" in bomb.stdout and int(bomb.stdout.split()[3]) < 64
            assert (await execute(rstub, md, box.id, "print('alive')")).stdout == "alive\n"
    finally:
        await running.stop(0.5)


async def test_kernels_die_with_the_service(identity_public_key, minter, tmp_path):
    """--die-with-parent: a sandbox service killed with SIGKILL leaves no kernel behind."""
    import signal
    import subprocess
    import sys

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from parley.sandbox.v1 import sandbox_service_pb2_grpc
    from services.sandbox import cgroups
    from tests.gateway.conftest import free_port
    from tests.sandbox.conftest import sandbox_root

    key_file = tmp_path / "identity.pub.pem"
    key_file.write_bytes(identity_public_key)
    port = free_port()
    root = sandbox_root()
    service = subprocess.Popen([sys.executable, "-m", "services.sandbox"], env={
        **os.environ, "PARLEY_SANDBOX_PORT": str(port), "PARLEY_IDENTITY_PUBLIC_KEY_FILE": str(key_file),
        "PARLEY_SANDBOX_DIR": str(root), "PARLEY_SANDBOX_UID_BASE": "390000", "PARLEY_LOG_LEVEL": "WARNING"})
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(300):
                try:
                    if (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status == 1:
                        break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
            own = sandbox_service_pb2_grpc.SandboxServiceStub(channel)
            md = minter.metadata(USER)
            box = await new_sandbox(own, md)
            ran = await execute(own, md, box.id, "import os\nprint(os.getpid())")
            assert ran.stdout.strip().isdigit()
        group = cgroups.Cgroup(Path("/sys/fs/cgroup"), box.id)
        kernel_pids = group.pids()
        assert len(kernel_pids) >= 2  # bubblewrap and the kernel, at least
    finally:
        service.send_signal(signal.SIGKILL)
        service.wait()
    for _ in range(300):
        alive = [pid for pid in kernel_pids if Path(f"/proc/{pid}").exists()]
        if not alive:
            break
        await asyncio.sleep(0.1)
    assert alive == [], f"processes outlived the service: {alive}"
    cgroups.remove_stale(Path("/sys/fs/cgroup"), lambda name: name == box.id)
