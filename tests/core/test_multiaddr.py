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
