from __future__ import annotations

import pytest

from services.runtime.errors import InvalidArgument
from services.runtime.pagination import decode_token, encode_token, page_size


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
