"""The code_interpreter tool: the model's code runs in the session's sandbox (one per
session, created on first use, its Python kernel keeping variables between calls).

Before running, the run's code-interpreter files (tool_resources and message attachments)
are copied into the sandbox's working directory under their filenames, once per sandbox.
What the code prints streams to the run's clients as code_logs deltas; images it displays
and files it writes are stored in the files service as the run's user and come back as
image outputs and produced files (file_path annotations). Errors in the code, limits hit
and a restarted kernel are results for the model, not run failures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import grpc

from parley.sandbox.v1 import sandbox_pb2, sandbox_service_pb2, sandbox_service_pb2_grpc
from services.assistants.tools.base import (
    CodeOutput, FunctionSpec, ToolCall, ToolContext, ToolDeps, ToolError, ToolExecutor, ToolOutcome, ToolOutputDelta,
)

log = logging.getLogger("parley.assistants.code_interpreter")

FUNCTION_NAME = "code_interpreter"
WORK_DIR = "/mnt/data"
# What the model reads back: the sandbox already truncates output (with a marker); this
# bounds the whole text, traceback and notes included.
MAX_MODEL_OUTPUT_CHARS = 32_000
MAX_PRODUCED_FILES = 20
MAX_PRODUCED_FILE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024),
                   ("grpc.max_send_message_length", 16 * 1024 * 1024)]
UPLOAD_CHUNK = 1024 * 1024
# How long a call waits for the session's sandbox to finish another execution.
BUSY_WAIT_SECONDS = 10.0
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]")

DESCRIPTION = (
    "Runs Python 3 code in a stateful Jupyter kernel and returns what it printed. Variables, imports and files "
    f"persist between calls in this conversation. Files the user attached are in {WORK_DIR}; save files you "
    f"create to {WORK_DIR} so the user can download them (refer to them as sandbox:{WORK_DIR}/<name>). "
    "numpy, pandas and matplotlib are installed; plt.show() returns the chart as an image. There is no internet "
    "access and nothing can be installed."
)


def sandbox_filename(filename: str, file_id: str, taken: set[str]) -> str:
    """A safe working-directory name for an input file: its own name when it can be, never
    a path, never clashing with another input."""
    name = _UNSAFE_NAME.sub("_", os.path.basename(filename.replace("\\", "/"))).strip(" .") or file_id
    if name in taken:
        stem, dot, extension = name.partition(".")
        name = f"{stem}-{file_id}{dot}{extension}"
    return name[:200]


def parse_code(arguments: str) -> str:
    """The code from the call's arguments: {"code": "..."} as offered, or the raw code some
    models send instead."""
    try:
        parsed = json.loads(arguments)
    except (json.JSONDecodeError, ValueError):
        return arguments
    if isinstance(parsed, dict):
        code = parsed.get("code", parsed.get("input"))
        if isinstance(code, str):
            return code
        raise ToolError('code_interpreter expects {"code": "<python source>"}')
    if isinstance(parsed, str):
        return parsed
    raise ToolError('code_interpreter expects {"code": "<python source>"}')


class CodeInterpreterExecutor(ToolExecutor):
    kind = "code_interpreter"

    def __init__(self, target: str, deps: ToolDeps) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = sandbox_service_pb2_grpc.SandboxServiceStub(self._channel)
        self._deps = deps

    def function(self, tool: Mapping[str, Any]) -> FunctionSpec:
        return FunctionSpec(
            name=FUNCTION_NAME, description=DESCRIPTION,
            parameters={"type": "object",
                        "properties": {"code": {"type": "string", "description": "The Python code to run."}},
                        "required": ["code"]},
        )

    async def aclose(self) -> None:
        await self._channel.close()

    async def execute(self, call: ToolCall, context: ToolContext) -> ToolOutcome:
        code = parse_code(call.arguments)
        if not code.strip():
            raise ToolError("code_interpreter was called without code")
        metadata = context.identity.metadata(("sandbox",))
        try:
            sandbox = await self._stub.CreateSandbox(
                sandbox_service_pb2.CreateSandboxRequest(
                    session_id=context.run.session_id,
                    metadata={"session_id": context.run.session_id[:512], "assistant_id": context.run.assistant_id[:512]},
                ),
                metadata=metadata, timeout=30)
            await self._copy_inputs(sandbox.id, context)
            await context.emit(ToolOutputDelta(code_input=code))
            result, logs = await self._run_when_free(sandbox.id, code, context)
        except grpc.aio.AioRpcError as error:
            raise self._tool_error(error) from None
        return await self._outcome(code, sandbox.id, result, logs, context)

    @staticmethod
    def _tool_error(error: grpc.aio.AioRpcError) -> Exception:
        """Failures the model should hear about become ToolErrors; anything else fails the run."""
        code = error.code()
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            return ToolError(f"The code interpreter is unavailable on this server: {error.details()}")
        if code == grpc.StatusCode.ABORTED:
            return ToolError("Another code_interpreter call is still running in this conversation; try again.")
        if code == grpc.StatusCode.UNAVAILABLE:
            # The transport's own words ("Socket closed") mean nothing to a model.
            return ToolError("The code interpreter could not run the code (unavailable): its sandbox stopped or "
                             "cannot be reached, and variables and files of this conversation may be lost; try again.")
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED):
            return ToolError(f"The code interpreter could not run the code ({code.name.lower()}): {error.details()}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return ToolError(f"The code interpreter refused the code: {error.details()}")
        return error

    async def _copy_inputs(self, sandbox_id: str, context: ToolContext) -> None:
        """Copies the run's code-interpreter files into the working directory, once: the
        sandbox records each file's source id, so later calls skip what is already there."""
        if not context.run.code_interpreter_file_ids:
            return
        metadata = context.identity.metadata(("sandbox",))
        present, taken, token = set(), set(), ""
        while True:
            page = await self._stub.ListSandboxFiles(
                sandbox_service_pb2.ListSandboxFilesRequest(sandbox_id=sandbox_id, page_size=1000, page_token=token),
                metadata=metadata, timeout=30)
            for file in page.files:
                taken.add(file.path)
                if file.source_file_id:
                    present.add(file.source_file_id)
            token = page.next_page_token
            if not token:
                break
        for file_id in context.run.code_interpreter_file_ids:
            if file_id in present:
                continue
            stored = await context.files.read(file_id)
            name = sandbox_filename(stored.filename, file_id, taken)
            taken.add(name)
            await self._upload(sandbox_id, name, stored.data, file_id, context)

    async def _upload(self, sandbox_id: str, path: str, data: bytes, source_file_id: str, context: ToolContext) -> None:
        async def requests():
            yield sandbox_service_pb2.UploadSandboxFileRequest(metadata=sandbox_service_pb2.UploadSandboxFileMetadata(
                sandbox_id=sandbox_id, path=path, source_file_id=source_file_id))
            for start in range(0, len(data), UPLOAD_CHUNK):
                yield sandbox_service_pb2.UploadSandboxFileRequest(chunk=data[start:start + UPLOAD_CHUNK])

        await self._stub.UploadSandboxFile(requests(), metadata=context.identity.metadata(("sandbox",)), timeout=120)

    async def _run_when_free(self, sandbox_id: str, code: str,
                             context: ToolContext) -> tuple[sandbox_pb2.ExecutionResult, str]:
        """Runs the code, waiting a little while the sandbox is still busy (a cancelled run's
        last execution stopping, say) before telling the model."""
        deadline = time.monotonic() + BUSY_WAIT_SECONDS
        while True:
            try:
                return await self._run(sandbox_id, code, context)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.ABORTED or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.25)

    async def _run(self, sandbox_id: str, code: str, context: ToolContext) -> tuple[sandbox_pb2.ExecutionResult, str]:
        logs: list[str] = []
        result: sandbox_pb2.ExecutionResult | None = None
        timeout = context.timeout if context.timeout and context.timeout > 0 else None
        call = self._stub.ExecuteCode(sandbox_service_pb2.ExecuteCodeRequest(sandbox_id=sandbox_id, code=code),
                                      metadata=context.identity.metadata(("sandbox",)),
                                      timeout=timeout + 5 if timeout else None)
        async for event in call:
            kind = event.WhichOneof("event")
            if kind in ("stdout", "stderr"):
                text = getattr(event, kind)
                logs.append(text)
                await context.emit(ToolOutputDelta(code_logs=text))
            elif kind == "result":
                result = event.result
        if result is None:
            raise ToolError("The code interpreter ended without a result; try again.")
        return result, "".join(logs)

    async def _outcome(self, code: str, sandbox_id: str, result: sandbox_pb2.ExecutionResult, logs: str,
                       context: ToolContext) -> ToolOutcome:
        images: list[CodeOutput] = []
        produced: list[str] = []
        paths: list[str] = []
        for number, display in enumerate(result.displays, start=1):
            if not display.media_type.startswith("image/") or display.media_type == "image/svg+xml":
                continue
            extension = "png" if display.media_type == "image/png" else "jpg"
            file_id = await context.files.write(f"image-{number}.{extension}", display.data,
                                                media_type=display.media_type)
            await context.emit(ToolOutputDelta(code_image_file_id=file_id))
            images.append(CodeOutput(image_file_id=file_id))
        written: list[str] = []
        for file in result.output_files:
            if len(produced) >= MAX_PRODUCED_FILES:
                break
            if any(part.startswith(".") for part in file.path.split("/")) or file.size_bytes > MAX_PRODUCED_FILE_BYTES:
                continue  # caches and dotfiles the libraries write, or too large to keep
            data = file.data if file.inlined else await self._download(sandbox_id, file.path, context)
            file_id = await context.files.write(os.path.basename(file.path), data, media_type=file.media_type)
            produced.append(file_id)
            paths.append(file.path)
            # The path alone: the answer links it and the engine resolves the link to this file
            # (a FilePath annotation). An id here would be Parley's internal one, shown to
            # people in the step's logs where the REST edge gives files other ids.
            written.append(f"sandbox:{WORK_DIR}/{file.path}")
        # The logs output carries what the model must read besides the printed text (the
        # traceback, the sandbox's note, the files written), as the hosted tool's logs do:
        # the step's logs are what the next model call is given.
        text = model_output(logs, result, written, images=0, placeholder=False)
        outputs = [CodeOutput(logs=text), *images] if text else images
        return ToolOutcome(output=model_output(logs, result, written, images=len(images)), code_input=code,
                           code_outputs=tuple(outputs), produced_file_ids=tuple(produced),
                           produced_paths=tuple(paths))

    async def _download(self, sandbox_id: str, path: str, context: ToolContext) -> bytes:
        chunks = []
        async for message in self._stub.DownloadSandboxFile(
                sandbox_service_pb2.DownloadSandboxFileRequest(sandbox_id=sandbox_id, path=path),
                metadata=context.identity.metadata(("sandbox",)), timeout=120):
            if message.WhichOneof("data") == "chunk":
                chunks.append(message.chunk)
        return b"".join(chunks)


def model_output(logs: str, result: sandbox_pb2.ExecutionResult, written: list[str], images: int,
                 placeholder: bool = True) -> str:
    """What the model reads: the output, the exception, what was drawn and saved, and the
    sandbox's note (a limit hit, a restarted kernel), bounded. Without a placeholder, a run
    that produced nothing gives ""."""
    parts = []
    if result.kernel_restarted:
        parts.append(f"[note] {result.note}")
    if logs:
        parts.append(logs.rstrip("\n"))
    if result.HasField("error"):
        parts.append(result.error.traceback or f"{result.error.name}: {result.error.value}")
    if images:
        parts.append(f"[{images} image(s) displayed and shown to the user]")
    if written:
        parts.append("Files written:\n" + "\n".join(written))
    if result.note and not result.kernel_restarted:
        parts.append(f"[note] {result.note}")
    text = "\n".join(parts)
    if not text:
        return "(the code ran and printed nothing)" if placeholder else ""
    if len(text) > MAX_MODEL_OUTPUT_CHARS:
        text = text[:MAX_MODEL_OUTPUT_CHARS] + "\n[output truncated]"
    return text


def build(deps: ToolDeps) -> CodeInterpreterExecutor:
    target = deps.components.get("sandbox_target") or os.environ.get("PARLEY_SANDBOX_TARGET") or "127.0.0.1:50055"
    return CodeInterpreterExecutor(str(target), deps)
