"""Fixtures shared by the net and host tests: real BasicHosts on 127.0.0.1 with ephemeral
ports, closed after. Each folder's conftest re-exports them, so that the uvloop loop factory
applies to those folders only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import pytest

from peerstack.core.identity import PrivateKey
from peerstack.host.host import BasicHost
from peerstack.host.limits import Limits
from peerstack.net.tcp import best_event_loop_policy

MakeHost = Callable[..., Awaitable[BasicHost]]
Eventually = Callable[..., Awaitable[None]]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    # The production loop (uvloop when installed): its transports differ from asyncio's.
    return {"loop": best_event_loop_policy().new_event_loop}


@pytest.fixture
async def make_host() -> AsyncIterator[MakeHost]:
    hosts: list[BasicHost] = []

    async def make(limits: Limits | None = None, listen: bool = True) -> BasicHost:
        host = BasicHost(
            PrivateKey.generate(),
            listen_addrs=["/ip4/127.0.0.1/tcp/0"] if listen else [],
            limits=limits,
        )
        await host.start()
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        await host.close()


@pytest.fixture
def eventually() -> Eventually:
    """``await eventually(lambda: cond)``: poll until true (the other side of a connection
    acts in its own time; a fixed sleep is flaky on a loaded machine)."""

    async def wait(condition: Callable[[], bool], within: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not condition():
            if loop.time() > deadline:
                raise AssertionError(f"condition not met within {within} s")
            await asyncio.sleep(0.01)

    return wait
