"""The per-source rate limit of audited authentication failures, on a clock the test moves:
each source gets its own first N events per minute, then one summary with the count; a
source that goes quiet is summarised by the sweep; memory stays bounded."""

from __future__ import annotations

import logging

from services.gateway import auth_failures
from services.gateway.auth_failures import AuthFailures
from services.runtime import errors
from services.runtime.audit import AuditLog, AuditSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def failure(reason: str = "API_KEY_UNKNOWN") -> errors.Unauthenticated:
    return errors.Unauthenticated("no", reason=reason)


def recorded(caplog) -> list[dict]:
    return [r.fields["audit"] for r in caplog.records if r.name == "parley.audit"]


def test_each_source_has_its_own_budget_per_minute_then_a_summary(caplog):
    clock = Clock()
    limiter = AuthFailures(AuditLog("gateway", None, AuditSettings(retention_days=0)), per_minute=2, clock=clock)
    with caplog.at_level(logging.INFO, logger="parley.audit"):
        for _ in range(5):
            limiter.failed(failure(), source="10.0.0.1", method="/m")
        for _ in range(2):
            limiter.failed(failure("CREDENTIALS_MALFORMED"), source="10.0.0.2", method="/m")
        assert [e["source"] for e in recorded(caplog)] == ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2"]
        clock.now += 61  # a new minute for 10.0.0.1: first its summary, then events again
        limiter.failed(failure("CREDENTIALS_MISSING"), source="10.0.0.1", method="/m")
        events = recorded(caplog)[4:]
        assert events[0]["details"] == {"summary": True, "suppressed": 3, "window_seconds": 60,
                                        "reasons": "API_KEY_UNKNOWN"}
        assert events[1]["details"] == {"reason": "CREDENTIALS_MISSING", "credential": "none"}
        # 10.0.0.2 never went over: its minute ends without a summary.
        clock.now += 61
        limiter.sweep()
        assert len(recorded(caplog)) == 6 and limiter.tracked_sources == 0


def test_a_flood_of_sources_is_summarised_early_to_bound_memory(caplog, monkeypatch):
    monkeypatch.setattr(auth_failures, "MAX_SOURCES", 50)
    limiter = AuthFailures(AuditLog("gateway", None, AuditSettings(retention_days=0)), per_minute=1, clock=Clock())
    with caplog.at_level(logging.INFO, logger="parley.audit"):
        for i in range(200):
            for _ in range(3):
                limiter.failed(failure(), source=f"10.1.{i // 250}.{i % 250}", method="/m")
    assert limiter.tracked_sources <= 50
    events = recorded(caplog)
    singles = [e for e in events if not e["details"].get("summary")]
    summaries = [e for e in events if e["details"].get("summary")]
    assert len(singles) == 200  # one per source, however many sources
    assert sum(e["details"]["suppressed"] for e in summaries) + 2 * limiter.tracked_sources == 400


def test_credential_kinds_come_from_the_reason_alone():
    assert [auth_failures.credential_kind(r) for r in (
        "CREDENTIALS_MISSING", "CREDENTIALS_MALFORMED", "API_KEY_REVOKED", "TOKEN_EXPIRED", "JWT_NOT_ACCEPTED")] == [
        "none", "malformed", "api_key", "jwt", "jwt"]
