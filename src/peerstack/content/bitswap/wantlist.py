"""A bounded wantlist: what one side wants, keyed by CID, served highest priority first."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from peerstack.content.bitswap.messages import WantType
from peerstack.core.cid import CID
from peerstack.errors import LimitExceeded


@dataclass(slots=True)
class Want:
    cid: CID
    priority: int
    want_type: WantType
    send_dont_have: bool
    seq: int  # arrival order, to break priority ties first-come first-served


class Wantlist:
    """CID -> Want, with a hard cap on its size (a peer cannot make it grow without end)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._wants: dict[CID, Want] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._wants)

    def __contains__(self, cid: object) -> bool:
        return cid in self._wants

    def __iter__(self) -> Iterator[Want]:
        return iter(self._wants.values())

    def get(self, cid: CID) -> Want | None:
        return self._wants.get(cid)

    def add(
        self,
        cid: CID,
        priority: int = 1,
        want_type: WantType = WantType.BLOCK,
        send_dont_have: bool = False,
    ) -> Want:
        """Add or update a want. A want-block is never downgraded to want-have."""
        existing = self._wants.get(cid)
        if existing is not None:
            existing.priority = priority
            if want_type == WantType.BLOCK:
                existing.want_type = WantType.BLOCK
            existing.send_dont_have = existing.send_dont_have or send_dont_have
            return existing
        if len(self._wants) >= self.max_size:
            raise LimitExceeded(f"wantlist is full ({self.max_size} entries)")
        self._seq += 1
        want = Want(cid, priority, want_type, send_dont_have, self._seq)
        self._wants[cid] = want
        return want

    def remove(self, cid: CID) -> Want | None:
        return self._wants.pop(cid, None)

    def clear(self) -> None:
        self._wants.clear()

    def sorted(self) -> list[Want]:
        """Highest priority first, then oldest first."""
        return sorted(self._wants.values(), key=lambda w: (-w.priority, w.seq))
