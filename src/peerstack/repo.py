"""The repo directory of a node: its identity key and its configuration.

Layout (default ``~/.peerstack``, or ``--repo`` / ``PEERSTACK_REPO``)::

    identity.key    the libp2p PrivateKey protobuf, mode 0600
    config.toml     node configuration (see ``peerstack.config``)
    blocks/         one file per block (``peerstack.content.blockstore``)
    tmp/            blocks being written (emptied when the blockstore opens)
    store.sqlite    the node's state: pins, refs, transfers, DHT records, providers, the
                    routing table (WAL mode; each part keeps its own tables)
    repo.lock       held (flock) by the process that runs a node on this repo
    api             the daemon's HTTP API address, ``/ip4/127.0.0.1/tcp/<port>`` (as kubo)
    api.token       the bearer token the API wants, mode 0600

Only one process may run a node on a repo at a time: the blockstore empties ``tmp/`` on open
and SQLite state is not meant for two writers, so ``Repo.lock()`` refuses a second one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path
from typing import IO

from peerstack.config import Config
from peerstack.core.files import write_private_file
from peerstack.core.identity import PrivateKey, load_or_create
from peerstack.errors import PeerstackError, UsageError

REPO_ENV = "PEERSTACK_REPO"
IDENTITY_FILE = "identity.key"
CONFIG_FILE = "config.toml"
STATE_DB = "store.sqlite"
LOCK_FILE = "repo.lock"
API_FILE = "api"
TOKEN_FILE = "api.token"


class RepoLocked(UsageError):
    """Another process runs a node on this repo."""


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
        self._lock_file: IO[bytes] | None = None

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

    # -- the node's files ---------------------------------------------------------------------

    @property
    def state_db_path(self) -> Path:
        return self.path / STATE_DB

    @property
    def api_path(self) -> Path:
        return self.path / API_FILE

    @property
    def token_path(self) -> Path:
        return self.path / TOKEN_FILE

    def lock(self) -> None:
        """Take the repo for this process; ``RepoLocked`` if another process holds it.

        An advisory ``flock``: the kernel drops it when the process dies, so a crashed daemon
        never leaves the repo locked.
        """
        if self._lock_file is not None:
            return
        try:
            fh = (self.path / LOCK_FILE).open("ab")
        except OSError as exc:
            raise UsageError(f"cannot open {self.path / LOCK_FILE}: {exc.strerror}") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RepoLocked(
                f"repo {self.path} is in use by another peerstack process (a daemon?)"
            ) from None
        self._lock_file = fh

    def unlock(self) -> None:
        fh, self._lock_file = self._lock_file, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()

    def is_locked_elsewhere(self) -> bool:
        """Does another process hold the repo lock right now?"""
        if self._lock_file is not None:
            return False
        try:
            self.lock()
        except RepoLocked:
            return True
        self.unlock()
        return False

    def write_api(self, addr: str) -> str:
        """Publish the API address and a fresh token (0600); returns the token."""
        token = secrets.token_urlsafe(32)
        _write_private(self.token_path, token + "\n")
        _write_private(self.api_path, addr + "\n")
        return token

    def remove_api(self) -> None:
        for path in (self.api_path, self.token_path):
            path.unlink(missing_ok=True)

    def read_api(self) -> tuple[str, str] | None:
        """``(address, token)`` of a daemon's API, or ``None`` when none is published."""
        try:
            addr = self.api_path.read_text().strip()
            token = self.token_path.read_text().strip()
        except OSError:
            return None
        return (addr, token) if addr and token else None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (see ``write_private_file``)."""
    write_private_file(path, text.encode())
