"""Fixtures that run real third-party peers (js-libp2p, py-libp2p) for the interop tests.

The peers are installed by ``scripts/setup-interop.sh`` (``make test`` always runs it). When it
has not been run, the tests that need a peer are skipped with a reason that says so; nothing
else skips them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from tests.interop.harness import PeerKind, PeerProcess, StartPeer, missing_setup, start_peer


def require_peer(kind: PeerKind) -> None:
    """Skip the calling test if peers of this kind are not installed."""
    reason = missing_setup(kind)
    if reason is not None:
        pytest.skip(f"{kind.value} interop peer unavailable: {reason}")


@pytest.fixture
async def start_interop_peer() -> AsyncIterator[StartPeer]:
    """A factory: ``peer = await start_interop_peer(PeerKind.JS)``; all are stopped at teardown."""
    started: list[PeerProcess] = []

    async def start(kind: PeerKind, extra_args: Sequence[str] = ()) -> PeerProcess:
        require_peer(kind)
        peer = await start_peer(kind, extra_args=extra_args)
        started.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in started:
            await peer.stop()


@pytest.fixture
async def js_peer(start_interop_peer: StartPeer) -> PeerProcess:
    """A running js-libp2p peer listening on loopback."""
    return await start_interop_peer(PeerKind.JS)


@pytest.fixture
async def py_peer(start_interop_peer: StartPeer) -> PeerProcess:
    """A running py-libp2p peer listening on loopback."""
    return await start_interop_peer(PeerKind.PY)
