import time, statistics, grpc, asyncio
from parley.llm.v1 import llm_pb2 as lpb, llm_service_pb2 as lapi, llm_service_pb2_grpc as lgrpc
from parley.assistants.v1 import assistants_service_pb2 as api
from tests.assistants.helpers import new_assistant, user_message

async def test_ttft(stack, engine_channel, user):
    md, stub = stack.direct(user()), stack.engine.stub(engine_channel)
    model = stack.model("openai"); name = model.split("/")[1]
    assistant = await new_assistant(stub, md, model)
    first = await stub.CreateRun(api.CreateRunRequest(assistant_id=assistant.id, session=api.NewSession(messages=[user_message("hi")])), metadata=md)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.llm_port}") as ch:
        llm = lgrpc.LLMServiceStub(ch)
        direct, run = [], []
        for i in range(15):
            stack.fakes["openai"].script(name, {"text": "hello there"}, {"text": "hello there"})
            t = time.perf_counter()
            async for r in llm.StreamGenerate(lapi.StreamGenerateRequest(model=model, messages=[lpb.ChatMessage(role=lpb.ROLE_USER, content=[lpb.ContentPart(text="hi")])]), metadata=md):
                if r.HasField("text_delta"): direct.append(time.perf_counter()-t); break
            t = time.perf_counter(); got = False; marks = []
            async for r in stub.StreamRun(api.StreamRunRequest(run=api.CreateRunRequest(assistant_id=assistant.id, session_id=first.session_id)), metadata=md):
                marks.append((r.event.WhichOneof("event"), round((time.perf_counter()-t)*1000, 1)))
                if r.event.HasField("message_delta") and not got: run.append(time.perf_counter()-t); got = True
            if i > 10: print(marks[:5])
            await asyncio.sleep(0.2)
    print("\nTTFT direct p50 %.1f ms, run p50 %.1f ms" % (statistics.median(direct)*1000, statistics.median(run)*1000))
