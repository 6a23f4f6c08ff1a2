"""echo ``/echo/1.0.0``: send back everything until the remote closes, then close.

A test protocol: it exercises flow control both ways at once. The server holds at most one
read's worth of data (``CHUNK``), since it writes each chunk back before reading the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from peerstack.core.peer_id import PeerId
from peerstack.errors import LimitExceeded, PeerstackError
from peerstack.host.interface import Host, Stream

log = logging.getLogger(__name__)

ECHO = "/echo/1.0.0"
CHUNK = 64 * 1024
IDLE_TIMEOUT = 60.0


async def handle_echo(stream: Stream, idle_timeout: float = IDLE_TIMEOUT) -> None:
    """Echo ``stream`` back to its sender until it closes its write side."""
    try:
        while True:
            async with asyncio.timeout(idle_timeout):
                chunk = await stream.read(CHUNK)
            if not chunk:
                break
            await stream.write(chunk)
        await stream.close()
    except (PeerstackError, OSError, TimeoutError) as exc:
        log.debug("echo stream from %s ended: %s", stream.remote_peer, exc)
        stream.reset()


async def echo_stream(stream: Stream, data: bytes) -> bytes:
    """Send ``data`` on an echo stream, close our side, and return what came back.

    Writing and reading run at once, so payloads larger than the flow-control windows cannot
    deadlock. More bytes back than we sent is the peer's fault (``LimitExceeded``).
    """

    async def writer() -> None:
        view = memoryview(data)
        for i in range(0, len(view), CHUNK):
            await stream.write(view[i : i + CHUNK])
        await stream.close()

    write_task = asyncio.get_running_loop().create_task(writer())
    received = bytearray()
    try:
        while True:
            chunk = await stream.read(CHUNK)
            if not chunk:
                break
            received += chunk
            if len(received) > len(data):
                raise LimitExceeded("echo peer sent back more than we sent")
        await write_task
    finally:
        if not write_task.done():
            write_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await write_task
    return bytes(received)


async def echo(host: Host, peer: PeerId, data: bytes) -> bytes:
    """Open an echo stream to ``peer`` and round-trip ``data``."""
    stream = await host.new_stream(peer, [ECHO])
    try:
        return await echo_stream(stream, data)
    except BaseException:
        stream.reset()
        raise


def register(host: Host) -> Sequence[str]:
    """Serve echo on ``host``; return the protocol ids registered."""
    host.set_stream_handler(ECHO, handle_echo)
    return (ECHO,)
