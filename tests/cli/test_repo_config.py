"""The repo directory and config.toml."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from peerstack.config import DEFAULT_LISTEN, Config
from peerstack.core.peer_id import PeerId
from peerstack.errors import UsageError
from peerstack.host.limits import Limits
from peerstack.repo import REPO_ENV, Repo, default_repo_path


def test_open_creates_identity_and_config(tmp_path: Path) -> None:
    repo = Repo.open(tmp_path / "r")
    assert stat.S_IMODE(repo.identity_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(repo.path.stat().st_mode) == 0o700
    key = repo.identity()
    # Stable across opens.
    again = Repo.open(tmp_path / "r").identity()
    assert PeerId.from_public_key(key.public_key) == PeerId.from_public_key(again.public_key)
    assert repo.config() == Config()
    assert repo.config().listen == DEFAULT_LISTEN
    # perf and echo (a peer could make us send gigabytes) are off unless asked for.
    assert not repo.config().perf
    assert not repo.config().echo
    assert "perf = false\necho = false\n" in repo.config_path.read_text()


def test_default_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REPO_ENV, str(tmp_path / "x"))
    assert default_repo_path() == tmp_path / "x"
    monkeypatch.delenv(REPO_ENV)
    assert default_repo_path() == Path.home() / ".peerstack"


def test_config_round_trip_through_toml(tmp_path: Path) -> None:
    cfg = Config(
        listen=("/ip4/0.0.0.0/tcp/4001", "/ip6/::1/tcp/4002"),
        bootstrap=(
            "/ip4/127.0.0.1/tcp/5/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
        ),
        agent_version='my "agent"',
        keepalive_interval=15.5,
        keepalive_timeout=0,
        limits=Limits(max_inbound_connections=7, dial_timeout=2.5),
        dht_mode="client",
        dht_diversity="off",
        provide="all",
        reprovide_interval=600.0,
        get_keeps_copies=True,
        get_direct_io=False,
        perf=True,
    )
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    assert Config.load(path) == cfg


@pytest.mark.parametrize(
    "text",
    [
        "[node]\nlisten = ['not an addr']\n",
        "[node]\nlisten = '/ip4/1.2.3.4/tcp/1'\n",
        "[node]\nlisten_typo = []\n",
        "[node]\nkeepalive_interval = -1\n",
        "[node]\nkeepalive_timeout = 'soon'\n",
        "[node]\nkeepalive_interval = true\n",
        "[limits]\nmax_inbound_connections = 'many'\n",
        "[limits]\nbogus = 1\n",
        "[other]\n",
        "this is = not toml =",
        "[limits]\nlow_water = 500\n",
        "[dht]\nmode = 'hybrid'\n",
        "[dht]\ndiversity = true\n",
        "[dht]\nbucket_size = 3\n",
        "[content]\nprovide = 'everything'\n",
        "[content]\nreprovide_interval = -1\n",
        "[content]\nreprovide_interval = true\n",
        "[content]\nget_keeps_copies = 'yes'\n",
        "[content]\nget_direct_io = 'no'\n",
        "[services]\nperf = 'yes'\n",
        "[services]\ntelnet = true\n",
    ],
)
def test_bad_config_is_a_usage_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(UsageError):
        Config.load(path)


def test_corrupt_identity_is_a_usage_error(tmp_path: Path) -> None:
    repo = Repo.open(tmp_path)
    repo.identity_path.write_bytes(b"garbage")
    with pytest.raises(UsageError):
        repo.identity()


def test_repo_path_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UsageError):
        Repo.open(f)


def test_api_token_is_private_whatever_was_left_in_its_place(tmp_path: Path) -> None:
    """A stale world-readable temp file, or a symlink planted under the temp name, must not
    give the token its mode or its destination."""
    repo = Repo.open(tmp_path / "r")
    tmp = repo.token_path.with_name(repo.token_path.name + ".tmp")
    tmp.write_text("stale")
    tmp.chmod(0o644)
    token = repo.write_api("/ip4/127.0.0.1/tcp/5001")
    assert stat.S_IMODE(repo.token_path.stat().st_mode) == 0o600
    assert repo.token_path.read_text().strip() == token
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("")
    tmp.symlink_to(elsewhere)
    token = repo.write_api("/ip4/127.0.0.1/tcp/5001")
    assert elsewhere.read_text() == ""  # the link was not followed
    assert not repo.token_path.is_symlink()
    assert stat.S_IMODE(repo.token_path.stat().st_mode) == 0o600
    assert repo.read_api() == ("/ip4/127.0.0.1/tcp/5001", token)
