import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerstack.core.multiaddr import Multiaddr
from peerstack.errors import DecodeError

PID = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


@pytest.mark.parametrize(
    "text",
    [
        "/ip4/127.0.0.1/tcp/4001",
        "/ip6/::1/tcp/0",
        "/ip4/1.2.3.4/udp/53",
        "/dns/example.com/tcp/443",
        "/dns4/a.b/tcp/1",
        "/dns6/a.b/tcp/1",
        f"/ip4/127.0.0.1/tcp/4001/p2p/{PID}",
        "/ip4/1.2.3.4/udp/4001/quic-v1",
        "/ip4/1.2.3.4/tcp/443/tls/ws",
        f"/ip4/1.2.3.4/tcp/1/p2p/{PID}/p2p-circuit",
    ],
)
def test_text_and_binary_roundtrip(text: str) -> None:
    ma = Multiaddr(text)
    assert str(ma) == text
    assert Multiaddr.from_bytes(ma.to_bytes()) == ma


def test_known_binary_form() -> None:
    # /ip4/127.0.0.1/tcp/4001 from the multiaddr spec's examples
    assert Multiaddr("/ip4/127.0.0.1/tcp/4001").to_bytes().hex() == "047f000001060fa1"


def test_ipfs_alias_and_p2p_split() -> None:
    ma = Multiaddr(f"/ip4/127.0.0.1/tcp/1/ipfs/{PID}")
    rest, pid = ma.decapsulate_p2p()
    assert pid == PID
    assert str(rest) == "/ip4/127.0.0.1/tcp/1"
    assert ma.tcp_target() == ("127.0.0.1", 1)
    assert Multiaddr("/ip4/1.2.3.4/udp/1").tcp_target() is None


@pytest.mark.parametrize(
    "bad",
    ["", "ip4/1.2.3.4", "/ip4/300.1.1.1", "/tcp/70000", "/ip4", "/foo/1", "/tcp/-1", "/p2p/xyz"],
)
def test_bad_text(bad: str) -> None:
    with pytest.raises(DecodeError):
        Multiaddr(bad)


@given(st.binary(max_size=64))
def test_arbitrary_bytes(data: bytes) -> None:
    try:
        ma = Multiaddr.from_bytes(data)
    except DecodeError:
        return
    assert Multiaddr.from_bytes(ma.to_bytes()) == ma
    assert Multiaddr(str(ma)) == ma if str(ma) else True


@given(st.text(max_size=64))
def test_arbitrary_text(text: str) -> None:
    with contextlib.suppress(DecodeError):
        Multiaddr(text)


@given(st.text(alphabet="0123456789.x ", max_size=20))
def test_ip4_fast_parser_agrees_with_ipaddress(text: str) -> None:
    """Our dotted-quad parser accepts and refuses exactly what ``ipaddress`` does."""
    import ipaddress

    try:
        expected: bytes | None = ipaddress.IPv4Address(text).packed
    except ValueError:
        expected = None
    try:
        got: bytes | None = Multiaddr(f"/ip4/{text}").to_bytes()[1:]
    except DecodeError:
        got = None
    assert got == expected


@pytest.mark.parametrize("text", ["1.2.3.4", "0.0.0.0", "255.255.255.255", "10.0.0.1"])
def test_ip4_text_round_trips(text: str) -> None:
    ma = Multiaddr(f"/ip4/{text}/tcp/1")
    assert ma.value_for("ip4") == text
    assert str(Multiaddr.from_bytes(ma.to_bytes())) == f"/ip4/{text}/tcp/1"


@pytest.mark.parametrize(
    "bad", ["01.2.3.4", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1..2.3", "\u0661.2.3.4", "+1.2.3.4"]
)
def test_ip4_bad_forms(bad: str) -> None:
    with pytest.raises(DecodeError):
        Multiaddr(f"/ip4/{bad}")


def test_parsing_is_memoized_and_bounded() -> None:
    from peerstack.core import multiaddr

    text = f"/ip4/127.0.0.1/tcp/4001/p2p/{PID}"
    first = Multiaddr(text)
    again = Multiaddr(text)
    assert again == first
    assert again.components is first.components  # parsed once
    assert (
        Multiaddr.from_bytes(first.to_bytes()).components
        is Multiaddr.from_bytes(first.to_bytes()).components
    )
    for cache in (multiaddr._parse_text, multiaddr._parse_bytes):
        assert cache.cache_info().maxsize == multiaddr.PARSE_CACHE_SIZE
    # more distinct addresses than the cache holds: it stays at its bound
    for port in range(multiaddr.PARSE_CACHE_SIZE + 10):
        Multiaddr.from_bytes(Multiaddr(f"/ip4/10.0.0.1/tcp/{port}").to_bytes())
    assert multiaddr._parse_text.cache_info().currsize == multiaddr.PARSE_CACHE_SIZE
    assert multiaddr._parse_bytes.cache_info().currsize == multiaddr.PARSE_CACHE_SIZE
    # overlong input is refused before it reaches a cache
    with pytest.raises(DecodeError):
        Multiaddr("/dns/" + "a" * (4 * multiaddr.MAX_MULTIADDR_BYTES))
    with pytest.raises(DecodeError):
        Multiaddr.from_bytes(b"\x04" * (multiaddr.MAX_MULTIADDR_BYTES + 1))
    # a bytearray or memoryview parses too (not cached: not hashable as bytes)
    assert Multiaddr.from_bytes(bytearray(first.to_bytes())) == first  # type: ignore[arg-type]
    assert Multiaddr.from_bytes(memoryview(first.to_bytes())) == first  # type: ignore[arg-type]


def test_p2p_helpers() -> None:
    ma = Multiaddr(f"/ip4/127.0.0.1/tcp/1/p2p/{PID}")
    bare, pid = ma.decapsulate_p2p()
    assert pid == PID
    assert bare.to_bytes() == Multiaddr("/ip4/127.0.0.1/tcp/1").to_bytes()
    assert bare == Multiaddr("/ip4/127.0.0.1/tcp/1")
    assert ma.p2p_bytes is not None
    assert bare.p2p_bytes is None
    from peerstack.core.peer_id import PeerId

    assert ma.p2p_bytes == PeerId.from_string(PID).to_bytes()
    cid_form = Multiaddr(f"/ip4/127.0.0.1/tcp/1/p2p/{PeerId.from_string(PID).to_cid_string()}")
    assert str(cid_form) == str(ma)  # canonical base58 text whatever form came in
