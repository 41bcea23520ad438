"""Authentication failures in the audit log, rate-limited per source.

Each source (the caller's address, host only) gets an `auth.failed` event for each of its
first `per_minute` failures in a minute; past that, failures are only counted, and when the
minute is over the source gets one summary event with the count (and the reasons seen). A
flood of bad credentials therefore costs the log a bounded number of rows per source.

An event never holds the credential, or any part of it: it says what kind of credential was
presented (`api_key`, `jwt`, `none`, `malformed`), the reason it failed, and the method. Only
when the credential was a real key that stopped working (revoked, expired, rotated away) does
the event name the key's id and its owner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from services.gateway.apikeys import failed_key
from services.runtime import errors
from services.runtime.audit import AuditLog, Kind, Outcome

WINDOW_SECONDS = 60.0
DEFAULT_PER_MINUTE = 10
# Sources tracked at once; past it, windows are summarised and forgotten early.
MAX_SOURCES = 10_000


def credential_kind(reason: str) -> str:
    if reason == "CREDENTIALS_MISSING":
        return "none"
    if reason.startswith("API_KEY_"):
        return "api_key"
    if reason.startswith("TOKEN_") or reason == "JWT_NOT_ACCEPTED":
        return "jwt"
    return "malformed"


@dataclass
class _Window:
    start: float
    count: int = 0
    suppressed: int = 0
    reasons: set[str] = field(default_factory=set)


class AuthFailures:
    def __init__(self, audit: AuditLog, *, per_minute: int = DEFAULT_PER_MINUTE, clock=time.monotonic) -> None:
        self._audit = audit
        self._per_minute = per_minute
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def failed(self, error: errors.Unauthenticated, *, source: str, method: str) -> None:
        now = self._clock()
        window = self._windows.get(source)
        if window is None or now - window.start >= WINDOW_SECONDS:
            if window is not None:
                self._summarise(source, window)
            if len(self._windows) >= MAX_SOURCES:
                self.sweep(force=True)
            window = self._windows[source] = _Window(now)
        window.count += 1
        if window.count > self._per_minute:
            window.suppressed += 1
            window.reasons.add(error.reason)
            return
        key = failed_key(error)
        self._audit.record(
            Kind.AUTH_FAILED, outcome=Outcome.DENIED, actor="", source=source, resource=method,
            subject=key.user_id if key is not None else "",
            details={"reason": error.reason, "credential": credential_kind(error.reason),
                     **({"api_key_id": str(key.id)} if key is not None else {})})

    def _summarise(self, source: str, window: _Window) -> None:
        if window.suppressed:
            self._audit.record(
                Kind.AUTH_FAILED, outcome=Outcome.DENIED, actor="", source=source,
                details={"summary": True, "suppressed": window.suppressed, "window_seconds": int(WINDOW_SECONDS),
                         "reasons": ",".join(sorted(window.reasons))[:200]})

    def sweep(self, *, force: bool = False) -> None:
        """Summarises and forgets the windows that are over (every one, with `force`)."""
        now = self._clock()
        for source, window in list(self._windows.items()):
            if force or now - window.start >= WINDOW_SECONDS:
                self._summarise(source, window)
                del self._windows[source]

    @property
    def tracked_sources(self) -> int:
        return len(self._windows)
