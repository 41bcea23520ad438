"""The llm service killed (SIGKILL) mid-stream, under the real gateway and the real run engine.

- A client streaming through the gateway from a slowly streaming vendor gets UNAVAILABLE with
  a reason soon after the kill (the bound below is generous: the kernel closes the dead
  process's connections at once, so the gateway hears of it in milliseconds; seconds would
  mean a client left hanging on a dead backend). Meanwhile sessions calls through the same
  gateway keep working; after the llm service is started again, streams work through the
  same gateway, which was never restarted.
- A run whose model call was cut by the kill ends FAILED with a reason, not stuck in progress.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from parley.assistants.v1 import assistants_pb2 as apb
from parley.client import ParleyClient, RunStatus, TextDelta
from parley.llm.v1 import llm_service_pb2 as lapi
from parley.llm.v1 import llm_service_pb2_grpc as lgrpc
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from tests.faults.conftest import assert_clear
from tests.llm.helpers import collect, user

# Generous bounds on the behaviour under test (see the module's docstring).
STREAM_ENDS_WITHIN = 5.0
RECOVERS_WITHIN = 30.0
RUN_ENDS_WITHIN = 30.0


async def _stream_again(stub, auth, model: str) -> tuple[str, float]:
    """Streams until a call succeeds (the gateway reconnects to the new process by itself);
    returns the text and the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            text, _, finish, _ = await collect(stub.StreamGenerate(
                lapi.StreamGenerateRequest(model=model, messages=[user("again")]), metadata=auth, timeout=10))
            assert finish is not None
            return text, time.monotonic() - started
        except grpc.aio.AioRpcError as error:
            assert_clear(error, grpc.StatusCode.UNAVAILABLE)
            assert time.monotonic() - started < RECOVERS_WITHIN, f"streams did not come back: {error.details()}"
            await asyncio.sleep(0.2)


async def test_a_killed_llm_ends_its_streams_unavailable_and_the_gateway_keeps_serving(fault_stack):
    llm = fault_stack.suite["llm"]
    fake = fault_stack.fakes["openai"]
    model = fault_stack.model("openai")
    fake.script(model.split("/", 1)[1], {"endless": True}, {"text": "Back again."})
    async with fault_stack.channel() as channel:
        stub, sessions = lgrpc.LLMServiceStub(channel), sgrpc.SessionServiceStub(channel)
        stream = stub.StreamGenerate(lapi.StreamGenerateRequest(model=model, messages=[user("go on")]),
                                     metadata=fault_stack.auth, timeout=120)
        received = 0
        async for _ in stream:
            received += 1
            if received == 3:
                break
        killed_at = time.monotonic()
        await asyncio.to_thread(llm.kill)
        try:
            async for _ in stream:
                received += 1
            raise AssertionError("the stream ended normally although its backend was killed")
        except grpc.aio.AioRpcError as error:
            ended_after = time.monotonic() - killed_at
            reason = assert_clear(error, grpc.StatusCode.UNAVAILABLE)
        print(f"\n[fault] llm SIGKILLed mid-stream: the client's stream ended UNAVAILABLE ({reason}) after "
              f"{ended_after:.3f} s, {received} events received")
        assert ended_after < STREAM_ENDS_WITHIN

        # The dead process's vendor connection closed with it.
        await asyncio.wait_for(_disconnected(fake, model), 5)

        # The gateway keeps serving the other backends, and answers for the dead one clearly.
        for i in range(5):
            created = await sessions.CreateSession(sapi.CreateSessionRequest(title=f"during the outage {i}"),
                                                   metadata=fault_stack.auth, timeout=10)
            assert created.id
        try:
            await stub.Generate(lapi.GenerateRequest(model="local/echo", messages=[user("hello?")]),
                                metadata=fault_stack.auth, timeout=10)
            raise AssertionError("a call to the dead llm service succeeded")
        except grpc.aio.AioRpcError as error:
            down_reason = assert_clear(error, grpc.StatusCode.UNAVAILABLE)

        restarted_at = time.monotonic()
        await asyncio.to_thread(llm.start().wait_serving)
        text, took = await _stream_again(stub, fault_stack.auth, model)
        assert text == "Back again."
        print(f"[fault] while down, calls to llm answered UNAVAILABLE ({down_reason}); sessions answered 5/5; "
              f"after the restart ({time.monotonic() - restarted_at:.1f} s to SERVING and a stream), "
              f"the same gateway streamed again ({took:.2f} s after SERVING)")


async def _disconnected(fake, model: str) -> None:
    name = model.split("/", 1)[1]
    while name not in fake.disconnects:
        await asyncio.sleep(0.02)


async def test_a_run_whose_llm_is_killed_fails_with_a_reason(fault_stack):
    llm = fault_stack.suite["llm"]
    fake = fault_stack.fakes["openai"]
    model = fault_stack.model("openai")
    fake.script(model.split("/", 1)[1], {"endless": True})
    async with ParleyClient(fault_stack.suite.target("gateway"), fault_stack.key, timeout=60) as parley:
        assistant = await parley.assistants.create("fault: llm killed", model=model)
        stream = parley.assistants.stream_run(assistant.id, "Talk forever")
        async for event in stream:
            if isinstance(event, TextDelta):
                break
        killed_at = time.monotonic()
        await asyncio.to_thread(llm.kill)
        try:
            deadline = time.monotonic() + RUN_ENDS_WITHIN
            while True:
                run = await parley.assistants.get_run(stream.run_id)
                if run.status not in (RunStatus.QUEUED, RunStatus.IN_PROGRESS):
                    break
                assert time.monotonic() < deadline, f"the run is still {RunStatus(run.status).name}"
                await asyncio.sleep(0.1)
            ended_after = time.monotonic() - killed_at
        finally:
            stream.cancel()
            await asyncio.to_thread(llm.start().wait_serving)
        assert run.status == RunStatus.FAILED, RunStatus(run.status).name
        assert run.last_error.code == apb.RUN_ERROR_CODE_MODEL_ERROR, apb.RunErrorCode.Name(run.last_error.code)
        assert run.last_error.message
        print(f"\n[fault] llm SIGKILLed during a run: the run ended FAILED after {ended_after:.2f} s, last_error "
              f"{apb.RunErrorCode.Name(run.last_error.code)}: {run.last_error.message!r}")
