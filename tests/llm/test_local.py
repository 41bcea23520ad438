"""local/echo and the local embedding model through the real gRPC server."""

from __future__ import annotations

import math

import grpc
import pytest

from parley.llm.v1 import llm_pb2 as pb
from parley.llm.v1 import llm_service_pb2 as api


def user(text: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=pb.ROLE_USER, content=[pb.ContentPart(text=text)])


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def test_echo_generate(local_stub, as_user):
    reply = await local_stub.Generate(
        api.GenerateRequest(model="local/echo", messages=[user("hello there world")]), metadata=as_user("alice")
    )
    assert reply.message.content[0].text == "hello there world"
    assert reply.finish_reason == pb.FINISH_REASON_STOP
    assert reply.model == "local/echo"
    assert reply.usage.output_tokens == 3
    assert reply.usage.total_tokens == reply.usage.input_tokens + 3
    assert reply.id


async def test_echo_stream(local_stub, as_user):
    events = [e async for e in local_stub.StreamGenerate(
        api.StreamGenerateRequest(messages=[user("one two three four")]), metadata=as_user("alice"))]
    texts = [e.text_delta.text for e in events if e.WhichOneof("event") == "text_delta"]
    assert "".join(texts) == "one two three four"
    assert 1 <= len(texts) <= 4  # deltas already waiting when a message leaves are merged into it
    assert events[-1].WhichOneof("event") == "finish"
    assert events[-1].finish.model == "local/echo"
    assert events[-1].finish.HasField("time_to_first_token")


async def test_real_local_embedding(local_stub, as_user):
    reply = await local_stub.Embed(
        api.EmbedRequest(inputs=[
            "The cat sits on the mat.",
            "A kitten is sitting on a rug.",
            "Quarterly revenue grew by eight percent.",
        ]),
        metadata=as_user("alice"),
    )
    assert reply.model == "local/all-MiniLM-L6-v2"
    vectors = [list(e.values) for e in reply.embeddings]
    assert all(len(v) == 384 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[1], vectors[2])
    assert reply.usage.input_tokens > 0


async def test_list_models(local_stub, as_user):
    reply = await local_stub.ListModels(api.ListModelsRequest(), metadata=as_user("alice"))
    ids = [m.id for m in reply.models]
    assert "local/echo" in ids and "local/all-MiniLM-L6-v2" in ids
    embed = next(m for m in reply.models if m.id == "local/all-MiniLM-L6-v2")
    assert pb.MODEL_CAPABILITY_EMBEDDINGS in embed.capabilities and embed.embedding_dimensions == 384
    assert all(m.availability == pb.MODEL_AVAILABILITY_AVAILABLE for m in reply.models)


async def test_unknown_model_is_not_found(local_stub, as_user):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await local_stub.Generate(api.GenerateRequest(model="nope/nothing", messages=[user("hi")]), metadata=as_user("alice"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
