"""Our stack against js-libp2p 3.x (Node 22): both dial directions, identify, ping, echo,
100 concurrent streams, resets and hangups mid-transfer, perf 100 MiB each way."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from peerstack.node import Node
from tests.interop import interop_cases as cases
from tests.interop.harness import PeerKind, PeerProcess, StartPeer

pytestmark = pytest.mark.interop


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    async with Node(listen=["/ip4/127.0.0.1/tcp/0"], enable=("perf", "echo")) as n:
        yield n


@pytest.fixture
async def js(start_interop_peer: StartPeer) -> PeerProcess:
    return await start_interop_peer(PeerKind.JS)


async def test_we_dial_js(node: Node, js: PeerProcess) -> None:
    await cases.we_dial_them(node, js)


async def test_js_dials_us(node: Node, js: PeerProcess) -> None:
    await cases.they_dial_us(node, js)


async def test_identify_agrees_with_js(node: Node, js: PeerProcess) -> None:
    await cases.identify_agrees(node, js)


async def test_echo_with_js(node: Node, js: PeerProcess) -> None:
    await cases.echo_both_ways(node, js, 1_000_000)


async def test_100_concurrent_streams_with_js(node: Node, js: PeerProcess) -> None:
    await cases.concurrent_streams(node, js, streams=100, size=64 * 1024)


async def test_we_reset_mid_transfer_with_js(node: Node, js: PeerProcess) -> None:
    await cases.we_reset_mid_transfer(node, js)


async def test_js_resets_mid_transfer(node: Node, js: PeerProcess) -> None:
    await cases.they_reset_mid_transfer(node, js)


async def test_js_hangs_up_mid_transfer(node: Node, js: PeerProcess) -> None:
    await cases.they_hang_up_mid_transfer(node, js)


async def test_perf_100mib_each_way_with_js(node: Node, js: PeerProcess) -> None:
    await cases.perf_both_ways(node, js, 100 * cases.MIB)
