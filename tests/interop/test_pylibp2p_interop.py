"""Our stack against py-libp2p 0.8.1 (trio, in its own venv): both dial directions, identify,
ping, echo, 100 concurrent streams, resets and hangups mid-transfer, perf 16 MiB each way
(py-libp2p moves about 60-90 MB/s here)."""

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
async def py(start_interop_peer: StartPeer) -> PeerProcess:
    return await start_interop_peer(PeerKind.PY)


async def test_we_dial_py(node: Node, py: PeerProcess) -> None:
    await cases.we_dial_them(node, py)


async def test_py_dials_us(node: Node, py: PeerProcess) -> None:
    await cases.they_dial_us(node, py)


async def test_identify_agrees_with_py(node: Node, py: PeerProcess) -> None:
    await cases.identify_agrees(node, py)


async def test_echo_with_py(node: Node, py: PeerProcess) -> None:
    await cases.echo_both_ways(node, py, 1_000_000)


async def test_100_concurrent_streams_with_py(node: Node, py: PeerProcess) -> None:
    await cases.concurrent_streams(node, py, streams=100, size=64 * 1024)


async def test_we_reset_mid_transfer_with_py(node: Node, py: PeerProcess) -> None:
    await cases.we_reset_mid_transfer(node, py)


async def test_py_resets_mid_transfer(node: Node, py: PeerProcess) -> None:
    await cases.they_reset_mid_transfer(node, py)


async def test_py_hangs_up_mid_transfer(node: Node, py: PeerProcess) -> None:
    await cases.they_hang_up_mid_transfer(node, py)


async def test_perf_16mib_each_way_with_py(node: Node, py: PeerProcess) -> None:
    await cases.perf_both_ways(node, py, 16 * cases.MIB)
