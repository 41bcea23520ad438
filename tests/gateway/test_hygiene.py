"""Input hygiene at the gateway: size limits per method, control characters where they
make no sense, and the PII redaction rules of the per-key prompt policy."""

from __future__ import annotations

import grpc
import pytest

from parley.llm.v1 import llm_pb2
from parley.llm.v1 import llm_service_pb2 as lapi
from parley.sessions.v1 import sessions_pb2
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from services.gateway.hygiene import control_character_violations, redact_pii, redact_prompt
from tests.conftest import expect_error
from tests.gateway.conftest import bearer

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def stub_and_key(gw_channel, make_key):
    return sgrpc.SessionServiceStub(gw_channel), await make_key("hygiene-user", ["sessions"])


async def test_control_characters_in_text_are_refused_before_the_backend(stub_and_key):
    stub, secret = stub_and_key
    before = await stub.ListSessions(sapi.ListSessionsRequest(page_size=100), metadata=bearer(secret))
    _, fields = await expect_error(stub.CreateSession(sapi.CreateSessionRequest(title="bad\x00title"),
                                                      metadata=bearer(secret)), INVALID)
    assert fields == ["title"]
    _, fields = await expect_error(stub.CreateSession(sapi.CreateSessionRequest(metadata={"k": "v\x1b[31m"}),
                                                      metadata=bearer(secret)), INVALID)
    assert fields == ["metadata['k']"]
    after = await stub.ListSessions(sapi.ListSessionsRequest(page_size=100), metadata=bearer(secret))
    assert len(after.sessions) == len(before.sessions)


async def test_identifiers_must_be_one_clean_line(stub_and_key):
    stub, secret = stub_and_key
    _, fields = await expect_error(stub.GetSession(sapi.GetSessionRequest(session_id="abc\ndef"),
                                                   metadata=bearer(secret)), INVALID)
    assert fields == ["session_id"]


async def test_free_text_keeps_newlines_and_tabs(stub_and_key):
    stub, secret = stub_and_key
    session = await stub.CreateSession(sapi.CreateSessionRequest(title="plain"), metadata=bearer(secret))
    message = await stub.CreateMessage(sapi.CreateMessageRequest(
        session_id=session.id, role=sessions_pb2.ROLE_USER,
        content=[sessions_pb2.ContentPart(text="line one\n\tline two\r\n")]), metadata=bearer(secret))
    assert message.content[0].text == "line one\n\tline two\r\n"


async def test_large_requests_are_inspected_as_thoroughly(stub_and_key):
    """Requests over 256 KiB are inspected on a worker thread: the same checks, the same
    answers, and clean ones are forwarded unchanged."""
    stub, secret = stub_and_key
    session = await stub.CreateSession(sapi.CreateSessionRequest(title="large"), metadata=bearer(secret))
    text = "paragraph of text\n" * 40_000  # ~700 KiB
    _, fields = await expect_error(stub.CreateMessage(sapi.CreateMessageRequest(
        session_id=session.id, role=sessions_pb2.ROLE_USER,
        content=[sessions_pb2.ContentPart(text="fine"), sessions_pb2.ContentPart(text=text + "\x07")]),
        metadata=bearer(secret)), INVALID)
    assert fields == ["content[1].text"]
    message = await stub.CreateMessage(sapi.CreateMessageRequest(
        session_id=session.id, role=sessions_pb2.ROLE_USER, content=[sessions_pb2.ContentPart(text=text)]),
        metadata=bearer(secret))
    assert message.content[0].text == text


async def test_request_size_limit_per_method(stub_and_key):
    stub, secret = stub_and_key
    big = {f"key{i}": "x" * 500 for i in range(600)}  # ~300 KiB, over the 256 KiB default
    reason, _ = await expect_error(stub.CreateSession(sapi.CreateSessionRequest(metadata=big),
                                                      metadata=bearer(secret)), INVALID)
    assert reason == "REQUEST_TOO_LARGE"


async def test_garbage_bytes_are_not_forwarded(gw_channel, make_key):
    secret = await make_key("hygiene-user", ["sessions"])
    call = gw_channel.unary_unary("/parley.sessions.v1.SessionService/GetSession")
    reason, _ = await expect_error(call(b"\xff\xff\xff\xff", metadata=bearer(secret)), INVALID)
    assert reason == "REQUEST_MALFORMED"


def test_nested_and_repeated_fields_are_walked():
    request = lapi.GenerateRequest(model="local/echo\n", messages=[
        llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text="ok\n"),
                                                             llm_pb2.ContentPart(text="bad\x07")]),
    ], stop=["fine", "bad\x00"])
    paths = [v.field for v in control_character_violations(request)]
    assert paths == ["model", "messages[0].content[1].text", "stop[1]"]


@pytest.mark.parametrize("text,expected", [
    ("mail alice.doe@example.com please", "mail [EMAIL] please"),
    ("call +44 20 7946 0958 or (415) 555-0134", "call [PHONE] or [PHONE]"),
    ("card 4111 1111 1111 1111, exp 12/29", "card [CARD_NUMBER], exp 12/29"),
    ("order 1234 5678 9012 3456 is not a card", "order 1234 5678 9012 3456 is not a card"),  # fails Luhn
    ("version 1.2.3 on 2026-11-25, 42 items", "version 1.2.3 on 2026-11-25, 42 items"),
])
def test_pii_redaction(text, expected):
    assert redact_pii(text) == expected


def test_prompt_redaction_rewrites_text_parts_only():
    request = lapi.StreamGenerateRequest(model="local/echo", messages=[
        llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[
            llm_pb2.ContentPart(text="I am bob@example.org"),
            llm_pb2.ContentPart(image_url=llm_pb2.ImageUrl(url="https://example.org/a.png"))]),
    ])
    assert redact_prompt(request)
    assert request.messages[0].content[0].text == "I am [EMAIL]"
    assert request.messages[0].content[1].image_url.url == "https://example.org/a.png"
    assert not redact_prompt(request)
