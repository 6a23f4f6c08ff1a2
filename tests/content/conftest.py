"""Fixtures for the content tests: helia's vectors, a blockstore, an in-memory network."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The tests import their helpers as ``tests.content.content_testkit`` (the name mypy gives that
# file), so the repository root must be importable.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from peerstack.content.blockstore import Blockstore, FsyncPolicy  # noqa: E402
from tests.content.content_testkit import MemNetwork  # noqa: E402

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
