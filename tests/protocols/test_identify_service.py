"""IdentifyService on real hosts: who waits for a result, and when the stream is closed."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import PeerstackError
from peerstack.host.host import BasicHost
from peerstack.protocols.identify import IdentifyService, ObservedAddrs
from tests.hostkit import Eventually, MakeHost, eventually, make_host

__all__ = ["eventually", "make_host"]  # fixtures used below


def start_identify(host: BasicHost, timeout: float = 15.0) -> IdentifyService:
    service = IdentifyService(
        host, host.peerstore, host.private_key.public_key, host.protocols, timeout=timeout
    )
    service.start()
    return service


def addr_of(host: BasicHost) -> str:
    return f"{host.listen_addrs()[0]}/p2p/{host.peer_id}"


async def test_every_caller_gets_the_result_and_a_cancelled_one_leaves_the_rest(
    make_host: MakeHost,
) -> None:
    server, client = await make_host(), await make_host(listen=False)
    services = [start_identify(server), start_identify(client)]
    try:
        peer = await client.dial(addr_of(server))
        waits = [asyncio.ensure_future(services[1].wait_identified(peer)) for _ in range(3)]
        waits[0].cancel()
        infos = await asyncio.gather(*waits[1:])
        assert all(info.peer == server.peer_id for info in infos)
        assert "/ipfs/id/1.0.0" in infos[0].protocols
        with pytest.raises(asyncio.CancelledError):
            await waits[0]
        assert not services[1]._callers  # nobody left registered
        # Once done, the result is there at once (no waiting, no registration).
        again = await services[1].wait_identified(peer)
        assert again.peer == server.peer_id
        assert not services[1]._callers
    finally:
        for service in services:
            await service.close()


async def test_waiting_for_a_peer_before_it_connects(make_host: MakeHost) -> None:
    server, client = await make_host(), await make_host(listen=False)
    services = [start_identify(server), start_identify(client, timeout=10.0)]
    try:
        early = [asyncio.ensure_future(services[1].wait_identified(server.peer_id)) for _ in "ab"]
        await asyncio.sleep(0)
        early[0].cancel()  # one impatient caller must not take the other's wait away
        await asyncio.sleep(0)
        assert server.peer_id in services[1]._waiters
        await client.dial(addr_of(server))
        info = await asyncio.wait_for(early[1], 10)
        assert info.peer == server.peer_id
        with pytest.raises(asyncio.CancelledError):
            await early[0]
        assert not services[1]._waiters
        assert not services[1]._callers
    finally:
        for service in services:
            await service.close()


async def test_a_wait_for_an_absent_peer_times_out_and_is_forgotten(make_host: MakeHost) -> None:
    host = await make_host(listen=False)
    service = start_identify(host, timeout=0.05)
    stranger = PeerId.from_public_key(PrivateKey.generate().public_key)
    try:
        results = await asyncio.gather(
            service.wait_identified(stranger),
            service.wait_identified(stranger),
            return_exceptions=True,
        )
        assert all(isinstance(r, TimeoutError) for r in results)
        assert not service._waiters
        assert not service._callers
    finally:
        await service.close()


async def test_identify_closes_its_stream_after_the_result(
    make_host: MakeHost, eventually: Eventually
) -> None:
    """The FIN goes after the waiters are told, but it goes: no stream stays half open."""
    server, client = await make_host(), await make_host(listen=False)
    services = [start_identify(server), start_identify(client)]
    try:
        peer = await client.dial(addr_of(server))
        await services[1].wait_identified(peer)
        await services[0].wait_identified(client.peer_id)
        info = await services[1].identify(peer)  # the public call too
        assert info.peer == server.peer_id
        conns = [client.connection(peer), server.connection(client.peer_id)]
        await eventually(lambda: all(c is not None and c.num_streams == 0 for c in conns))
    finally:
        for service in services:
            await service.close()


async def test_a_disconnect_during_identify_reaches_every_caller(make_host: MakeHost) -> None:
    server, client = await make_host(), await make_host(listen=False)
    # The server never answers identify: the run waits until the peer goes away.
    hold = asyncio.Event()

    async def silent(stream: object) -> None:
        await hold.wait()

    service = start_identify(client)
    server.set_stream_handler("/ipfs/id/1.0.0", silent)
    try:
        peer = await client.dial(addr_of(server))
        waits = [asyncio.ensure_future(service.wait_identified(peer)) for _ in range(2)]
        await asyncio.sleep(0.05)
        await client.disconnect(peer)
        for wait in waits:
            with pytest.raises(PeerstackError):
                await asyncio.wait_for(wait, 10)
        assert not service._callers
    finally:
        hold.set()
        with contextlib.suppress(PeerstackError):
            await service.close()


def test_observed_addrs_evicts_the_least_observed_oldest_first() -> None:
    obs = ObservedAddrs(max_addrs=3)
    peers = [PeerId.from_public_key(PrivateKey.generate().public_key) for _ in range(2)]
    a, b, c = (Multiaddr(f"/ip4/1.1.1.{i}/tcp/1") for i in range(3))
    obs.add(a, peers[0])
    obs.add(b, peers[0])
    obs.add(b, peers[1])  # b: two observers
    obs.add(c, peers[0])
    obs.add(Multiaddr("/ip4/9.9.9.9/tcp/1"), peers[0])  # full: a (one observer, oldest) goes
    assert a not in obs.addrs()
    assert obs.addrs()[0] == b
    assert set(obs.addrs()) == {b, c, Multiaddr("/ip4/9.9.9.9/tcp/1")}
