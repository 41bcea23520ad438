"""Sandbox benchmark: a trivial snippet executed cold (new sandbox and kernel) and warm (an
existing kernel), p50 and p99, against two baselines measured in the same run — the same
service with the walls off (PARLEY_SANDBOX_INSECURE=1: no bubblewrap, no seccomp; running at
the same time, runs interleaved) and a bare
`python3 -c` process per snippet (what a fresh-interpreter-per-execution design costs) —
and the memory of an idle sandbox. Run with `python -m bench.sandbox_exec`."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import grpc

from bench._common import ServiceProcess, percentile, summary_ms
from parley.sandbox.v1 import sandbox_service_pb2 as api
from parley.sandbox.v1 import sandbox_service_pb2_grpc as api_grpc
from services.runtime.identity import IdentityMinter, generate_private_key_pem, public_key_pem
from services.sandbox.settings import PROJECT_DIR

WARM_RUNS = 300
COLD_RUNS = 12
IDLE_SANDBOXES = 6
SNIPPET = "x = 6 * 7\nprint(x)"


async def execute(stub, md, sandbox_id: str) -> None:
    output = ""
    async for event in stub.ExecuteCode(api.ExecuteCodeRequest(sandbox_id=sandbox_id, code=SNIPPET), metadata=md):
        output += event.stdout
    assert output == "42\n", output


async def measure(ports: dict[str, int], minter: IdentityMinter) -> dict[str, dict]:
    """Both services at once, their runs interleaved, so the shared machine's load falls on
    both alike."""
    md = minter.metadata("bench")
    channels = {label: grpc.aio.insecure_channel(f"127.0.0.1:{port}") for label, port in ports.items()}
    try:
        stubs = {label: api_grpc.SandboxServiceStub(channel) for label, channel in channels.items()}
        results: dict[str, dict] = {label: {"cold": [], "warm": []} for label in ports}
        for _ in range(COLD_RUNS):
            for label, stub in stubs.items():
                started = time.perf_counter()
                sandbox = await stub.CreateSandbox(api.CreateSandboxRequest(), metadata=md)
                await execute(stub, md, sandbox.id)
                results[label]["cold"].append(time.perf_counter() - started)
                await stub.DeleteSandbox(api.DeleteSandboxRequest(sandbox_id=sandbox.id), metadata=md)
        warm_ids = {}
        for label, stub in stubs.items():
            warm_ids[label] = (await stub.CreateSandbox(api.CreateSandboxRequest(), metadata=md)).id
            await execute(stub, md, warm_ids[label])
        for _ in range(WARM_RUNS):
            for label, stub in stubs.items():
                started = time.perf_counter()
                await execute(stub, md, warm_ids[label])
                results[label]["warm"].append(time.perf_counter() - started)
        for label, stub in stubs.items():
            await stub.DeleteSandbox(api.DeleteSandboxRequest(sandbox_id=warm_ids[label]), metadata=md)
            results[label]["idle"] = await idle_memory(stub, md)
        return results
    finally:
        for channel in channels.values():
            await channel.close()


def _cgroup_bytes(sandbox_id: str) -> tuple[int, int]:
    """(memory.usage_in_bytes, sum of VmRSS) of one sandbox's cgroup, or (0, 0) without one."""
    group = Path("/sys/fs/cgroup/memory/parley-sandbox") / sandbox_id
    try:
        usage = int((group / "memory.usage_in_bytes").read_text())
        pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except OSError:
        return 0, 0
    rss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return usage, rss


async def idle_memory(stub, md) -> tuple[float, float] | None:
    ids = []
    for _ in range(IDLE_SANDBOXES):
        sandbox = await stub.CreateSandbox(api.CreateSandboxRequest(), metadata=md)
        await execute(stub, md, sandbox.id)
        ids.append(sandbox.id)
    await asyncio.sleep(1.0)
    readings = [_cgroup_bytes(i) for i in ids]
    for sandbox_id in ids:
        await stub.DeleteSandbox(api.DeleteSandboxRequest(sandbox_id=sandbox_id), metadata=md)
    if not all(usage for usage, _ in readings):
        return None
    return (sum(u for u, _ in readings) / len(readings), sum(r for _, r in readings) / len(readings))


def bare_python(runs: int) -> list[float]:
    python = str(PROJECT_DIR / ".venv-sandbox" / "bin" / "python")
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        out = subprocess.run([python, "-c", SNIPPET], capture_output=True, text=True, check=True).stdout
        times.append(time.perf_counter() - started)
        assert out == "42\n"
    return times


async def main() -> None:
    if not shutil.which("bwrap") or not (PROJECT_DIR / ".venv-sandbox" / "bin" / "python").exists():
        print("skipped: bubblewrap or .venv-sandbox missing (`make install`)")
        return
    private = generate_private_key_pem()
    minter = IdentityMinter(private)
    work = Path(tempfile.mkdtemp(prefix="parley-bench-sandbox-"))
    work.chmod(0o711)
    (work / "identity.pub.pem").write_bytes(public_key_pem(private))
    env = {"PARLEY_IDENTITY_PUBLIC_KEY_FILE": str(work / "identity.pub.pem")}
    try:
        async with ServiceProcess("sandbox", {**env, "PARLEY_SANDBOX_DIR": str(work / "on"),
                                              "PARLEY_SANDBOX_UID_BASE": "400000"}) as walls_on, \
                ServiceProcess("sandbox", {**env, "PARLEY_SANDBOX_DIR": str(work / "off"),
                                           "PARLEY_SANDBOX_UID_BASE": "401000", "PARLEY_SANDBOX_INSECURE": "1",
                                           "PARLEY_SANDBOX_BWRAP": "/nonexistent/bwrap"}) as walls_off:
            results = await measure({"walls on": walls_on.port, "walls off": walls_off.port}, minter)
        bare = bare_python(COLD_RUNS * 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    on, off = results["walls on"], results["walls off"]
    print(f"snippet: {SNIPPET!r}; {COLD_RUNS} cold runs, {WARM_RUNS} warm runs each\n")
    print("| execution | walls on (bubblewrap + seccomp + cgroups) | walls off (same service, insecure) | bare `python3 -c` |")
    print("|---|---|---|---|")
    print(f"| cold: CreateSandbox + first ExecuteCode | {summary_ms(on['cold'])} | {summary_ms(off['cold'])} | "
          f"{summary_ms(bare)} |")
    print(f"| warm: ExecuteCode in a live kernel | {summary_ms(on['warm'])} | {summary_ms(off['warm'])} | |")
    print()
    ratio = lambda a, b: percentile(a, 0.5) / percentile(b, 0.5)  # noqa: E731
    print(f"walls on / walls off at p50: cold {ratio(on['cold'], off['cold']):.2f}×, "
          f"warm {ratio(on['warm'], off['warm']):.2f}×")
    print(f"warm kernel / fresh `python3 -c` at p50: {ratio(on['warm'], bare):.3f}×; "
          f"cold sandbox / fresh `python3 -c`: {ratio(on['cold'], bare):.2f}×")
    for label in ("walls on", "walls off"):
        idle = results[label]["idle"]
        if idle:
            print(f"memory per idle sandbox ({label}, after one execution, mean of {IDLE_SANDBOXES}): "
                  f"cgroup usage {idle[0] / 2**20:.1f} MiB, RSS {idle[1] / 2**20:.1f} MiB")
        else:
            print(f"memory per idle sandbox ({label}): no cgroup to read")


if __name__ == "__main__":
    asyncio.run(main())
