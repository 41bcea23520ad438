"""API keys between protobuf and the domain."""

from __future__ import annotations

from datetime import datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from parley.gateway.v1 import gateway_pb2 as pb
from parley.gateway.v1 import gateway_service_pb2 as api
from services.gateway.models import MAX_KEY_LIFETIME, ApiKey, NewApiKey, RateLimits
from services.runtime import errors
from services.runtime.validation import duration_to_timedelta, timestamp_to_datetime

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
        ttl = duration_to_timedelta(request.ttl, "ttl", maximum=MAX_KEY_LIFETIME)
        if ttl <= timedelta(0):
            raise errors.InvalidArgument.for_field("ttl", "must be positive")
        expire_time = now + ttl
    limits = request.rate_limits
    return NewApiKey(
        name=request.name,
        scopes=tuple(scopes),
        expire_time=expire_time,
        rate_limits=RateLimits(limits.requests_per_minute, limits.concurrent_streams, limits.tokens_per_minute),
        redact_prompt_pii=request.redact_prompt_pii,
    )
