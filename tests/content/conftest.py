"""Fixtures for the content tests: deterministic bytes, a blockstore, and an in-memory host."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peerstack.content.blockstore import Blockstore, FsyncPolicy

VECTORS_PATH = Path(__file__).with_name("helia_vectors.json")


def pattern(n: int) -> bytes:
    """The byte pattern of helia_vectors.mjs: sha256(uint64_be(0)) || sha256(uint64_be(1)) || ..."""
    blocks = (hashlib.sha256(j.to_bytes(8, "big")).digest() for j in range((n + 31) // 32))
    return b"".join(blocks)[:n]


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
    return data


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Blockstore]:
    bs = Blockstore(tmp_path / "repo", fsync=FsyncPolicy.NEVER)
    yield bs
    bs.close()
