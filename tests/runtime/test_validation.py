"""The shared field checks: timestamps, durations, floats, NUL characters and update masks."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from services.runtime.errors import InvalidArgument
from services.runtime.validation import (
    duration_to_timedelta,
    float_problem,
    has_control_characters,
    nul_violations,
    timestamp_to_datetime,
    update_mask_paths,
)


def _ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _field_of(error: InvalidArgument) -> str:
    return error.field_violations[0].field


def test_a_timestamp_in_range_becomes_an_aware_utc_datetime():
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime(2026, 5, 1, 12, 30, 15, 250_000))
    assert timestamp_to_datetime(ts, "start_time") == datetime(2026, 5, 1, 12, 30, 15, 250_000, tzinfo=timezone.utc)


@pytest.mark.parametrize("seconds, nanos", [
    (253_402_300_799, 999_999_000),  # 9999-12-31T23:59:59.999999Z: asyncpg would store infinity
    (-62_135_596_800, 0),            # 0001-01-01: -infinity
    (253_402_300_800, 0),            # beyond protobuf's range
    (-62_135_596_801, 0),
    (2**62, 0),
    (1_700_000_000, -1),             # negative nanos
    (1_700_000_000, 1_000_000_000),  # nanos of a whole second
])
def test_timestamps_outside_what_can_be_stored_name_their_field(seconds, nanos):
    with pytest.raises(InvalidArgument) as caught:
        timestamp_to_datetime(_ts(seconds, nanos), "key.expire_time")
    assert _field_of(caught.value) == "key.expire_time"
    assert caught.value.reason == "TIMESTAMP_OUT_OF_RANGE"


def test_a_timestamp_field_can_narrow_the_range():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ts = _ts(int((now - timedelta(days=1)).timestamp()))
    with pytest.raises(InvalidArgument):
        timestamp_to_datetime(ts, "expire_time", earliest=now)
    assert timestamp_to_datetime(ts, "expire_time", latest=now) < now


@pytest.mark.parametrize("seconds, nanos", [
    (315_576_000_000, 0),   # protobuf's maximum, but centuries: now + ttl overflows
    (2**62, 0),
    (315_576_000_001, 0),
    (5, -1),                # signs disagree
    (0, 1_000_000_000),
    (-1, 0),                # negative by default
])
def test_durations_outside_their_bounds_name_their_field(seconds, nanos):
    with pytest.raises(InvalidArgument) as caught:
        duration_to_timedelta(duration_pb2.Duration(seconds=seconds, nanos=nanos), "ttl")
    assert _field_of(caught.value) == "ttl"
    assert caught.value.reason == "DURATION_OUT_OF_RANGE"


def test_durations_within_bounds_convert_exactly():
    assert duration_to_timedelta(duration_pb2.Duration(seconds=90, nanos=500_000_000), "ttl") == timedelta(seconds=90.5)
    assert duration_to_timedelta(duration_pb2.Duration(seconds=-2, nanos=-500_000_000), "offset",
                                 minimum=timedelta(seconds=-10)) == timedelta(seconds=-2.5)
    with pytest.raises(InvalidArgument):
        duration_to_timedelta(duration_pb2.Duration(seconds=3601), "grace_period", maximum=timedelta(hours=1))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 5e-324, -1e-310])
def test_floats_no_database_can_use_are_refused(value):
    assert float_problem(value)


@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, -3.5e300, 2.2250738585072014e-308])
def test_ordinary_floats_pass(value):
    assert float_problem(value) is None


def test_control_characters_and_nul_violations():
    assert has_control_characters("a\x00b")
    assert not has_control_characters("two\nlines\ttabbed")
    assert has_control_characters("two\nlines", allow_newlines=False)
    assert nul_violations({"a": [1, {"b": "x\x00"}]}, "body")[0].field == "body.a[1].b"
    assert nul_violations({"k\x00": 1}, "body")[0].field == "body"
    assert nul_violations({"a": ["fine"]}, "body") == []


def test_update_masks():
    assert update_mask_paths(["title", "title", "metadata"], updatable=("title", "metadata")) == (["title", "metadata"], [])
    paths, violations = update_mask_paths(["title", "owner"], updatable=("title",))
    assert paths == ["title"] and violations[0].field == "update_mask" and "owner" in violations[0].description
    assert update_mask_paths([], updatable=("title", "metadata"), populated=["metadata"]) == (["metadata"], [])
    with pytest.raises(InvalidArgument) as caught:
        update_mask_paths([], updatable=("title",), populated=[])
    assert caught.value.reason == "EMPTY_UPDATE"
    with pytest.raises(InvalidArgument):
        update_mask_paths([], updatable=("title",))
