"""One trace through the real processes: a composite call through the gateway (an upload
that is processed into a vector store and searched, a session with a message, a streamed
chat) arrives at the OTLP receiver as spans of one trace id from every service involved,
each parented inside the trace, the model call carrying the GenAI attributes, and no
message content anywhere. With export switched off, nothing is sent."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from opentelemetry import trace

from parley.client._assistants import Assistants, file_search_tool
from parley.client._channel import _StreamStreamAuth, _StreamUnaryAuth, _UnaryStreamAuth, _UnaryUnaryAuth
from parley.client._runs import RunStatus

from parley.files.v1 import files_pb2, files_service_pb2, files_service_pb2_grpc
from parley.llm.v1 import llm_pb2, llm_service_pb2, llm_service_pb2_grpc
from parley.sessions.v1 import sessions_pb2, sessions_service_pb2, sessions_service_pb2_grpc
from services.runtime.identity import IdentityMinter
from services.runtime.telemetry import client_interceptors
from tests.conftest import fresh_database, private_temp_dir, span_exporter
from tests.observability.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.processes import Suite

# Content that must never reach a span: what the user uploads, writes and asks.
FILE_TEXT = "Zanzibar-7 quarterly notes: the heron project ships in March. " * 20
MESSAGE_TEXT = "Kumquat-42 is my private message"
PROMPT_TEXT = "Tell me about Marmalade-99 please"
RUN_PROMPT = "Papaya-31: when does the heron project ship, and what is the weather in Oslo?"
SECRETS = ("Zanzibar-7", "Kumquat-42", "Marmalade-99", "Papaya-31")

tracer = trace.get_tracer("tests.observability")


def traced_channel(target: str, key: str | None = None) -> grpc.aio.Channel:
    """A channel carrying this process's trace context (and, with `key`, the API key)."""
    auth = (("authorization", f"Bearer {key}"),)
    credentials = [kind(auth) for kind in (_UnaryUnaryAuth, _UnaryStreamAuth, _StreamUnaryAuth, _StreamStreamAuth)]
    return grpc.aio.insecure_channel(target, interceptors=[*client_interceptors(), *(credentials if key else [])])


def get_weather(city: str) -> dict:
    """The weather of a city."""
    return {"city": city, "sky": "clear"}


async def _run(suite: Suite, key: str, store_id: str, fakes) -> str:
    """A run through the gateway that searches the store and calls a function; its session id."""
    fakes["openai"].script(
        "obs-run",
        {"tool_calls": [("call_search", "file_search", '{"query": "when does the heron project ship"}')]},
        {"tool_calls": [("call_weather", "get_weather", '{"city": "Oslo"}')]},
        {"text": "It ships in March, and Oslo is clear."})
    async with traced_channel(suite.target("gateway"), key) as channel:
        assistants = Assistants(channel, 60.0)
        assistant = await assistants.create("observer", model="openai/obs-run",
                                            tools=[file_search_tool(), get_weather], vector_store_ids=[store_id])
        result = await assistants.run(assistant.id, RUN_PROMPT, functions=[get_weather]).result()
        assert result.status == RunStatus.COMPLETED, result.error
        run = await assistants.get_run(result.run_id)
        return run.session_id


async def _composite(suite: Suite, key: str, fakes=None) -> tuple[str, str, str]:
    """Runs the composite call under one root span; returns (trace id, root span id, session id
    of the run, or "" without `fakes`)."""
    auth = (("authorization", f"Bearer {key}"),)
    async with traced_channel(suite.target("gateway")) as channel:
        files = files_service_pb2_grpc.FileServiceStub(channel)
        sessions = sessions_service_pb2_grpc.SessionServiceStub(channel)
        llm = llm_service_pb2_grpc.LLMServiceStub(channel)
        with tracer.start_as_current_span("composite") as root:
            async def upload():
                yield files_service_pb2.UploadFileRequest(metadata=files_service_pb2.UploadFileMetadata(
                    filename="notes.txt", media_type="text/plain", purpose=files_pb2.FILE_PURPOSE_ASSISTANTS,
                    size_bytes=len(FILE_TEXT.encode())))
                yield files_service_pb2.UploadFileRequest(chunk=FILE_TEXT.encode())

            uploaded = await files.UploadFile(upload(), metadata=auth, timeout=60)
            store = await files.CreateVectorStore(files_service_pb2.CreateVectorStoreRequest(
                name="notes", file_ids=[uploaded.id]), metadata=auth, timeout=60)
            deadline = time.monotonic() + 180
            while True:
                entry = await files.GetVectorStoreFile(files_service_pb2.GetVectorStoreFileRequest(
                    vector_store_id=store.id, file_id=uploaded.id), metadata=auth, timeout=30)
                if entry.status == files_pb2.VECTOR_STORE_FILE_STATUS_COMPLETED:
                    break
                assert entry.status == files_pb2.VECTOR_STORE_FILE_STATUS_IN_PROGRESS, entry
                assert time.monotonic() < deadline, "the file was never processed"
                await asyncio.sleep(0.2)
            found = await files.SearchVectorStore(files_service_pb2.SearchVectorStoreRequest(
                vector_store_ids=[store.id], query="when does the heron project ship"), metadata=auth, timeout=60)
            assert found.results, "the processed file is searchable"
            session = await sessions.CreateSession(sessions_service_pb2.CreateSessionRequest(title="traced"),
                                                   metadata=auth, timeout=30)
            await sessions.CreateMessage(sessions_service_pb2.CreateMessageRequest(
                session_id=session.id, role=sessions_pb2.ROLE_USER, content=[sessions_pb2.ContentPart(text=MESSAGE_TEXT)]),
                metadata=auth, timeout=30)
            chat = llm.StreamGenerate(llm_service_pb2.StreamGenerateRequest(
                model="local/echo",
                messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text=PROMPT_TEXT)])],
            ), metadata=auth, timeout=60)
            events = [event async for event in chat]
            assert events, "the chat streamed"
            run_session = await _run(suite, key, store.id, fakes) if fakes is not None else ""
            context = root.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x"), run_session


def _has_ancestor(span: ReceivedSpan, ancestor_id: str, by_id: dict[str, ReceivedSpan]) -> bool:
    while span.parent_id in by_id:
        if span.parent_id == ancestor_id:
            return True
        span = by_id[span.parent_id]
    return False


def _in_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


async def test_one_request_is_one_trace_through_every_service(traced_suite, gateway_key, otlp_receiver, fakes):
    trace_id, root_id, run_session = await _composite(traced_suite, gateway_key, fakes)
    services = {"parley-gateway", "parley-files", "parley-llm", "parley-sessions", "parley-assistants"}
    # This test process's spans of the trace: its root span and its gRPC client spans.
    local = [s for s in span_exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
    local_ids = {format(s.context.span_id, "016x") for s in local}
    assert root_id in local_ids

    def orphans_in(mine):
        # The gateway's entry spans are children of this process's client spans, and a client
        # stream's span stays open here until the call object goes: that they carry the root's
        # trace id shows the propagation. Every other span's parent must be in the trace.
        ids = {s.span_id for s in mine} | local_ids
        return [(s.service, s.name, s.parent_id) for s in mine if s.parent_id not in ids
                and not (s.service == "parley-gateway" and s.span.kind == s.span.SPAN_KIND_SERVER)]

    def complete(spans):
        mine = _in_trace(spans, trace_id)
        # Parents end after their children: wait until every parent has arrived too.
        return not orphans_in(mine) and services <= {s.service for s in mine} and any(
            s.attributes().get("gen_ai.operation.name") == "chat" for s in mine) and any(
            s.name == "files.process_entry" for s in mine) and any(s.name == "assistants.run" for s in mine)

    spans = _in_trace(await asyncio.to_thread(otlp_receiver.wait_for, complete, 60), trace_id)
    assert services <= {s.service for s in spans}, sorted({s.service for s in spans})

    # Correctly parented: every span's parent is another span of the trace, from the services or
    # from this test process.
    assert not orphans_in(spans), orphans_in(spans)
    by_id = {s.span_id: s for s in spans}

    def server_span(service: str, method: str) -> ReceivedSpan:
        return next(s for s in spans if s.service == service and s.name == method
                    and s.span.kind == s.span.SPAN_KIND_SERVER)

    # The gateway's forwarding span is the parent (or the parent's parent) of each backend's server span.
    for service, method in [("parley-llm", "/parley.llm.v1.LLMService/StreamGenerate"),
                            ("parley-sessions", "/parley.sessions.v1.SessionService/CreateMessage"),
                            ("parley-files", "/parley.files.v1.FileService/SearchVectorStore")]:
        span = server_span(service, method)
        ancestors = []
        while span.parent_id in by_id:
            span = by_id[span.parent_id]
            ancestors.append(span.service)
        assert "parley-gateway" in ancestors, (service, method, ancestors)
    # files → llm: the query's embedding is a child of the files service's search.
    embed = server_span("parley-llm", "/parley.llm.v1.LLMService/Embed")
    assert by_id[embed.parent_id].service == "parley-files"
    # Down to the SQL: asyncpg spans of the sessions service inside the trace.
    assert any(s.service == "parley-sessions" and s.attributes().get("db.system") == "postgresql" for s in spans)

    # The run executes in two parts, each span a child of the call that set it going: StreamRun
    # until the function call, SubmitToolOutputs after it. Its tool call and model calls are
    # their children, the model calls carrying the run's session as the conversation.
    runs = [s for s in spans if s.name == "assistants.run"]
    assert sorted(by_id[r.parent_id].name for r in runs) == [
        "/parley.assistants.v1.AssistantService/StreamRun", "/parley.assistants.v1.AssistantService/SubmitToolOutputs"]
    assert all(r.attributes()["gen_ai.conversation.id"] == run_session for r in runs)
    searches = [s for s in spans if s.name == "assistants.tool file_search"]
    assert searches, "the run's file search"
    for search in searches:
        assert search.parent_id in {r.span_id for r in runs}
        assert any(s.name == "/parley.files.v1.FileService/SearchVectorStore" and s.parent_id == search.span_id
                   and s.service == "parley-assistants" for s in spans)
    run_calls = [s for s in spans if s.attributes().get("gen_ai.conversation.id") == run_session
                 and s.attributes().get("gen_ai.operation.name") == "chat"]
    assert len(run_calls) >= 3 and all(s.attributes()["gen_ai.provider.name"] == "openai" for s in run_calls)
    assert all(s.attributes()["gen_ai.response.time_to_first_chunk"] >= 0 for s in run_calls)
    assert any(s.service == "parley-sessions" and s.name == "/parley.sessions.v1.SessionService/CreateMessage"
               and any(_has_ancestor(s, r.span_id, by_id) for r in runs) for s in spans), \
        "the run's messages are stored in its trace"

    # The direct chat: one span with the GenAI attributes, a child of the llm server span.
    (model_call,) = [s for s in spans if s.attributes().get("gen_ai.operation.name") == "chat"
                     and s.attributes().get("gen_ai.provider.name") == "local"]
    attributes = model_call.attributes()
    assert attributes["gen_ai.provider.name"] == "local"
    assert attributes["gen_ai.request.model"] == "echo"
    assert attributes["gen_ai.usage.input_tokens"] > 0 and attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert by_id[model_call.parent_id].service == "parley-llm"

    # Background work continues the trace that asked for it: the file's extraction is a child
    # of the upload, its chunking and embedding (with the worker's own call to llm) a child of
    # the call that added it to the store.
    upload = server_span("parley-files", "/parley.files.v1.FileService/UploadFile")
    create_store = server_span("parley-files", "/parley.files.v1.FileService/CreateVectorStore")
    (extraction,) = [s for s in spans if s.name == "files.process_file"]
    (indexing,) = [s for s in spans if s.name == "files.process_entry"]
    assert extraction.parent_id == upload.span_id and indexing.parent_id == create_store.span_id
    # Each stage its span: extraction under the file's processing, chunking and embedding (with
    # the worker's own call to llm) under the entry's.
    def child(name: str, parent: ReceivedSpan) -> ReceivedSpan:
        (found,) = [s for s in spans if s.name == name and s.parent_id == parent.span_id]
        return found

    child("files.extract", extraction)
    assert child("files.chunk", indexing).attributes()["parley.files.chunks"] >= 1
    embedding = child("files.embed", indexing)
    worker_embeds = [s for s in spans if s.name == "/parley.llm.v1.LLMService/Embed" and s.service == "parley-llm"
                     and by_id[s.parent_id].parent_id == embedding.span_id]
    assert worker_embeds, "the worker's Embed call belongs to the trace"

    # One log line per call, at each hop, with the caller and the span it belongs to.
    for service, method in [("gateway", "/parley.llm.v1.LLMService/StreamGenerate"),
                            ("llm", "/parley.llm.v1.LLMService/StreamGenerate"),
                            ("sessions", "/parley.sessions.v1.SessionService/CreateMessage")]:
        lines = [json.loads(line) for line in traced_suite.log(service).splitlines() if line.startswith("{")]
        calls = [line for line in lines if line.get("rpc.method") == method and line.get("trace_id") == trace_id]
        assert calls, (service, method)
        for call in calls:
            assert call["rpc.status"] == "OK" and call["user_id"] == "observer" and call["duration_ms"] > 0
            assert call["span_id"] in by_id and by_id[call["span_id"]].service == f"parley-{service}"
    for service in traced_suite.processes:
        for secret in SECRETS:
            assert secret not in traced_suite.log(service), (service, secret)

    # No content: not the file, the message or the prompt, in any span of any trace.
    for span in otlp_receiver.spans():
        serialized = span.span.SerializeToString()
        for secret in SECRETS:
            assert secret.encode() not in serialized, (span.service, span.name, secret)


async def test_with_export_off_nothing_is_sent(vector_server_url, identity_private_key):
    """A process with an endpoint but OTEL_TRACES_EXPORTER=none sends nothing; one with the same
    endpoint and export on (the control) does."""
    with OtlpReceiver() as receiver:
        async with fresh_database(vector_server_url, "parley_observability_off") as database_url:
            results = {}
            for exporter in ("none", "otlp"):
                suite = Suite(private_temp_dir(f"parley-test-otel-{exporter}-"), database_url, services=("sessions",),
                              extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                         "OTEL_TRACES_EXPORTER": exporter, "OTEL_BSP_SCHEDULE_DELAY": "50"})
                await asyncio.to_thread(suite.start)
                try:
                    minter = IdentityMinter((suite.directory / "identity.pem").read_bytes())
                    async with grpc.aio.insecure_channel(suite.target("sessions")) as channel:
                        stub = sessions_service_pb2_grpc.SessionServiceStub(channel)
                        for _ in range(3):
                            await stub.CreateSession(sessions_service_pb2.CreateSessionRequest(title="x"),
                                                     metadata=minter.metadata("quiet"), timeout=30)
                finally:
                    # SIGTERM flushes the batch processor: whatever would be sent is sent by now.
                    await asyncio.to_thread(suite.stop)
                results[exporter] = len(receiver.spans())
                receiver.clear()
            assert results["otlp"] > 0, "the control process exported its spans"
            assert results["none"] == 0
            assert not receiver.metric_names, "metrics go over OTLP only when OTEL_METRICS_EXPORTER asks"


async def test_metrics_go_over_otlp_when_asked(vector_server_url):
    """OTEL_METRICS_EXPORTER=otlp: the same instruments reach the OTLP endpoint (here every 200 ms)."""
    with OtlpReceiver() as receiver:
        async with fresh_database(vector_server_url, "parley_observability_otlp_metrics") as database_url:
            suite = Suite(private_temp_dir("parley-test-otel-metrics-"), database_url, services=("sessions",),
                          extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                     "OTEL_METRICS_EXPORTER": "otlp", "OTEL_METRIC_EXPORT_INTERVAL": "200"})
            await asyncio.to_thread(suite.start)
            try:
                minter = IdentityMinter((suite.directory / "identity.pem").read_bytes())
                async with grpc.aio.insecure_channel(suite.target("sessions")) as channel:
                    await sessions_service_pb2_grpc.SessionServiceStub(channel).CreateSession(
                        sessions_service_pb2.CreateSessionRequest(title="x"), metadata=minter.metadata("metered"),
                        timeout=30)
                wanted = ("parley-sessions", "rpc.server.call.duration")
                for _ in range(300):
                    if wanted in receiver.metric_names:
                        break
                    await asyncio.sleep(0.1)
                assert wanted in receiver.metric_names, sorted(receiver.metric_names)
            finally:
                await asyncio.to_thread(suite.stop)
