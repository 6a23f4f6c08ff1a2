"""Fixed-size chunking of byte streams, without holding more than one chunk in memory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator

from peerstack.errors import UsageError

MAX_CHUNK_SIZE = 2 * 1024 * 1024


def _check(size: int) -> None:
    if not 1 <= size <= MAX_CHUNK_SIZE:
        raise UsageError(f"chunk size must be 1..{MAX_CHUNK_SIZE}, got {size}")


async def fixed_size(source: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Re-cut ``source`` into chunks of exactly ``size`` bytes (the last may be shorter).

    An empty source yields one empty chunk, as helia's chunker does: an empty file is still a
    file with one (empty) leaf.
    """
    _check(size)
    buf = bytearray()
    emitted = False
    async for piece in source:
        buf += piece
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
            emitted = True
    if buf or not emitted:
        yield bytes(buf)


async def file_chunks(path: str | os.PathLike[str], size: int) -> AsyncIterator[bytes]:
    """Chunks of a file on disk, each read in a worker thread."""
    _check(size)
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        emitted = False
        while True:
            chunk = await asyncio.to_thread(_read_full, fh, size)
            if not chunk:
                break
            emitted = True
            yield chunk
            if len(chunk) < size:
                break
        if not emitted:
            yield b""
    finally:
        fh.close()


def _read_full(fh: object, size: int) -> bytes:
    """Read exactly ``size`` bytes unless the file ends first (raw reads may be short)."""
    read = fh.read  # type: ignore[attr-defined]
    parts: list[bytes] = []
    remaining = size
    while remaining:
        piece: bytes = read(remaining)
        if not piece:
            break
        parts.append(piece)
        remaining -= len(piece)
    return b"".join(parts)


async def bytes_source(data: bytes, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    """An async source over in-memory bytes (tests and small inputs)."""
    for i in range(0, len(data), piece):
        yield data[i : i + piece]
