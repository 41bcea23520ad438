"""Structured logs: one JSON object per line, with trace ids, and secrets masked.

The level comes from `PARLEY_<SERVICE>_LOG_LEVEL`, else `PARLEY_LOG_LEVEL` (default INFO).
Whatever a log line carries passes through `mask_secrets` first, so a bearer token, API key,
email address, phone or card number pasted into an error message never reaches the log.
Message content is never logged by Parley's own code.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from opentelemetry import trace

_SECRET_PATTERNS = [
    # Credentials: bearer and basic auth, JWTs (API tokens, internal identities), API keys.
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 [REDACTED]"),
    (re.compile(r"(?i)\b(basic)\s+[A-Za-z0-9+/=]{8,}"), r"\1 [REDACTED]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "[REDACTED_JWT]"),
    (re.compile(r"\b(sk|pk|rk|pky|ak)[-_][A-Za-z0-9_-]{12,}"), "[REDACTED_KEY]"),
    (re.compile(r"\b(?:AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
                r"|xox[abprs]-[A-Za-z0-9-]{10,})"), "[REDACTED_KEY]"),
    (re.compile(r"(?i)(password|passwd|secret|api[_-]?key|token|authorization|x-parley-identity)"
                r"([\"']?\s*[=:]\s*[\"']?)(?!\[REDACTED|bearer |basic )([^\s\"',}]+)"), r"\1\2[REDACTED]"),
    (re.compile(r"(?i)(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+@"), r"\1[REDACTED]@"),
    (re.compile(r"(?i)(redis(?:s)?://[^:/@\s]*:)[^@\s]+@"), r"\1[REDACTED]@"),
    # PII: emails, card numbers (and other long digit runs), phone numbers.
    (re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), "[REDACTED_EMAIL]"),
    # Digit runs inside ids (UUIDs, hex) are not card numbers: they must stand alone.
    (re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w-])"), "[REDACTED_NUMBER]"),
    (re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){2,4}"
                r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?!\w)"), "[REDACTED_PHONE]"),
]


def mask_secrets(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        # Structured fields of the line (the per-call line of services/runtime/metrics.py).
        fields = getattr(record, "fields", None)
        if fields:
            entry.update({k: mask_secrets(v) if isinstance(v, str) else v for k, v in fields.items()})
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid and "trace_id" not in entry:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(service: str, level: str | None = None) -> None:
    from services.runtime.config import env_str

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # PARLEY_<SERVICE>_LOG_LEVEL over PARLEY_LOG_LEVEL.
    root.setLevel((level or env_str(f"PARLEY_{service.upper()}_LOG_LEVEL") or env_str("PARLEY_LOG_LEVEL", "INFO")).upper())
