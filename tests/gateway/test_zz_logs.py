"""Runs last in this package: no secret, credential or sample of PII that any gateway test
sent appears in a log line captured during the run, from this process or from the gateway
and backend processes the tests started. Also checks the masking rules themselves."""

from __future__ import annotations

import pytest

from services.runtime.logs import mask_secrets
from tests.gateway.conftest import LOG_BUFFER, PROCESS_LOGS, SENSITIVE

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


def test_no_secret_or_pii_in_any_log_line():
    chunks = [LOG_BUFFER.getvalue()]
    for path in PROCESS_LOGS:
        if path.exists():
            chunks.append(path.read_text(errors="replace"))
    logs = "\n".join(chunks)
    assert logs.strip(), "no log line was captured at all"
    leaked = [s[:16] + "…" for s in SENSITIVE | set(SAMPLE_PII) if s in logs]
    assert not leaked, f"secrets or PII in logs: {leaked}"
    # The secret parts of API keys never appear, even without their prefix.
    assert not [s for s in SENSITIVE if s.startswith("pk_live_") and s[8:] in logs]
