"""Property tests: what users and API callers type gives a value or a ``UsageError``.

The node layer's parsers: CIDs, peer ids and IPNS names from text, ``/peerstack/`` keys and
records (the record validator also sees peers' bytes: a ``RecordError`` or nothing), the
configuration file, and the arguments of the API's verbs.
"""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.app_records import AppRecordValidator, encode_value, record_key
from peerstack.cli.ops import cat_args
from peerstack.config import Config
from peerstack.dht.records import RecordError
from peerstack.errors import UsageError
from peerstack.node import parse_cid
from peerstack.node_dht import parse_name, parse_peer_id

EXAMPLES = settings(max_examples=300, deadline=None)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@EXAMPLES
@given(st.text(max_size=120))
def test_text_parsers_give_a_value_or_a_usage_error(text: str) -> None:
    for parse in (parse_cid, parse_peer_id, parse_name, record_key):
        with contextlib.suppress(UsageError):
            parse(text)


def test_known_good_values_parse() -> None:
    cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    assert str(parse_cid(cid)) == cid
    peer = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    assert str(parse_peer_id(peer)) == peer
    assert parse_name(f"/ipns/{peer}") == parse_peer_id(peer)
    assert record_key("k") == b"/peerstack/k"


@EXAMPLES
@given(st.binary(max_size=80), st.binary(max_size=5000))
def test_app_validator_on_any_bytes(key: bytes, value: bytes) -> None:
    validator = AppRecordValidator()
    try:
        validator.validate(key, value, 0.0)
    except RecordError:
        return
    assert 8 <= len(value) <= 8 + 4096


@EXAMPLES
@given(st.lists(st.binary(min_size=8, max_size=40), min_size=1, max_size=8))
def test_app_validator_selects_the_newest(values: list[bytes]) -> None:
    best = AppRecordValidator().select(b"/peerstack/k", values)
    assert 0 <= best < len(values)
    stamps = [int.from_bytes(v[:8], "big") for v in values]
    assert stamps[best] == max(stamps)


def test_far_future_stamp_is_refused() -> None:
    """A record stamped 2**64-1 would win select forever: validate refuses it; a stamp a few
    seconds ahead (clock skew) is still accepted."""
    validator = AppRecordValidator()
    now = 1_700_000_000.0
    forever = (2**64 - 1).to_bytes(8, "big") + b"x"
    with contextlib.suppress(RecordError):
        validator.validate(b"/peerstack/k", forever, now)
        raise AssertionError("a far-future stamp was accepted")
    an_hour_ahead = encode_value(b"x", int((now + 3600) * 1e9))
    with contextlib.suppress(RecordError):
        validator.validate(b"/peerstack/k", an_hour_ahead, now)
        raise AssertionError("a stamp an hour ahead was accepted")
    validator.validate(b"/peerstack/k", encode_value(b"x", int((now + 5) * 1e9)), now)
    validator.validate(b"/peerstack/k", encode_value(b"x", int(now * 1e9)), now)


def test_newer_write_wins() -> None:
    old, new = encode_value(b"a", 1), encode_value(b"b", 2)
    assert AppRecordValidator().select(b"/peerstack/k", [old, new]) == 1


@EXAMPLES
@given(st.dictionaries(st.sampled_from(["node", "limits", "dht", "content", "x"]), json_values))
def test_config_from_any_toml_shape(data: dict[str, Any]) -> None:
    # Anything else (TypeError, ValueError...) escapes and fails the test.
    with contextlib.suppress(UsageError):
        Config.from_dict(data)


@EXAMPLES
@given(st.dictionaries(st.sampled_from(["cid", "offset", "length", "timeout"]), json_values))
def test_api_arguments_give_values_or_a_usage_error(args: dict[str, Any]) -> None:
    try:
        cid, offset, length, timeout = cat_args(args)
    except UsageError:
        return
    assert isinstance(cid, str)
    assert offset >= 0
    assert length is None or length >= 0
    assert timeout is None or timeout >= 0
