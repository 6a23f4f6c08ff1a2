"""Fixtures for the content tests: helia's vectors, a blockstore, an in-memory network."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from content_testkit import MemNetwork

from peerstack.content.blockstore import Blockstore, FsyncPolicy

VECTORS_PATH = Path(__file__).with_name("helia_vectors.json")


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
    return data


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Blockstore]:
    bs = Blockstore(tmp_path / "repo", fsync=FsyncPolicy.NEVER)
    yield bs
    bs.close()


@pytest.fixture
def net() -> MemNetwork:
    return MemNetwork()
