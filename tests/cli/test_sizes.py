"""The size parser: known forms, refusals, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.cli.sizes import MAX_SIZE, format_size, parse_size
from peerstack.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("123", 123),
        ("0", 0),
        ("123B", 123),
        ("10KB", 10_000),
        ("10KiB", 10_240),
        ("10M", 10 * 1024**2),
        ("10MB", 10_000_000),
        ("100MiB", 100 * 1024**2),
        ("1GiB", 1024**3),
        ("1gib", 1024**3),
        ("2 GB", 2_000_000_000),
        ("1.5MiB", 1536 * 1024),
        ("0.5KiB", 512),
        (" 7 ", 7),
        ("1TiB", 1024**4),
    ],
)
def test_known_forms(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "abc", "-1", "1.5", "1.5B", "10XB", "1e6", "MiB", "1 2", "99999999999TiB", "1..2"]
)
def test_refusals(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_plain_integers_round_trip(n: int) -> None:
    assert parse_size(str(n)) == n


@settings(max_examples=300)
@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["KiB", "MiB", "GiB", "KB", "MB", "GB", "K", "M", "G"]),
)
def test_units_multiply(n: int, unit: str) -> None:
    factor = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(unit[0], 1)
    if unit.endswith("B") and not unit.endswith("iB"):
        factor = {"K": 1000, "M": 1000**2, "G": 1000**3}[unit[0]]
    assert parse_size(f"{n}{unit}") == n * factor


@settings(max_examples=500)
@given(st.text(max_size=30))
def test_any_text_gives_int_or_usage_error(text: str) -> None:
    try:
        value = parse_size(text)
    except UsageError:
        return
    assert 0 <= value <= MAX_SIZE


def test_format_size() -> None:
    assert format_size(10) == "10 B"
    assert format_size(1536 * 1024) == "1.5 MiB"
    assert format_size(3 * 1024**3) == "3.0 GiB"
