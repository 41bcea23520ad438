"""Code-interpreter benchmark: what a code_interpreter call adds to an assistants run, through
the gateway, against a plain run of the same assistant measured in the same run.

A fake OpenAI-compatible upstream (in this module, `--fake PORT`) answers model `bench/plain`
with a short text, and model `bench/code` first with a code_interpreter call
(`x = 6 * 7; print(x)`) and, once the tool's output is in the conversation, with the same
short text. So a code run is: the model's call, the sandbox execution, a second model call.

- plain: StreamRun on a new session, end to end (queued → done);
- code, warm: StreamRun on the same session each time (the session's sandbox and kernel
  already up): the code interpreter's overhead per call;
- code, cold: StreamRun on a new session each time (a new sandbox and kernel per run).

Processes: upstream, PostgreSQL, llm, sessions, files, sandbox, the engine, the gateway, and
this client. Run with `python -m bench.code_interpreter_runs`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench._common import (
    UNLIMITED_GATEWAY,
    ServiceProcess,
    admin_api_key,
    free_port,
    identity_env,
    percentile,
    stop_process,
)
from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as run_api
from parley.assistants.v1 import assistants_service_pb2_grpc as run_grpc
from parley.client import run_request
from services.runtime.db import start_embedded_postgres
from services.sandbox.settings import PROJECT_DIR

RUNS = {"plain": 30, "code, warm": 30, "code, cold": 8}
PROMPT = "What is six times seven?"
CODE = "x = 6 * 7\nprint(x)"
ANSWER = "Six times seven is 42."


# ---- the fake upstream -------------------------------------------------------------------------

def _sse(model: str, delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> bytes:
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
            "choices": [] if usage else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    if usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _answer(model: str, messages: list[dict]) -> list[bytes]:
    parts = [_sse(model, {"role": "assistant", "content": ""})]
    if model.endswith("code") and messages[-1].get("role") != "tool":
        call = {"index": 0, "id": f"call_{time.monotonic_ns()}", "type": "function",
                "function": {"name": "code_interpreter", "arguments": json.dumps({"code": CODE})}}
        parts += [_sse(model, {"tool_calls": [call]}), _sse(model, finish="tool_calls")]
    else:
        parts += [_sse(model, {"content": word + " "}) for word in ANSWER.split()]
        parts.append(_sse(model, finish="stop"))
    parts.append(_sse(model, usage={"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}))
    parts.append(b"data: [DONE]\n\n")
    return parts


def fake_upstream(port: int) -> None:
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for part in _answer(body["model"], body["messages"]):
            await response.write(part)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---- the measurement ---------------------------------------------------------------------------

async def one_run(runs, metadata, assistant_id: str, session_id: str = "") -> tuple[float, str]:
    """StreamRun end to end: (seconds from the call to `done`, the session's id)."""
    request = run_api.StreamRunRequest(run=run_request(assistant_id, PROMPT, session_id=session_id))
    started = time.perf_counter()
    session, status, logs = session_id, 0, ""
    async for response in runs.StreamRun(request, metadata=metadata):
        event = response.event
        kind = event.WhichOneof("event")
        if kind == "run_status_changed" and not session:
            session = event.run_status_changed.session_id
        elif kind == "tool_call_delta":
            logs += event.tool_call_delta.code_logs
        elif kind == "done":
            status = event.done.status
    elapsed = time.perf_counter() - started
    assert status == apb.RUN_STATUS_COMPLETED, f"run ended {apb.RunStatus.Name(status)}"
    assert logs in ("", "42\n"), logs  # a code run printed what the snippet prints
    return elapsed, session


async def measure(gateway_port: int, metadata) -> dict[str, list[float]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel:
        runs = run_grpc.AssistantServiceStub(channel)
        plain = await runs.CreateAssistant(run_api.CreateAssistantRequest(name="plain", model="bench/plain"),
                                           metadata=metadata)
        code = await runs.CreateAssistant(run_api.CreateAssistantRequest(
            name="code", model="bench/code", tools=[apb.Tool(code_interpreter=apb.CodeInterpreterTool())]),
            metadata=metadata)
        for _ in range(3):  # warm up: connections, pools, the model catalog
            await one_run(runs, metadata, plain.id)
        _, warm_session = await one_run(runs, metadata, code.id)
        results: dict[str, list[float]] = {name: [] for name in RUNS}
        # Interleaved, so load on the shared machine falls on both sides alike.
        for i in range(max(RUNS.values())):
            if i < RUNS["plain"]:
                results["plain"].append((await one_run(runs, metadata, plain.id))[0])
            if i < RUNS["code, warm"]:
                results["code, warm"].append((await one_run(runs, metadata, code.id, warm_session))[0])
            if i < RUNS["code, cold"]:
                results["code, cold"].append((await one_run(runs, metadata, code.id))[0])
        return results


async def main() -> None:
    if not shutil.which("bwrap") or not (PROJECT_DIR / ".venv-sandbox" / "bin" / "python").exists():
        print("skipped: bubblewrap or .venv-sandbox missing (`make install`)")
        return
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "bench.code_interpreter_runs", "--fake", str(upstream_port)],
                                cwd=PROJECT_DIR)
    tmp = Path(tempfile.mkdtemp(prefix="parley-bench-ci-"))
    tmp.chmod(0o711)
    try:
        admin_url = os.environ.get("PARLEY_DATABASE_URL") or start_embedded_postgres(tmp / "pg")
        models = tmp / "models.yaml"
        models.write_text("providers:\n  bench:\n    type: openai_compatible\n"
                          f"    base_url: http://127.0.0.1:{upstream_port}/v1\n")
        common = {"PARLEY_DATABASE_URL": admin_url, "PARLEY_REDIS_URL": "", **identity_env(tmp)}
        async with ServiceProcess("llm", {**common, "PARLEY_LLM_WARM_EMBEDDINGS": "false",
                                          "PARLEY_MODELS_FILE": str(models)}) as llm, \
                ServiceProcess("sessions", common) as sessions, \
                ServiceProcess("files", {**common, "PARLEY_LLM_TARGET": f"127.0.0.1:{llm.port}",
                                         "PARLEY_FILES_STORAGE_DIR": str(tmp / "files")}) as files, \
                ServiceProcess("sandbox", {**common, "PARLEY_SANDBOX_DIR": str(tmp / "sandboxes")}) as sandbox:
            targets = {"PARLEY_LLM_TARGET": f"127.0.0.1:{llm.port}",
                       "PARLEY_SESSIONS_TARGET": f"127.0.0.1:{sessions.port}",
                       "PARLEY_FILES_TARGET": f"127.0.0.1:{files.port}",
                       "PARLEY_SANDBOX_TARGET": f"127.0.0.1:{sandbox.port}"}
            async with ServiceProcess("assistants", {**common, **targets}) as engine:
                gateway_env = {**common, **targets, **UNLIMITED_GATEWAY,
                               "PARLEY_ASSISTANTS_TARGET": f"127.0.0.1:{engine.port}"}
                async with ServiceProcess("gateway", gateway_env) as gateway:
                    metadata = (("authorization", f"Bearer {admin_api_key(common)}"),)
                    results = await measure(gateway.port, metadata)
    finally:
        stop_process(upstream)
        shutil.rmtree(tmp, ignore_errors=True)

    plain50 = percentile(results["plain"], 0.5)
    print("| run (StreamRun end to end, through the gateway) | runs | p50 | p99 | added at p50 over plain | ratio |")
    print("|---|---|---|---|---|---|")
    for name, times in results.items():
        p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
        added = "" if name == "plain" else f"{(p50 - plain50) * 1e3:+.1f} ms"
        print(f"| {name} | {len(times)} | {p50 * 1e3:.1f} ms | {p99 * 1e3:.1f} ms | {added} | {p50 / plain50:.2f}× |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--fake":
        fake_upstream(int(sys.argv[2]))
    else:
        asyncio.run(main())
