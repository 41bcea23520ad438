"""The code_interpreter tool executor (services/assistants/tools/code_interpreter.py) against
the real sandbox service: what it streams, what the model reads, waiting for a busy sandbox,
and a sandbox that refuses executions. The end-to-end test through the engine and the real
files service is tests/assistants/test_e2e_code_interpreter.py; here the run's files are an
in-memory RunFiles (the engine's port), since these cases store none."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from services.assistants.tools.base import (
    RunScope, StoredFile, ToolCall, ToolContext, ToolDeps, ToolError, ToolOutputDelta,
)
from services.assistants.tools.code_interpreter import (
    CodeInterpreterExecutor, model_output, parse_code, sandbox_filename,
)
from parley.sandbox.v1 import sandbox_pb2, sandbox_service_pb2
from services.sandbox.app import build_app
from tests.conftest import serve_app
from tests.sandbox.conftest import execute, new_sandbox, sandbox_root, sandbox_settings


@dataclasses.dataclass
class Caller:
    user_id: str
    minter: object

    def metadata(self, scopes):
        return self.minter.metadata(self.user_id, scopes)


class MemoryFiles:
    def __init__(self) -> None:
        self.stored: dict[str, StoredFile] = {}

    async def read(self, file_id: str) -> StoredFile:
        return self.stored[file_id]

    async def write(self, filename: str, data: bytes, *, media_type: str = "") -> str:
        file_id = f"file-{len(self.stored) + 1}"
        self.stored[file_id] = StoredFile(file_id, filename, data)
        return file_id


def context_for(user: str, session: str, minter, files=None, file_ids=()) -> tuple[ToolContext, list]:
    deltas: list[ToolOutputDelta] = []

    async def emit(delta):
        deltas.append(delta)

    return ToolContext(run=RunScope(run_id="run-1", session_id=session, assistant_id="asst-1", user_id=user,
                                    code_interpreter_file_ids=tuple(file_ids)),
                       identity=Caller(user, minter), files=files or MemoryFiles(), emit=emit,
                       workdir=None), deltas


def executor_for(server) -> CodeInterpreterExecutor:
    return CodeInterpreterExecutor(f"127.0.0.1:{server.port}", ToolDeps(identities=None, files=None))


def call(code: str) -> ToolCall:
    import json

    return ToolCall(id="call-1", name="code_interpreter", arguments=json.dumps({"code": code}))


async def test_the_tool_streams_logs_and_the_model_reads_output_and_tracebacks(sandbox_server, minter):
    executor = executor_for(sandbox_server)
    try:
        context, deltas = context_for("tool-user", "session-a", minter)
        outcome = await executor.execute(call("value = 40\nprint('value set')"), context)
        assert [d.code_input for d in deltas if d.code_input] == ["value = 40\nprint('value set')"]
        assert "".join(d.code_logs for d in deltas) == "value set\n"
        assert outcome.output == "value set" and outcome.code_input.startswith("value = 40")
        # Same session, same kernel.
        context, _ = context_for("tool-user", "session-a", minter)
        outcome = await executor.execute(call("print(value + 2)\nvalue / 0"), context)
        assert outcome.output.startswith("42\n") and "ZeroDivisionError" in outcome.output
        assert "ZeroDivisionError" in outcome.code_outputs[0].logs
        # Another session is another kernel.
        context, _ = context_for("tool-user", "session-b", minter)
        outcome = await executor.execute(call("print('value' in globals())"), context)
        assert outcome.output == "False"
    finally:
        await executor.aclose()


async def test_input_files_are_copied_once_and_outputs_stored(sandbox_server, minter):
    executor = executor_for(sandbox_server)
    files = MemoryFiles()
    csv_id = await files.write("../../etc/report.csv", b"a,b\n1,2\n")
    try:
        context, _ = context_for("tool-user", "session-files", minter, files, [csv_id])
        outcome = await executor.execute(call(
            "import pandas as pd\nprint(pd.read_csv('/mnt/data/report.csv')['b'].sum())\n"
            "open('/mnt/data/out.txt', 'w').write('made')"), context)
        assert outcome.output.startswith("2\n") and "sandbox:/mnt/data/out.txt" in outcome.output
        [produced] = outcome.produced_file_ids
        assert files.stored[produced].filename == "out.txt" and files.stored[produced].data == b"made"
        # The second call finds the input already there (no second copy, no clash).
        context, _ = context_for("tool-user", "session-files", minter, files, [csv_id])
        outcome = await executor.execute(call("import os\nprint(sorted(os.listdir('/mnt/data')))"), context)
        assert outcome.output.startswith("['out.txt', 'report.csv']")
    finally:
        await executor.aclose()


async def test_a_busy_sandbox_is_waited_for(sandbox_server, stub, minter):
    executor = executor_for(sandbox_server)
    md = minter.metadata("tool-user", ())
    sandbox = await new_sandbox(stub, md, session_id="session-busy")
    try:
        running = asyncio.create_task(execute(stub, md, sandbox.id, "import time\ntime.sleep(2)\nprint('first')"))
        for _ in range(200):
            got = await stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(sandbox_id=sandbox.id), metadata=md)
            if got.status == sandbox_pb2.SANDBOX_STATUS_BUSY:
                break
            await asyncio.sleep(0.05)
        context, _ = context_for("tool-user", "session-busy", minter)
        outcome = await executor.execute(call("print('second')"), context)
        assert outcome.output == "second" and (await running).stdout == "first\n"
    finally:
        await executor.aclose()


async def test_a_sandbox_without_walls_is_a_tool_error_naming_what_to_install(identity_public_key, minter):
    running = await serve_app(await build_app(sandbox_settings(sandbox_root(), bwrap=None)), "sandbox",
                              identity_public_key)
    executor = executor_for(running)
    try:
        context, _ = context_for("tool-user", "session-x", minter)
        with pytest.raises(ToolError, match="bubblewrap"):
            await executor.execute(call("print(1)"), context)
    finally:
        await executor.aclose()
        await running.stop(0.5)


def test_arguments_and_filenames():
    assert parse_code('{"code": "print(1)"}') == "print(1)"
    assert parse_code("print(2)") == "print(2)"  # raw code, as some models send it
    with pytest.raises(ToolError):
        parse_code('{"source": 3}')
    taken: set[str] = set()
    assert sandbox_filename("../../etc/passwd", "file-1", taken) == "passwd"
    assert sandbox_filename("a/b\\c:d.csv", "file-2", taken) == "c_d.csv"
    assert sandbox_filename("data.csv", "file-3", {"data.csv"}) == "data-file-3.csv"
    assert sandbox_filename("..", "file-4", taken) == "file-4"
    result = sandbox_pb2.ExecutionResult(output_truncated=True, note="The output exceeded 10 bytes and was truncated.")
    assert model_output("x" * 10, result, [], 0).endswith("[note] The output exceeded 10 bytes and was truncated.")
    assert model_output("", sandbox_pb2.ExecutionResult(), [], 0) == "(the code ran and printed nothing)"
