"""The Bitswap upload caps, from config.toml and ``daemon --upload-rate`` down to ``Bitswap``."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerstack.cli.daemon import _upload_rate
from peerstack.config import EPHEMERAL_LISTEN, Config
from peerstack.errors import UsageError
from peerstack.repo import Repo
from tests.cli.clitools import one_line_error, peerstack


def test_upload_rates_round_trip_through_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    for cfg in (
        Config(upload_rate=20_000_000, upload_rate_per_peer=2_500_000.5),
        Config(upload_rate=1_000),
        Config(upload_rate_per_peer=7),
        Config(),
    ):
        path.write_text(cfg.to_toml())
        assert Config.load(path) == cfg
    # No cap by default: the keys are written commented out, and read back as None.
    assert "# upload_rate = " in Config().to_toml()
    assert Config.load(path).upload_rate is None


def test_upload_rate_from_toml_text(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[bitswap]\nupload_rate = 20_000_000\nupload_rate_per_peer = 1_000_000\n")
    cfg = Config.load(path)
    assert (cfg.upload_rate, cfg.upload_rate_per_peer) == (20_000_000, 1_000_000)


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"upload_rat": 10}, "unknown \\[bitswap\\] key"),
        ({"upload_rate": "20MB"}, "upload_rate must be a positive number"),
        ({"upload_rate": 0}, "upload_rate must be a positive number"),
        ({"upload_rate": -5}, "upload_rate must be a positive number"),
        ({"upload_rate": True}, "upload_rate must be a positive number"),
        ({"upload_rate": float("inf")}, "upload_rate must be a positive number"),
        ({"upload_rate_per_peer": float("nan")}, "upload_rate_per_peer must be a positive"),
    ],
)
def test_bad_bitswap_section_is_refused(section: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        Config.from_dict({"bitswap": section})


def test_upload_rate_option_parses_sizes() -> None:
    assert _upload_rate(None) is None
    assert _upload_rate("20MB") == 20_000_000
    assert _upload_rate("5MiB") == 5 * 1024 * 1024
    assert _upload_rate("1234") == 1234
    for bad in ("0", "20XB", "fast", "1.5B"):
        with pytest.raises(UsageError, match="--upload-rate"):
            _upload_rate(bad)


@pytest.mark.parametrize("value", ["20XB", "fast", "0"])
def test_daemon_refuses_bad_upload_rate_in_one_line(tmp_path: Path, value: str) -> None:
    proc = peerstack("daemon", "--repo", str(tmp_path / "r"), "--upload-rate", value)
    line = one_line_error(proc)
    assert "--upload-rate" in line
    # Refused before the node (or the repo) was touched.
    assert not (tmp_path / "r").exists()


async def test_node_hands_upload_rate_to_bitswap(tmp_path: Path) -> None:
    from peerstack.node import Node

    repo = Repo.open(tmp_path / "r")
    cfg = Config(listen=EPHEMERAL_LISTEN, upload_rate=9_000, upload_rate_per_peer=3_000)
    # From the config: both caps reach the limiter Bitswap paces its blocks with.
    async with Node(repo=repo, config=cfg, dht=False) as node:
        limit = node.bitswap.upload_limit
        assert limit.node is not None
        assert limit.node.rate == 9_000
        assert limit.per_peer_rate == 3_000
    # ``upload_rate=`` (what --upload-rate passes) overrides the node-wide cap only.
    async with Node(repo=repo, config=cfg, dht=False, upload_rate=20_000_000) as node:
        limit = node.bitswap.upload_limit
        assert limit.node is not None
        assert limit.node.rate == 20_000_000
        assert limit.per_peer_rate == 3_000
    # Without a cap anywhere, nothing is paced.
    async with Node(repo=repo, config=Config(listen=EPHEMERAL_LISTEN), dht=False) as node:
        assert not node.bitswap.upload_limit.active


def test_node_refuses_bad_upload_rate(tmp_path: Path) -> None:
    from peerstack.node import Node

    with pytest.raises(UsageError, match="upload_rate"):
        Node(repo=tmp_path / "r", upload_rate=-1)
