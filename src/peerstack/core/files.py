"""Writing secrets to disk: keys and tokens that only their owner may read."""

from __future__ import annotations

import os
from pathlib import Path


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (temp file, fsync, rename).

    A leftover temp file, or a symlink planted under its name, must not lend us its mode or
    its target: it is removed first, and the fresh file is created with ``O_EXCL`` (refused if
    something appears there meanwhile) and ``O_NOFOLLOW``. ``os.write`` may write less than
    asked, so it loops. A crash never leaves a half-written file under ``path``.
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        rest = memoryview(data)
        while rest:
            rest = rest[os.write(fd, rest) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
