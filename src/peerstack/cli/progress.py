"""Progress of ``add`` and ``get`` on stderr: a rich bar on a terminal, plain lines otherwise.

With ``--json`` every progress event is one JSON line on stderr (stdout keeps the one result
document), so a script can follow a transfer without parsing bars.
"""

from __future__ import annotations

import json
import sys
import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from peerstack.cli.sizes import format_size

PLAIN_INTERVAL = 1.0


class ProgressView:
    """Feed it progress events (dicts with bytes_done, bytes_total, done...)."""

    def __init__(self, label: str, *, as_json: bool, quiet: bool = False) -> None:
        self.label = label
        self.mode = (
            "none" if quiet else "json" if as_json else ("rich" if sys.stderr.isatty() else "plain")
        )
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last_plain = 0.0

    def __enter__(self) -> ProgressView:
        if self.mode == "rich":
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=None)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        done = int(event.get("bytes_done") or 0)
        total = event.get("bytes_total")
        total = int(total) if isinstance(total, int) else None
        if self.mode == "json":
            sys.stderr.write(json.dumps({"event": "progress", **event}) + "\n")
            sys.stderr.flush()
        elif self.mode == "rich" and self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done, total=total)
        elif self.mode == "plain":
            now = time.monotonic()
            if event.get("done") or now - self._last_plain < PLAIN_INTERVAL:
                return
            self._last_plain = now
            of = f" of {format_size(total)}" if total else ""
            sys.stderr.write(f"{self.label}: {format_size(done)}{of}\n")
            sys.stderr.flush()
