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


_ip6_raw = st.one_of(
    st.binary(min_size=16, max_size=16),
    # zero runs of every length and place, and the IPv4-mapped / -compatible forms
    st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x1234]), min_size=8, max_size=8).map(
        lambda hx: b"".join(h.to_bytes(2, "big") for h in hx)
    ),
    st.binary(min_size=4, max_size=4).map(lambda v4: bytes(10) + b"\xff\xff" + v4),
    st.binary(min_size=4, max_size=4).map(lambda v4: bytes(12) + v4),
)
_component_spec = st.one_of(
    st.tuples(st.just("ip4"), st.binary(min_size=4, max_size=4)),
    st.tuples(st.just("ip6"), _ip6_raw),
    st.tuples(st.sampled_from(["tcp", "udp"]), st.binary(min_size=2, max_size=2)),
    st.tuples(
        st.sampled_from(["dns", "dns4", "dnsaddr"]),
        st.text(alphabet="abcxyz.-", min_size=1, max_size=200).map(str.encode),
    ),
    st.tuples(st.sampled_from(["quic-v1", "p2p-circuit", "ws", "tls"]), st.just(b"")),
)


@given(st.lists(_component_spec, max_size=5))
def test_binary_parse_agrees_with_the_components(specs: list[tuple[str, bytes]]) -> None:
    """from_bytes (inline fast cases, inet_ntop for ip6) gives the components the general
    converters give, keeps the input as the binary form, and round-trips through text."""
    import ipaddress

    from peerstack.core.multiaddr import Component, _value_to_text

    expected = []
    for name, raw in specs:
        if name in ("quic-v1", "p2p-circuit", "ws", "tls"):
            expected.append(Component(name, None, b""))
        else:
            expected.append(Component(name, _value_to_text(name, raw), raw))
            if name == "ip6":  # the same text ipaddress writes, mapped forms included
                assert expected[-1].value == str(ipaddress.IPv6Address(raw))
    data = Multiaddr.from_components(tuple(expected)).to_bytes()
    ma = Multiaddr.from_bytes(data)
    assert ma.components == tuple(expected)
    assert ma.to_bytes() == data
    assert hash(ma) == hash(Multiaddr.from_bytes(bytearray(data)))  # type: ignore[arg-type]
    assert Multiaddr(str(ma)) == ma if specs else True


def test_non_minimal_varints_are_refused() -> None:
    """The binary form is kept as given, so it must be the canonical one."""
    for data in (b"\x84\x00" + bytes(4), b"\x35\x80\x00"):  # ip4's code, a dns length
        with pytest.raises(DecodeError):
            Multiaddr.from_bytes(data)
