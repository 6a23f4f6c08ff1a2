"""What the server knows about one peer: its wantlist and what has flowed each way."""

from __future__ import annotations

from dataclasses import dataclass, field

from peerstack.content.bitswap.messages import WantEntry
from peerstack.content.bitswap.wantlist import Want, Wantlist
from peerstack.core.cid import CID
from peerstack.core.peer_id import PeerId
from peerstack.errors import LimitExceeded


@dataclass(slots=True)
class Ledger:
    peer: PeerId
    wantlist: Wantlist
    bytes_sent: int = 0
    bytes_received: int = 0
    blocks_sent: int = 0
    blocks_received: int = 0
    messages_received: int = 0
    # bytes handed to the sender but not yet written to the peer's stream
    bytes_in_flight: int = 0
    # wants answered DONT_HAVE, kept so that a block we get later is still sent
    waiting: set[CID] = field(default_factory=set)
    ignored_wants: int = 0  # wants past the cap, not recorded

    @classmethod
    def new(cls, peer: PeerId, max_wants: int) -> Ledger:
        return cls(peer, Wantlist(max_wants))

    def apply(
        self, entries: list[WantEntry], full: bool, flood_limit: int
    ) -> tuple[list[Want], list[CID]]:
        """Apply a received wantlist; return the wants added or updated and the CIDs cancelled.

        A ``full`` wantlist replaces the previous one. Wants past the ledger's cap are not
        recorded (counted in ``ignored_wants``, as go and js servers trim too); a peer asking
        for more than ``flood_limit`` at once is flooding us: ``LimitExceeded``, and the
        wantlist is left as it was.
        """
        new = {e.cid for e in entries if not e.cancel and (full or e.cid not in self.wantlist)}
        total = len(new) + (0 if full else len(self.wantlist))
        if total > flood_limit:
            raise LimitExceeded(f"peer wants {total} blocks at once, limit {flood_limit}")
        cancelled: list[CID] = []
        if full:
            keep = {e.cid for e in entries if not e.cancel}
            for want in list(self.wantlist):
                if want.cid not in keep:
                    self.wantlist.remove(want.cid)
                    self.waiting.discard(want.cid)
                    cancelled.append(want.cid)
        added: list[Want] = []
        for e in entries:
            if e.cancel:
                if self.wantlist.remove(e.cid) is not None:
                    cancelled.append(e.cid)
                self.waiting.discard(e.cid)
                continue
            try:
                added.append(self.wantlist.add(e.cid, e.priority, e.want_type, e.send_dont_have))
            except LimitExceeded:
                self.ignored_wants += 1
        return added, cancelled
