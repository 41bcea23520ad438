"""The generic request check: unknown enum numbers, non-finite and subnormal numbers (in
Struct too) and malformed Timestamps/Durations are refused before any servicer runs, for
unary, server-streaming and client-streaming calls alike."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from parley.files.v1 import files_pb2, files_service_pb2 as files_api, files_service_pb2_grpc as files_grpc
from parley.llm.v1 import llm_pb2, llm_service_pb2 as llm_api, llm_service_pb2_grpc as llm_grpc
from services.runtime.request_check import MAX_VIOLATIONS, request_violations
from tests.conftest import channel_to, expect_error, serve_app


def _fields(message) -> list[str]:
    return [v.field for v in request_violations(message)]


def _user(text: str = "hi") -> llm_pb2.ChatMessage:
    return llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text=text)])


def _tool_with(parameters: dict) -> llm_pb2.Tool:
    schema = struct_pb2.Struct()
    schema.update(parameters)
    return llm_pb2.Tool(function=llm_pb2.FunctionDefinition(name="f", parameters=schema))


def test_a_well_formed_request_has_no_violations():
    request = llm_api.GenerateRequest(
        model="local/echo", messages=[_user()], temperature=0.7, tools=[_tool_with({"type": "object", "n": 3.5})],
        max_queue_time=duration_pb2.Duration(seconds=5), metadata={"run": "1"},
    )
    assert request_violations(request) == []


def test_members_of_a_oneof_are_named_by_the_member_set():
    part = llm_pb2.ContentPart(image_url=llm_pb2.ImageUrl(url="https://x/y.png", detail=99))
    request = llm_api.GenerateRequest(model="m", messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[
        llm_pb2.ContentPart(text="look"), part])])
    assert _fields(request) == ["messages[0].content[1].image_url.detail"]


def test_unknown_enum_numbers_are_named_by_path():
    request = llm_api.GenerateRequest(model="m", messages=[_user(), _user()], cache_policy=99, priority=7)
    request.messages[1].role = 42
    assert _fields(request) == ["messages[1].role", "cache_policy", "priority"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_inside_a_struct_are_named_as_json_paths(bad):
    request = llm_api.GenerateRequest(model="m", messages=[_user()],
                                      tools=[_tool_with({"properties": {"n": {"minimum": bad}}, "list": [1, bad]})])
    assert sorted(_fields(request)) == ["tools[0].function.parameters.list[1]",
                                        "tools[0].function.parameters.properties.n.minimum"]


def test_plain_double_fields_are_left_to_their_domain():
    # A NaN cost in a stored run event is kept as sent; temperatures and search weights are
    # checked by the services that use them.
    assert _fields(llm_api.GenerateRequest(model="m", temperature=math.nan)) == []


def test_timestamps_and_durations_outside_their_rules():
    request = llm_api.GetUsageRequest(
        start_time=timestamp_pb2.Timestamp(seconds=-62_135_596_800),        # year 1
        end_time=timestamp_pb2.Timestamp(seconds=253_402_300_799, nanos=999_999_000),  # stored as infinity
    )
    assert _fields(request) == ["start_time", "end_time"]
    assert _fields(llm_api.GetUsageRequest(end_time=timestamp_pb2.Timestamp(seconds=2**62))) == ["end_time"]
    assert _fields(llm_api.GetUsageRequest(end_time=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=-1))) == ["end_time"]
    assert _fields(llm_api.GenerateRequest(max_queue_time=duration_pb2.Duration(seconds=5, nanos=-3))) == ["max_queue_time"]
    assert _fields(llm_api.GenerateRequest(max_queue_time=duration_pb2.Duration(seconds=315_576_000_001))) == ["max_queue_time"]


def test_the_list_of_violations_is_bounded():
    request = llm_api.GenerateRequest(messages=[llm_pb2.ChatMessage(role=99) for _ in range(500)])
    assert len(request_violations(request)) == MAX_VIOLATIONS


class RecordingLLM(llm_grpc.LLMServiceServicer):
    """Answers every call it gets; the check must stop bad ones before they arrive."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def Generate(self, request, context):
        self.calls.append("Generate")
        return llm_api.GenerateResponse()

    async def StreamGenerate(self, request, context):
        self.calls.append("StreamGenerate")
        yield llm_api.StreamGenerateResponse()


class RecordingFiles(files_grpc.FileServiceServicer):
    def __init__(self) -> None:
        self.chunks = 0

    async def UploadFile(self, request_iterator, context):
        async for _ in request_iterator:
            self.chunks += 1
        return files_pb2.File(id="ok")


class CheckedApp:
    service_names = ("parley.llm.v1.LLMService", "parley.files.v1.FileService")

    def __init__(self) -> None:
        self.llm, self.files = RecordingLLM(), RecordingFiles()

    def register(self, server):
        llm_grpc.add_LLMServiceServicer_to_server(self.llm, server)
        files_grpc.add_FileServiceServicer_to_server(self.files, server)

    async def aclose(self):
        pass


@pytest.fixture(scope="module")
async def served(identity_public_key):
    app = CheckedApp()
    running = await serve_app(app, "checked", identity_public_key)
    channel = channel_to(running)
    yield app, llm_grpc.LLMServiceStub(channel), files_grpc.FileServiceStub(channel), running.port
    await channel.close()
    await running.stop(0)


async def test_unary_and_server_streaming_calls_are_checked_before_the_servicer(served, as_user):
    app, llm, _, _ = served
    me = as_user("carol")
    bad = llm_api.GenerateRequest(model="m", messages=[_user()], cache_policy=99)
    reason, fields = await expect_error(llm.Generate(bad, metadata=me), grpc.StatusCode.INVALID_ARGUMENT)
    assert (reason, fields) == ("INVALID_FIELD", ["cache_policy"])
    stream_bad = llm_api.StreamGenerateRequest(model="m", messages=[_user()], tools=[_tool_with({"x": math.nan})])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in llm.StreamGenerate(stream_bad, metadata=me):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert app.llm.calls == []
    await llm.Generate(llm_api.GenerateRequest(model="m", messages=[_user()]), metadata=me)
    assert [r async for r in llm.StreamGenerate(llm_api.StreamGenerateRequest(model="m"), metadata=me)]
    assert app.llm.calls == ["Generate", "StreamGenerate"]


async def test_unauthenticated_calls_are_refused_as_such_first(served):
    _, llm, _, _ = served
    bad = llm_api.GenerateRequest(model="m", cache_policy=99)
    await expect_error(llm.Generate(bad), grpc.StatusCode.UNAUTHENTICATED)


async def test_each_message_of_a_client_stream_is_checked(served, as_user):
    app, _, files, _ = served

    def upload(purpose: int):
        yield files_api.UploadFileRequest(metadata=files_api.UploadFileMetadata(filename="a.txt"))
        yield files_api.UploadFileRequest(chunk=b"fine")
        yield files_api.UploadFileRequest(metadata=files_api.UploadFileMetadata(filename="b.txt", purpose=purpose))

    assert (await files.UploadFile(upload(0), metadata=as_user("carol"))).id == "ok"
    assert app.files.chunks == 3
    app.files.chunks = 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await files.UploadFile(upload(77), metadata=as_user("carol"))
    # grpc-aio's client may report the refusal of a stream it is still writing as INTERNAL
    # (docs/files.md); what matters here is that the servicer never read the bad message.
    assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)
    assert app.files.chunks == 2



async def test_bytes_that_are_no_request_message_are_invalid_argument(served, as_user):
    """Defect 6, for every service: undecodable request bytes answered UNKNOWN, naming the
    exception class. Now INVALID_ARGUMENT, and the servicer never runs."""
    app, _, _, port = served
    calls_before = list(app.llm.calls)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as raw:
        generate = raw.unary_unary("/parley.llm.v1.LLMService/Generate")
        reason, _ = await expect_error(generate(b"\xff\xff\xff\xff", metadata=as_user("carol")),
                                       grpc.StatusCode.INVALID_ARGUMENT)
        assert reason == "MALFORMED_REQUEST"
        stream = raw.unary_stream("/parley.llm.v1.LLMService/StreamGenerate")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stream(b"\x0a\xff", metadata=as_user("carol")):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "DecodeError" not in (caught.value.details() or "")
        assert "parley.llm.v1.StreamGenerateRequest" in caught.value.details()
    assert app.llm.calls == calls_before
