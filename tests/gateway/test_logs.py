"""No secret, credential or sample of PII reaches a log line: the masking rules themselves,
and everything captured from this process and from the gateway and backend processes the
tests started. The check runs in any order: this test sends its own secrets and PII through
the gateway first, and the same check runs again when the session ends
(`tests/gateway/conftest.py`), over what every gateway test sent."""

from __future__ import annotations

import grpc
import pytest

from parley.llm.v1 import llm_pb2
from parley.llm.v1 import llm_service_pb2 as lapi
from parley.llm.v1 import llm_service_pb2_grpc as lgrpc
from parley.sessions.v1 import sessions_pb2
from parley.sessions.v1 import sessions_service_pb2 as sapi
from parley.sessions.v1 import sessions_service_pb2_grpc as sgrpc
from services.runtime.logs import mask_secrets
from tests.gateway.conftest import SENSITIVE, bearer, captured_logs, leaked_secrets, sensitive

SAMPLE_PII = ["alice.doe@example.com", "+1 415 555 0134", "(415) 555-0134", "4111 1111 1111 1111",
              "4111-1111-1111-1111"]


@pytest.mark.parametrize("text", [
    "authorization: Bearer pk_live_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG",
    "x-parley-identity=eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl",
    "contact alice.doe@example.com now", "call +1 415 555 0134 today", "call (415) 555-0134",
    "card 4111 1111 1111 1111 expired", "OPENAI_API_KEY=sk-proj-abcdefghijklmnop1234", '{"api_key": "abc123xyz"}',
    "redis://:hunter2@127.0.0.1:6379/0", "postgresql://parley:hunter2@db:5432/parley",
])
def test_masking_rules(text):
    masked = mask_secrets(text)
    assert "REDACTED" in masked
    for secret in ("pk_live_0123", "eyJzdWIi", "alice.doe", "555 0134", "555-0134", "4111", "sk-proj", "abc123xyz",
                   "hunter2"):
        assert secret not in masked


def test_masking_keeps_ids_times_and_addresses_readable():
    line = "session 0190a0f0-0000-7000-8000-000000000000 at 2026-11-25T15:36:43Z from 127.0.0.1:50051 in 12.5 ms"
    assert mask_secrets(line) == line


async def test_no_secret_or_pii_in_any_log_line(gw_channel, make_key, jwks):
    secret = await make_key("logs-user", ["sessions", "llm"], redact=True)
    token = jwks.token("k1", user="user_logs")
    sessions = sgrpc.SessionServiceStub(gw_channel)
    session = await sessions.CreateSession(sapi.CreateSessionRequest(title="logs"), metadata=bearer(secret))
    await sessions.CreateMessage(sapi.CreateMessageRequest(
        session_id=session.id, role=sessions_pb2.ROLE_USER,
        content=[sessions_pb2.ContentPart(text=" ".join(SAMPLE_PII))]), metadata=bearer(secret))
    await sessions.ListSessions(sapi.ListSessionsRequest(), metadata=bearer(token))
    stream = lgrpc.LLMServiceStub(gw_channel).StreamGenerate(lapi.StreamGenerateRequest(model="local/echo", messages=[
        llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=[llm_pb2.ContentPart(text=" ".join(SAMPLE_PII))])]),
        metadata=bearer(secret))
    async for _ in stream:
        pass
    # Refused credentials are logged as refusals, never quoted.
    for credential in (secret[:-1] + ("A" if secret[-1] != "A" else "B"), token + "x"):
        sensitive(credential)
        with pytest.raises(grpc.aio.AioRpcError):
            await sessions.ListSessions(sapi.ListSessionsRequest(), metadata=bearer(credential))
    assert captured_logs().strip(), "no log line was captured at all"
    assert secret in SENSITIVE and token in SENSITIVE
    leaked = leaked_secrets(SAMPLE_PII)
    assert not leaked, f"secrets or PII in logs: {leaked}"
