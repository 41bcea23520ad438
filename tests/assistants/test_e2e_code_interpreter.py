"""The code interpreter end to end, through the real gateway: the scripted fake vendor calls
code_interpreter, the real engine process runs the code in the real sandbox service (its
bubblewrap, its kernel), and the results come back as step details, streamed code logs, an
image file a client downloads from the files service, and tool outputs the model reads.

A variable defined in one run is read by the next run in the same session (one sandbox per
session); an attached CSV is read by pandas; an error in the code is a result, not a failure.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from parley.assistants.v1 import assistants_pb2 as apb
from parley.assistants.v1 import assistants_service_pb2 as api
from parley.assistants.v1 import assistants_service_pb2_grpc as agrpc
from parley.files.v1 import files_pb2 as fpb
from parley.files.v1 import files_service_pb2 as fapi
from parley.files.v1 import files_service_pb2_grpc as fgrpc
from parley.sandbox.v1 import sandbox_service_pb2 as sbapi
from parley.sandbox.v1 import sandbox_service_pb2_grpc as sbgrpc
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from parley.sessions.v1 import sessions_pb2 as spb
from tests.assistants.helpers import collect, user_message
from tests.conftest import channel_to

CSV = b"city,temp\nLisbon,21\nOslo,7\nCairo,33\n"


@pytest.fixture(scope="module")
def ci(code_interpreter_stack):
    """The gateway and the sandbox of the code-interpreter stack (tests/assistants/conftest.py)."""
    return code_interpreter_stack.gateway, code_interpreter_stack.sandbox


@pytest.fixture
async def client(ci, stack, user):
    gateway, _ = ci
    key = await stack.api_key(user())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    md = (("authorization", f"Bearer {key}"),)
    yield agrpc.AssistantServiceStub(channel), fgrpc.FileServiceStub(channel), md
    await channel.close()


@pytest.fixture
async def sandboxes(ci):
    _, sandbox = ci
    channel = channel_to(sandbox)
    yield sbgrpc.SandboxServiceStub(channel)
    await channel.close()


async def upload(files, md, name: str, data: bytes) -> str:
    async def requests():
        yield fapi.UploadFileRequest(metadata=fapi.UploadFileMetadata(
            filename=name, media_type="text/csv", purpose=fpb.FILE_PURPOSE_ASSISTANTS, size_bytes=len(data)))
        yield fapi.UploadFileRequest(chunk=data)

    return (await files.UploadFile(requests(), metadata=md)).id


async def download(files, md, file_id: str) -> tuple[fpb.File, bytes]:
    file, chunks = None, []
    async for message in files.DownloadFile(fapi.DownloadFileRequest(file_id=file_id), metadata=md):
        if message.WhichOneof("data") == "file":
            file = message.file
        else:
            chunks.append(message.chunk)
    return file, b"".join(chunks)


def code_call(call_id: str, code: str) -> tuple[str, str, str]:
    return call_id, "code_interpreter", json.dumps({"code": code})


def tool_outputs(request: dict) -> dict[str, str]:
    def text(content):
        return content if isinstance(content, str) else "".join(p.get("text", "") for p in content or [])

    return {m["tool_call_id"]: text(m["content"]) for m in request["messages"] if m["role"] == "tool"}


async def run(stub, md, **fields) -> list[apb.RunEvent]:
    return await collect(stub.StreamRun(api.StreamRunRequest(run=api.CreateRunRequest(**fields)), metadata=md),
                         timeout=180)


def code_details(steps) -> list[apb.CodeInterpreterCall]:
    return [call.code_interpreter for step in steps if step.WhichOneof("step_details") == "tool_calls"
            for call in step.tool_calls.tool_calls if call.WhichOneof("call") == "code_interpreter"]


async def test_a_variable_lives_on_in_the_sessions_sandbox_and_a_chart_comes_back_as_a_file(stack, client):
    stub, files, md = client
    model = stack.model("openai")
    name = model.split("/")[1]
    fake = stack.fakes["openai"]
    fake.script(name,
                {"tool_calls": [code_call("call_define", "answer = 41\nprint('defined')")]},
                {"text": "I stored the answer."},
                {"tool_calls": [code_call("call_read", "print(answer + 1)")]},
                {"text": "It is 42."},
                {"tool_calls": [code_call("call_chart",
                                          "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [answer, 1])\n"
                                          "plt.savefig('/mnt/data/bars.png')\nplt.show()")]},
                {"text": "Here is the chart: sandbox:/mnt/data/bars.png"})
    assistant = await stub.CreateAssistant(api.CreateAssistantRequest(
        model=model, instructions="Use Python.", tools=[apb.Tool(code_interpreter=apb.CodeInterpreterTool())]),
        metadata=md)

    first = await run(stub, md, assistant_id=assistant.id,
                      session=api.NewSession(title="ci", messages=[user_message("Remember 41.")]))
    assert first[-1].done.status == apb.RUN_STATUS_COMPLETED, first[-2]
    session_id = first[0].run_status_changed.session_id
    # The code's output streamed as code_logs of the call, and went back to the model.
    logs = "".join(e.tool_call_delta.code_logs for e in first if e.HasField("tool_call_delta"))
    assert logs == "defined\n"
    assert tool_outputs(fake.requests_for(name)[-1])["call_define"].startswith("defined")

    second = await run(stub, md, assistant_id=assistant.id, session_id=session_id,
                       additional_messages=[user_message("What is answer + 1?")])
    assert second[-1].done.status == apb.RUN_STATUS_COMPLETED
    assert tool_outputs(fake.requests_for(name)[-1])["call_read"].startswith("42")

    third = await run(stub, md, assistant_id=assistant.id, session_id=session_id,
                      additional_messages=[user_message("Draw it.")])
    assert third[-1].done.status == apb.RUN_STATUS_COMPLETED
    run_id = third[0].run_id
    steps = (await stub.ListRunSteps(api.ListRunStepsRequest(run_id=run_id), metadata=md)).run_steps
    [detail] = code_details(steps)
    assert "plt.bar" in detail.input
    images = [o.image.file_id for o in detail.outputs if o.WhichOneof("output") == "image"]
    assert len(images) == 1
    stored, data = await download(files, md, images[0])
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and stored.purpose == fpb.FILE_PURPOSE_ASSISTANTS_OUTPUT
    streamed = [e.tool_call_delta.code_image.file_id for e in third
                if e.HasField("tool_call_delta") and e.tool_call_delta.code_image.file_id]
    assert streamed == images
    # The saved file is in the files service too, and the model was told where it is.
    output = tool_outputs(fake.requests_for(name)[-1])["call_chart"]
    assert "Files written:\nsandbox:/mnt/data/bars.png" in output
    saved = [f for f in (await files.ListFiles(fapi.ListFilesRequest(), metadata=md)).files
             if f.filename == "bars.png"]
    assert len(saved) == 1 and saved[0].id not in output  # the model links the path, not an id
    saved, saved_data = await download(files, md, saved[0].id)
    assert saved.purpose == fpb.FILE_PURPOSE_ASSISTANTS_OUTPUT and saved_data.startswith(b"\x89PNG")
    # The answer's link to the file is a file_path annotation, streamed and on the step, whose
    # file id downloads the produced file.
    link = "sandbox:/mnt/data/bars.png"
    [message_step] = [s for s in steps if s.WhichOneof("step_details") == "message_creation"
                      and s.message_creation.annotations]
    [annotation] = message_step.message_creation.annotations
    assert annotation.WhichOneof("annotation") == "file_path" and annotation.text == link
    text = "Here is the chart: sandbox:/mnt/data/bars.png"
    assert (annotation.start_index, annotation.end_index) == (text.index(link), len(text))
    streamed_paths = [a for e in third if e.HasField("message_delta") for a in e.message_delta.annotations]
    assert streamed_paths == [annotation]
    linked, linked_data = await download(files, md, annotation.file_path.file_id)
    assert linked.filename == "bars.png" and linked_data == saved_data


async def test_an_attached_csv_is_read_by_pandas_and_a_code_error_is_a_result(stack, client):
    stub, files, md = client
    model = stack.model("openai")
    name = model.split("/")[1]
    fake = stack.fakes["openai"]
    fake.script(name,
                {"tool_calls": [code_call("call_csv", "import pandas as pd\ndf = pd.read_csv('/mnt/data/temps.csv')\n"
                                                      "print(df['temp'].mean(), df.loc[df['temp'].idxmax(), 'city'])")]},
                {"tool_calls": [code_call("call_bad", "1 / 0")]},
                {"text": "The mean is 20.3; Cairo is hottest."})
    file_id = await upload(files, md, "temps.csv", CSV)
    assistant = await stub.CreateAssistant(api.CreateAssistantRequest(
        model=model, tools=[apb.Tool(code_interpreter=apb.CodeInterpreterTool())]), metadata=md)
    message = user_message("Summarise the attached file.",
                           attachments=[spb.Attachment(file_id=file_id, tools=["code_interpreter"])])
    events = await run(stub, md, assistant_id=assistant.id, session=api.NewSession(title="csv", messages=[message]))
    assert events[-1].done.status == apb.RUN_STATUS_COMPLETED, events[-2]
    outputs = {}
    for request in fake.requests_for(name):
        outputs.update(tool_outputs(request))
    assert outputs["call_csv"].startswith("20.333333333333332 Cairo")
    assert "ZeroDivisionError" in outputs["call_bad"]


async def test_deleting_the_session_through_the_gateway_deletes_its_sandbox(stack, client, sandboxes, ci, minter):
    stub, _, md = client
    gateway, _ = ci
    model = stack.model("openai")
    name = model.split("/")[1]
    stack.fakes["openai"].script(name, {"tool_calls": [code_call("call_touch", "open('kept.txt', 'w').write('x')")]},
                                 {"text": "Done."})
    assistant = await stub.CreateAssistant(api.CreateAssistantRequest(
        model=model, tools=[apb.Tool(code_interpreter=apb.CodeInterpreterTool())]), metadata=md)
    events = await run(stub, md, assistant_id=assistant.id,
                       session=api.NewSession(title="doomed", messages=[user_message("Write a file.")]))
    assert events[-1].done.status == apb.RUN_STATUS_COMPLETED, events[-2]
    session_id = events[0].run_status_changed.session_id
    # The session's sandbox, asked for directly as the user (CreateSandbox returns the live one).
    who = minter.metadata(assistant.user_id, ("sandbox",))
    sandbox = await sandboxes.CreateSandbox(sbapi.CreateSandboxRequest(session_id=session_id), metadata=who)
    files = await sandboxes.ListSandboxFiles(sbapi.ListSandboxFilesRequest(sandbox_id=sandbox.id), metadata=who)
    assert "kept.txt" in [f.path for f in files.files]

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        await sgrpc.SessionServiceStub(channel).DeleteSession(sapi.DeleteSessionRequest(session_id=session_id),
                                                             metadata=md)
    for _ in range(300):  # the engine hears the deletion and deletes the sandbox: a bounded wait
        try:
            await sandboxes.GetSandbox(sbapi.GetSandboxRequest(sandbox_id=sandbox.id), metadata=who)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the deleted session's sandbox is still there after 30 s")
