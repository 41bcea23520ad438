"""API keys between protobuf and the domain."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from parley.gateway.v1 import gateway_pb2 as pb
from parley.gateway.v1 import gateway_service_pb2 as api
from services.gateway.models import MAX_KEY_LIFETIME, ApiKey, NewApiKey, RateLimits
from services.runtime import errors

# The ranges google/protobuf/timestamp.proto and duration.proto define; values outside them
# (or with nanos of the wrong sign) are not timestamps or durations at all.
_TIMESTAMP_MIN_SECONDS, _TIMESTAMP_MAX_SECONDS = -62135596800, 253402300799
_DURATION_MAX_SECONDS = 315576000000
_NANOS_MAX = 999_999_999
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def timestamp_to_datetime(value: Timestamp, field: str) -> datetime:
    """An aware UTC datetime, or INVALID_ARGUMENT naming `field` for an invalid timestamp."""
    if not _TIMESTAMP_MIN_SECONDS <= value.seconds <= _TIMESTAMP_MAX_SECONDS or not 0 <= value.nanos <= _NANOS_MAX:
        raise errors.InvalidArgument.for_field(field, "is not a valid timestamp", reason="INVALID_TIMESTAMP")
    return _EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def duration_to_timedelta(value: Duration, field: str) -> timedelta:
    """A timedelta, or INVALID_ARGUMENT naming `field` for an invalid duration."""
    seconds, nanos = value.seconds, value.nanos
    if abs(seconds) > _DURATION_MAX_SECONDS or abs(nanos) > _NANOS_MAX or (seconds and nanos and (seconds < 0) != (nanos < 0)):
        raise errors.InvalidArgument.for_field(field, "is not a valid duration", reason="INVALID_DURATION")
    return timedelta(seconds=seconds, microseconds=int(nanos / 1000))

SCOPE_TO_NAME = {
    pb.SCOPE_LLM: "llm",
    pb.SCOPE_SESSIONS: "sessions",
    pb.SCOPE_FILES: "files",
    pb.SCOPE_ASSISTANTS: "assistants",
    pb.SCOPE_ADMIN: "admin",
}
NAME_TO_SCOPE = {v: k for k, v in SCOPE_TO_NAME.items()}


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def api_key_to_proto(key: ApiKey, now: datetime) -> pb.ApiKey:
    message = pb.ApiKey(
        id=str(key.id),
        name=key.name,
        prefix=key.prefix,
        user_id=key.user_id,
        scopes=[NAME_TO_SCOPE[s] for s in key.scopes if s in NAME_TO_SCOPE],
        state=int(key.state(now)),
        create_time=_ts(key.create_time),
        expire_time=_ts(key.expire_time),
        last_used_time=_ts(key.last_used_time),
        revoke_time=_ts(key.revoke_time),
        rotate_time=_ts(key.rotate_time),
        rate_limits=pb.RateLimits(
            requests_per_minute=key.rate_limits.requests_per_minute,
            concurrent_streams=key.rate_limits.concurrent_streams,
            tokens_per_minute=key.rate_limits.tokens_per_minute,
        ),
        redact_prompt_pii=key.redact_prompt_pii,
    )
    if key.previous_secret_expire_time is not None and key.previous_secret_expire_time > now:
        message.previous_secret_expire_time.CopyFrom(_ts(key.previous_secret_expire_time))
    return message


def new_api_key(request: api.CreateApiKeyRequest, now: datetime) -> NewApiKey:
    scopes = []
    for value in request.scopes:
        if value not in SCOPE_TO_NAME:
            raise errors.InvalidArgument.for_field("scopes", f"unknown scope {value}")
        scopes.append(SCOPE_TO_NAME[value])
    expire_time = None
    which = request.WhichOneof("expiration")
    if which == "expire_time":
        expire_time = timestamp_to_datetime(request.expire_time, "expire_time")
    elif which == "ttl":
        ttl = duration_to_timedelta(request.ttl, "ttl")
        if ttl <= timedelta(0):
            raise errors.InvalidArgument.for_field("ttl", "must be positive")
        if ttl > MAX_KEY_LIFETIME:
            raise errors.InvalidArgument.for_field("ttl", f"must be at most {MAX_KEY_LIFETIME.days} days")
        expire_time = now + ttl
    limits = request.rate_limits
    return NewApiKey(
        name=request.name,
        scopes=tuple(scopes),
        expire_time=expire_time,
        rate_limits=RateLimits(limits.requests_per_minute, limits.concurrent_streams, limits.tokens_per_minute),
        redact_prompt_pii=request.redact_prompt_pii,
    )
