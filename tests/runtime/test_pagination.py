from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone

import pytest

from services.runtime import pagination
from services.runtime.config import ConfigError
from services.runtime.errors import InvalidArgument
from services.runtime.pagination import (
    Position,
    decode_time_and_id,
    decode_token,
    encode_time_and_id,
    encode_token,
    page_size,
)


def test_page_size_defaults_and_bounds():
    assert page_size(0, default=20, maximum=100) == 20
    assert page_size(100, default=20, maximum=100) == 100
    for bad in (-1, 101):
        with pytest.raises(InvalidArgument) as caught:
            page_size(bad, default=20, maximum=100)
        assert caught.value.field_violations[0].field == "page_size"


def test_tokens_round_trip_only_for_their_listing():
    token = encode_token("messages|u|s|1", [42])
    assert decode_token(token, "messages|u|s|1") == [42]
    assert decode_token("", "anything") is None
    with pytest.raises(InvalidArgument) as caught:
        decode_token(token, "messages|u|s|2")
    assert caught.value.reason == "PAGE_TOKEN_MISMATCH"
    for forged in ("%%%", "bm90IGpzb24", encode_token("x", [1])[:-2]):
        with pytest.raises(InvalidArgument):
            decode_token(forged, "x")


def _payload_token(payload: bytes) -> str:
    """A token as an attacker who read the code but lacks the secret would make it."""
    return base64.urlsafe_b64encode(b"\0" * 16 + payload).decode().rstrip("=")


FORGED = [
    "[" * 5000 + "]" * 5000,
    base64.urlsafe_b64encode(("[" * 5000 + "]" * 5000).encode()).decode(),
    _payload_token(json.dumps([1, "0" * 16, [2**63]]).encode()),
    _payload_token(b"[" * 1000),
    "x" * 20_000,
    "",  # the first page: None, not an error
]


@pytest.mark.parametrize("token", FORGED[:-1], ids=range(len(FORGED) - 1))
def test_forged_tokens_are_refused_before_parsing(token):
    with pytest.raises(InvalidArgument) as caught:
        decode_token(token, "x")
    assert caught.value.reason == "PAGE_TOKEN_INVALID"
    assert caught.value.field_violations[0].field == "page_token"


def test_a_token_whose_signature_was_kept_but_payload_changed_is_refused():
    raw = base64.urlsafe_b64decode(_pad(encode_token("x", [5])))
    tampered = raw[:16] + raw[16:].replace(b"[5]", b"[6]")
    with pytest.raises(InvalidArgument) as caught:
        decode_token(base64.urlsafe_b64encode(tampered).decode(), "x")
    assert caught.value.reason == "PAGE_TOKEN_INVALID"


def _pad(token: str) -> str:
    return token + "=" * (-len(token) % 4)


@pytest.mark.parametrize("position", [[2**63], [-(2**63) - 1], [None], [["nested"]], [{"a": 1}], [], [True],
                                      ["x" * 600], list(range(9))])
def test_signed_positions_of_the_wrong_shape_are_refused(position):
    with pytest.raises(InvalidArgument) as caught:
        decode_token(encode_token("x", position), "x")
    assert caught.value.reason == "PAGE_TOKEN_INVALID"


@pytest.mark.parametrize("position, kinds", [
    ([-1], (Position.COUNT,)),
    (["1"], (Position.COUNT,)),
    ([1, 2], (Position.COUNT,)),
    (["0001-01-01T00:00:00+00:00", str(uuid.uuid4())], (Position.TIME, Position.UUID)),
    (["9999-12-31T23:59:59.999999+00:00", str(uuid.uuid4())], (Position.TIME, Position.UUID)),
    (["2026-01-01T00:00:00", str(uuid.uuid4())], (Position.TIME, Position.UUID)),  # no zone
    (["2026-01-01T00:00:00+00:00", "not-a-uuid"], (Position.TIME, Position.UUID)),
    ([7], (Position.TEXT,)),
])
def test_positions_are_checked_against_their_kinds(position, kinds):
    with pytest.raises(InvalidArgument) as caught:
        decode_token(encode_token("x", position), "x", kinds=kinds)
    assert caught.value.reason == "PAGE_TOKEN_INVALID"


def test_typed_positions_convert():
    when, item = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc), uuid.uuid4()
    assert decode_time_and_id(encode_time_and_id("k", when, item), "k") == (when, item)
    assert decode_token(encode_token("k", [2**63 - 1, "m"]), "k", kinds=(Position.COUNT, Position.TEXT)) == [2**63 - 1, "m"]


def test_tokens_are_signed_with_the_configured_secret(monkeypatch):
    token = encode_token("k", [1])
    monkeypatch.setenv(pagination.SECRET_ENV, "another-deployment-secret")
    pagination.page_token_secret.cache_clear()
    try:
        with pytest.raises(InvalidArgument) as caught:
            decode_token(token, "k")
        assert caught.value.reason == "PAGE_TOKEN_INVALID"
        assert decode_token(encode_token("k", [1]), "k") == [1]
    finally:
        monkeypatch.undo()
        pagination.page_token_secret.cache_clear()
    assert decode_token(token, "k") == [1]


def test_without_a_configured_secret_processes_share_one_under_the_state_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(pagination.SECRET_ENV, raising=False)
    monkeypatch.setenv("PARLEY_STATE_DIR", str(tmp_path))
    pagination.page_token_secret.cache_clear()
    try:
        first = pagination.page_token_secret()
        secret_file = tmp_path / pagination.SECRET_FILE_NAME
        assert secret_file.read_bytes() == first and len(first) >= 32
        assert secret_file.stat().st_mode & 0o777 == 0o600
        pagination.page_token_secret.cache_clear()
        assert pagination.page_token_secret() == first  # another process of the same deployment
    finally:
        monkeypatch.undo()
        pagination.page_token_secret.cache_clear()


def test_a_short_configured_secret_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv(pagination.SECRET_ENV, "short")
    pagination.page_token_secret.cache_clear()
    try:
        with pytest.raises(ConfigError):
            pagination.page_token_secret()
    finally:
        monkeypatch.undo()
        pagination.page_token_secret.cache_clear()
