"""The repo directory of a node: its identity key and its configuration.

Layout (default ``~/.peerstack``, or ``--repo`` / ``PEERSTACK_REPO``)::

    identity.key    the libp2p PrivateKey protobuf, mode 0600
    config.toml     node configuration (see ``peerstack.config``)

Later issues add the blockstore and the SQLite state database next to these.
"""

from __future__ import annotations

import os
from pathlib import Path

from peerstack.config import Config
from peerstack.core.identity import PrivateKey, load_or_create
from peerstack.errors import PeerstackError, UsageError

REPO_ENV = "PEERSTACK_REPO"
IDENTITY_FILE = "identity.key"
CONFIG_FILE = "config.toml"


def default_repo_path() -> Path:
    """``$PEERSTACK_REPO`` if set, else ``~/.peerstack``."""
    env = os.environ.get(REPO_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".peerstack"


class Repo:
    """A node's directory on disk. ``Repo.open(path)`` creates what is missing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def open(cls, path: Path | str | None = None) -> Repo:
        repo = cls(Path(path).expanduser() if path is not None else default_repo_path())
        repo.init()
        return repo

    @property
    def identity_path(self) -> Path:
        return self.path / IDENTITY_FILE

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    def init(self) -> None:
        """Create the directory (mode 0700), an identity key and a default config if absent."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"repo path {self.path} exists and is not a directory")
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            load_or_create(self.identity_path)
            if not self.config_path.exists():
                tmp = self.config_path.with_name(CONFIG_FILE + ".tmp")
                tmp.write_text(Config().to_toml())
                tmp.replace(self.config_path)
        except OSError as exc:
            raise UsageError(f"cannot initialise repo {self.path}: {exc.strerror}") from None

    def identity(self) -> PrivateKey:
        try:
            return load_or_create(self.identity_path)
        except OSError as exc:
            raise UsageError(f"cannot read {self.identity_path}: {exc.strerror}") from None
        except PeerstackError as exc:
            raise UsageError(f"{self.identity_path} is not a valid identity key: {exc}") from None

    def config(self) -> Config:
        if not self.config_path.exists():
            return Config()
        return Config.load(self.config_path)
