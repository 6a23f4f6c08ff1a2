"""Write a UnixFS file into its output as its blocks arrive, each leaf at its own offset.

Exporting a fetched file afterwards reads every block back from the store and writes it again:
for a 1 GiB file that tail took longer than half the transfer. A ``FileSink`` instead learns
each block's place in the file from its parent (the parent's ``blocksizes``) and writes a leaf's
bytes there the moment the leaf is verified, so when the last block lands only an fsync and a
rename are left.

The file *is* the storage of its leaves: a leaf written at its place is recorded in the
blockstore as a reference to (the file, its offset, its length) instead of being written a
second time as a block file (kubo's "filestore"; libtorrent likewise keeps a torrent's pieces
only in the downloaded file). The store re-hashes a referenced block whenever it reads it, so
the user may do what they like with the file; a block whose bytes are gone is just absent and
fetched again if needed. With ``keep_copies`` (the ``get_keeps_copies`` option) no references
are made and the caller stores every leaf as a block file as well.

The partial file of a get that failed for a reason a retry can overcome (the providers went
away, the get was cancelled, the output's disk is full) is kept with its references, and the
next ``FileSink.open`` of the same output continues in it: those leaves are verified (re-hashed
through their references) and not fetched again. A get whose content can never make the file
(a malformed DAG) removes it and drops its references; a sink that gave up copies its
referenced leaves into the store first, because the exporter that takes over needs them.

Thread safety: the placement book is kept under a lock, because leaves are written from the
worker threads that verified and stored them while the event loop's DAG walk places the
children of newly expanded nodes. A write in progress is counted, and the file is closed only
once none is (a descriptor closed under a writer could be reused by another file).

The sink handles the ordinary shape of a file. Anything else makes it *give up* (``abandoned``)
and the caller exports the file from the store as before, which checks the DAG thoroughly and
raises its errors: a directory, a symlink, a node that contradicts its parent's sizes, a subtree
that occurs twice in the file (its node is already expanded when its second place is learned;
a leaf that occurs twice is fine), a DAG deeper than the exporter allows, too many pending
places. So the sink is never the last line of defence: the file it completes was written by
exactly the placements of a consistent tree, and its length is checked against the root's.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from peerstack.content import dagpb, unixfs
from peerstack.content.blockstore import (
    BlockNotFound,
    Blockstore,
    BlockstoreError,
    FileRef,
    FsyncPolicy,
    load_ref,
)
from peerstack.content.chunks import (
    DIRECT_ALIGN,
    DIRECT_MIN,
    O_DIRECT,
    Buffer,
    pwrite_all,
    pwrite_direct,
    reserve,
)
from peerstack.content.exporter import MAX_DEPTH
from peerstack.content.unixfs import DataType
from peerstack.core.cid import CID, DAG_PB, RAW
from peerstack.errors import DecodeError, PeerstackError

log = logging.getLogger(__name__)

# Places learned and not yet written (a place is a few dozen bytes): a 1 TiB file of 1 MiB
# leaves needs at most a million at once. Past this the sink gives up and the file is exported.
MAX_PENDING_PLACES = 1 << 22

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}

# A file at least this big is allocated on disk as soon as its size is known (see _reserve).
_RESERVE_MIN = 1 << 20

# With direct_io, the leaves of a file at least this big are written past the page cache.
DIRECT_FILE_MIN = 16 << 20


class OutputWriteError(PeerstackError):
    """The output file could not be written (disk full, I/O error); the fetch stops.

    The verified blocks received so far are kept (in the partial output, referenced by the
    blockstore, or as block files), so a later get resumes.
    """


@dataclass(frozen=True, slots=True)
class _Place:
    offset: int
    size: int | None  # bytes the parent says this block holds; None for the root
    depth: int


def partial_path(target: Path) -> Path:
    """Where a file is written until it is complete (the name ``Node.get`` cleans up)."""
    return target.with_name(f".{target.name}.partial")


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree (a leftover of an interrupted get)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class FileSink:
    """The output of one get while its blocks arrive. Create with ``FileSink.open`` (blocking:
    in a worker thread), feed it from worker threads, end with ``finish`` or ``discard``."""

    def __init__(
        self,
        target: Path,
        tmp: Path,
        fd: int,
        store: Blockstore,
        root: CID,
        *,
        keep_copies: bool = False,
        reused_file: bool = False,
        direct_io: bool = False,
    ) -> None:
        self.target = target
        self.tmp = tmp
        self.store = store
        self.root = root
        self.keep_copies = keep_copies
        self._fd = fd
        # direct_io (see open): a second descriptor with O_DIRECT, opened at the first such
        # write; False once the file system refused it (the writes go through the cache).
        self._direct = direct_io and bool(O_DIRECT)
        self._direct_fd = -1
        self.direct_bytes = 0  # of ``written``, what went past the page cache
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0  # writes in progress (the descriptor stays open while any is)
        self._closed = False
        self._places: dict[CID, list[_Place]] = {root: [_Place(0, None, 0)]}
        self._pending = 1
        self._done: set[CID] = set()  # blocks whose places were all served when they came
        self._held: set[CID] = set()  # leaves this sink referenced in its file
        self._writing: set[CID] = set()  # leaves being written at their places now
        self.total: int | None = None  # the file's size, from the root
        self.written = 0  # bytes written at their places
        self.abandoned = ""  # why the sink gave up ("" while it has not)
        self.error: OutputWriteError | None = None
        self.reused = 0  # leaves found in place in a reused partial file (not written again)
        # A leftover partial file is continued: its leaves are looked for in place as they are
        # placed, whether or not the store still references them (see ``_recover``).
        self.reused_file = reused_file

    @classmethod
    def open(
        cls,
        target: Path,
        store: Blockstore,
        root: CID,
        *,
        keep_copies: bool = False,
        direct_io: bool = False,
    ) -> FileSink:
        """Open the temporary output next to ``target``.

        ``direct_io``: the leaves of a file of DIRECT_FILE_MIN bytes or more are written past
        the page cache (O_DIRECT, from the store's aligned buffer of the writing thread), where
        the file system allows it. Filling the page cache costs more than that copy on a
        virtual machine whose free memory goes back to the host (every fresh page is a fault
        there: ~11 us a page, ~2.8 ms of CPU a MiB, on the bench VM), and a big download then
        does not push what the user works on out of the cache. The price: reading the file
        right after comes from the disk.

        A partial file left by an earlier get of ``target`` is continued: every leaf in it is
        re-hashed at its place before it counts (the rest is overwritten as its leaves come,
        and the file is cut to the root's size at the end), so its bytes need no other
        warrant. That matters after a crash: references are written in batches, so a get that
        was killed may have left verified leaves in the file that the store does not name.
        Anything but a regular file under that name is removed first.
        """
        tmp = partial_path(target)
        reuse = os.path.isfile(tmp) and not os.path.islink(tmp)
        if os.path.lexists(tmp) and not reuse:
            remove_path(tmp)
        flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if reuse else os.O_CREAT | os.O_EXCL)
        try:
            fd = os.open(tmp, flags, 0o644)
        except OSError as exc:
            raise _write_error(tmp, exc) from exc
        return cls(
            target,
            tmp,
            fd,
            store,
            root,
            keep_copies=keep_copies,
            reused_file=reuse,
            direct_io=direct_io,
        )

    # -- placements (any thread) ------------------------------------------------------------

    def _give_up(self, why: str) -> None:
        """(lock held) Stop writing; the caller exports the file from the store instead."""
        if not self.abandoned:
            log.debug("writing %s as it arrives stopped (%s): it will be exported", self.root, why)
            self.abandoned = why
        self._places.clear()
        self._pending = 0

    def _place(self, cid: CID, place: _Place, late: list[tuple[CID, _Place]]) -> None:
        """(lock held) ``cid`` goes at ``place``: remember it, or if the block was already
        handled, queue it in ``late`` (a leaf, written from the store) or give up (a node)."""
        if place.depth > MAX_DEPTH:
            self._give_up("tree too deep")
            return
        if cid in self._done:
            if cid.codec == DAG_PB:
                self._give_up("a subtree occurs twice")
            else:
                late.append((cid, place))
            return
        self._pending += 1
        if self._pending > MAX_PENDING_PLACES:
            self._give_up("too many pending places")
            return
        self._places.setdefault(cid, []).append(place)

    def _claim(self, cid: CID, *, leaf: bool = False) -> list[_Place] | None:
        """The places of ``cid``, now served, with the caller counted as busy (it must call
        ``_release``); None when there is nothing to write (closed, abandoned, or no places).
        A ``leaf`` is also marked as being written until ``_release(cid)``."""
        with self._lock:
            if self._closed or self.abandoned or cid not in self._places:
                return None
            places = self._places.pop(cid)
            self._pending -= len(places)
            if places:
                self._done.add(cid)
            if leaf:
                self._writing.add(cid)
            self._busy += 1
        return places

    def wants_bytes(self, cid: CID) -> bool:
        """Whether a block has places still to be written (a cheap check for callers)."""
        return cid in self._places

    # -- blocks (worker threads) ------------------------------------------------------------

    def leaf(self, cid: CID, data: Buffer) -> bool:
        """A verified raw block: write it at each of its places (nothing if it has none).

        True when the block is now held, so the caller need not store it: by reference to its
        first place in this file, or with ``keep_copies`` by a copy the sink stored itself;
        False when the caller must (the block has no place here, the sink gave up or cannot
        write).
        """
        return self._leaf(cid, data, None)

    def _leaf(
        self, cid: CID, data: Buffer, in_place: FileRef | None, *, store: bool = True
    ) -> bool:
        """``leaf``. ``in_place``: the block's reference when it is in this (reused) file: a
        place at its offset is counted, not written again. ``store``: False for a block the
        store holds already (written at its places, nothing stored)."""
        places = self._claim(cid, leaf=True)
        if places is None:
            # A second copy of a leaf (a duplicate from the network, verified on a worker
            # thread before the first was delivered): held if the first copy is (waiting for
            # that copy's outcome if it is being written), else the caller stores.
            with self._lock:
                self._idle.wait_for(lambda: cid not in self._writing)
                return cid in self._held and not self._closed
        try:
            for place in places:
                if place.size is not None and place.size != len(data):
                    why = f"{cid} holds {len(data)} bytes, its parent says {place.size}"
                    with self._lock:
                        self._give_up(why)
                    return False
                if place.size is None:
                    with self._lock:
                        self.total = len(data)
                if in_place is not None and in_place.offset == place.offset:
                    with self._lock:
                        self.written += len(data)
                        self.reused += 1
                    continue
                if not self._write(data, place.offset):
                    return False
            if not (store and places):
                return False
            if self.keep_copies:
                # Stored here, before the leaf is released: a place of it found later is
                # written from the store (_late_leaf), which must hold it by then. Stored by
                # the caller after this returned, it sometimes did not, and the sink gave up.
                self.store.put_sync(cid, data, verify=False)  # verified: the caller hashed it
            else:
                # After the bytes are written, never before: a reference must not name bytes
                # that are not there yet (a reader would drop it as damaged). One reference is
                # enough for a leaf that occurs more than once in the file.
                self.store.put_ref_sync(cid, self.tmp, places[0].offset, len(data))
            with self._lock:
                self._held.add(cid)
            return True
        finally:
            self._release(cid)

    def node(self, cid: CID, node: dagpb.PBNode) -> None:
        """A verified, decoded dag-pb node: write its inline bytes and place its children."""
        late: list[tuple[CID, _Place]] = []
        places = self._claim(cid)
        if places is None:
            return
        try:
            self._node(cid, node, places, late)
            for child, place in late:
                self._late_leaf(child, place)
            if self.reused_file:
                self._recover([link.hash for link in node.links if link.hash.codec == RAW])
        finally:
            self._release()

    def _recover(self, leaves: list[CID]) -> None:
        """Leaves of a reused partial file that the store does not reference there: when the
        bytes at a leaf's place hash to its CID (a get killed before its references were
        written), they count as written and are referenced now instead of fetched again.
        Leaves the store does reference come through ``from_store``, which re-hashes them."""
        todo: list[tuple[CID, _Place]] = []
        with self._lock:
            for cid in leaves:
                places = self._places.get(cid)
                if places and places[0].size:
                    todo.append((cid, places[0]))
        where = os.path.abspath(self.tmp)
        for cid, place in todo:
            ref = self.store.ref_sync(cid)
            if ref is not None and ref.path == where:
                continue
            in_place = FileRef(where, place.offset, place.size or 0)
            data, _why, _gone = load_ref(in_place, cid.multihash)
            if data is None:
                continue  # never written, cut short, other bytes: fetched as usual
            if not self._leaf(cid, data, in_place):
                with contextlib.suppress(BlockstoreError):  # then it is simply fetched
                    self.store.put_sync(cid, data, verify=False)  # keep_copies: a copy

    def _node(
        self, cid: CID, node: dagpb.PBNode, places: list[_Place], late: list[tuple[CID, _Place]]
    ) -> None:
        try:
            if node.data is None:
                raise unixfs.MalformedUnixFS("dag-pb node without UnixFS data")
            data = unixfs.decode(node.data)
        except DecodeError as exc:
            with self._lock:
                self._give_up(f"{cid}: {exc}")
            return
        size = data.file_size()
        if (
            data.type not in (DataType.FILE, DataType.RAW)
            or len(data.blocksizes) != len(node.links)
            or (data.filesize is not None and data.filesize != size)
        ):
            with self._lock:
                self._give_up(f"{cid} is not a consistent file node")
            return
        for place in places:
            if place.size is not None and place.size != size:
                with self._lock:
                    self._give_up(f"{cid} holds {size} bytes, its parent says {place.size}")
                return
        with self._lock:
            if self.abandoned or self._closed:
                return
            for place in places:
                if place.size is None:
                    self.total = size
                pos = place.offset + len(data.data)
                for link, child_size in zip(node.links, data.blocksizes, strict=True):
                    if child_size:  # an empty child holds no bytes: nothing to place
                        self._place(link.hash, _Place(pos, child_size, place.depth + 1), late)
                    pos += child_size
            if self.abandoned:
                return
        if any(place.size is None for place in places):
            self._reserve(size)
        if data.data:
            for place in places:
                self._write(data.data, place.offset)

    def _late_leaf(self, cid: CID, place: _Place) -> None:
        """A leaf placed after it was written elsewhere in the file: copy it from the store,
        once that write is over (until then the store may not hold it yet: its reference is
        recorded after the bytes are written, and reading it sooner made the sink give up)."""
        with self._lock:
            self._idle.wait_for(lambda: cid not in self._writing)
        try:
            data = self.store.read_sync(cid)
        except (BlockNotFound, BlockstoreError) as exc:
            with self._lock:
                self._give_up(f"{cid} is not in the store: {exc}")
            return
        if place.size != len(data):
            with self._lock:
                self._give_up(f"{cid} holds {len(data)} bytes, its parent says {place.size}")
            return
        self._write(data, place.offset)

    def from_store(self, cids: list[CID]) -> list[CID]:
        """Blocks a resumed get finds in the store: write those that have places (raw leaves;
        dag-pb nodes come through ``node`` when the walk expands them). A leaf already at its
        place in this (reused) file is re-hashed there and not written again; no new
        reference is made (the block is held already).

        Returns the leaves that turned out absent when read (a referenced file the user
        changed, so the store dropped the reference): the caller fetches them instead.
        """
        absent: list[CID] = []
        tmp = os.path.abspath(self.tmp)
        for cid in cids:
            if cid.codec != RAW or not self.wants_bytes(cid):
                continue
            in_place: FileRef | None = None
            ref = self.store.ref_sync(cid)
            try:
                if ref is not None and ref.path == tmp:
                    # the bytes in this very file are what counts, even if a block file
                    # exists too: re-hashed there, or written again from the block file
                    with contextlib.suppress(BlockNotFound):
                        data, in_place = self.store.read_ref_sync(cid)
                if in_place is None or in_place.path != tmp:
                    in_place = None
                    data = self.store.read_sync(cid)  # re-hashes a referenced block
            except BlockNotFound:
                absent.append(cid)
                continue
            except BlockstoreError as exc:
                with self._lock:
                    self._give_up(f"{cid} cannot be read from the store: {exc}")
                return absent
            self._leaf(cid, data, in_place, store=False)
        return absent

    def _reserve(self, size: int) -> None:
        """The root's size is known: allocate the whole file on disk before its leaves come
        (cheaper writes, and a full disk shows at the start instead of near the end)."""
        if self.error is not None or size < _RESERVE_MIN:
            return
        try:
            reserve(self._fd, size)
        except OSError as exc:
            self._write_failed(exc)

    def _write(self, data: Buffer, offset: int) -> bool:
        """Write ``data`` at ``offset``; False (``error`` set) when it could not be."""
        if self.error is not None:
            return False
        try:
            if not (
                self._direct
                and offset % DIRECT_ALIGN == 0
                and len(data) >= DIRECT_MIN
                and (self.total or 0) >= DIRECT_FILE_MIN
                and self._write_direct(data, offset)
            ):
                pwrite_all(self._fd, data, offset)
        except OSError as exc:
            self._write_failed(exc)
            return False
        with self._lock:
            self.written += len(data)
        return True

    def _write_direct(self, data: Buffer, offset: int) -> bool:
        """``_write`` past the page cache; False where the file system refuses O_DIRECT (this
        sink then stops trying, and the caller writes the data through the cache: a refusal
        midway may have left part of it written, which is written again). Other errors are
        raised."""
        with self._lock:
            if self._direct_fd < 0 and self._direct and not self._closed:
                try:
                    # the very file the sink has open (by its descriptor, not by its name,
                    # which could name another file by now), in a description of its own
                    self._direct_fd = os.open(
                        f"/proc/self/fd/{self._fd}", os.O_WRONLY | os.O_CLOEXEC | O_DIRECT
                    )
                except OSError as exc:
                    self._no_direct(exc)
            direct_fd = self._direct_fd
        if direct_fd < 0:
            return False
        try:
            pwrite_direct(direct_fd, self._fd, data, offset, self.store.aligned_buffer())
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            with self._lock:
                self._no_direct(exc)
            return False
        with self._lock:
            self.direct_bytes += len(data) - len(data) % DIRECT_ALIGN
        return True

    def _no_direct(self, exc: OSError) -> None:
        """(lock held) O_DIRECT is refused here: the writes go through the page cache."""
        if self._direct:
            log.info("%s: no O_DIRECT here (%s); written through the page cache", self.tmp, exc)
        self._direct = False

    def _write_failed(self, exc: OSError) -> None:
        """The output could not be written: the first such error is the sink's."""
        with self._lock:
            if self.error is None:
                self.error = _write_error(self.tmp, exc)

    def _release(self, leaf: CID | None = None) -> None:
        with self._lock:
            self._busy -= 1
            if leaf is not None:
                self._writing.discard(leaf)
                self._idle.notify_all()  # a duplicate of it may wait for its outcome
            elif not self._busy:
                self._idle.notify_all()

    def _close(self) -> None:
        """(blocking) Wait for the writes in progress, then close the file: no more writes."""
        with self._lock:
            self._closed = True
            while self._busy:
                self._idle.wait()
            fd, self._fd = self._fd, -1
            direct_fd, self._direct_fd = self._direct_fd, -1
        if fd >= 0:
            os.close(fd)
        if direct_fd >= 0:
            os.close(direct_fd)

    # -- the end (worker thread) ------------------------------------------------------------

    def finish(self) -> bool:
        """(blocking) The fetch is complete: fsync (per the store's policy) and rename the file
        into place. False when the sink gave up or the file is not whole: the caller exports."""
        with self._lock:
            self._closed = True
            while self._busy:
                self._idle.wait()
            complete = (
                not self.abandoned
                and self.error is None
                and self._pending == 0
                and self.total is not None
                and self.written == self.total
            )
            if not complete and not self.abandoned and self.error is None:
                self._give_up(f"{self.written} bytes written of {self.total}")
        if self.error is not None:
            self._close()
            raise self.error
        if not complete:
            self._close()
            return False
        try:
            # A reused partial file may be longer than the file (an earlier get of other
            # content under this name): cut it to the size its root gives.
            os.ftruncate(self._fd, self.total or 0)
            if self.store.fsync is not FsyncPolicy.NEVER:
                os.fsync(self._fd)
            self._close()
            # The rename and the move of the file's references to its final name, as one
            # step for readers. A crash between the two leaves references to the partial
            # name: each is dropped when read (its file is gone) and the block fetched again
            # if ever needed. Costly at worst, never wrong.
            self.store.move_file_sync(self.tmp, self.target)
            if self.store.fsync is FsyncPolicy.ALWAYS:
                dfd = os.open(self.target.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            raise _write_error(self.tmp, exc) from exc
        return True

    def discard(self, *, keep_blocks: bool = True) -> None:
        """(blocking) Close and remove the temporary output: the sink gave up (the exporter
        takes over), or the get failed for good (its content can never make the file).

        With ``keep_blocks`` the blocks referenced in the file are copied into the store
        first (the exporter, or a later fetch, needs them); without, the references are just
        dropped.
        """
        self._close()
        if keep_blocks:
            self.store.copy_refs_sync(self.tmp)
        else:
            self.store.drop_refs_sync(self.tmp)
        if os.path.lexists(self.tmp):
            remove_path(self.tmp)

    def suspend(self) -> None:
        """(blocking) Close the temporary output and leave it, with the references of the
        leaves in it, for the next get of the same output to continue (the get failed for a
        reason a retry can overcome, or was cancelled)."""
        self._close()
        try:
            self.store.flush_refs_sync()
        except BlockstoreError as exc:  # those leaves are fetched again; the get's own error counts
            log.warning("references of leaves in %s not saved: %r", self.tmp, exc)


def _write_error(path: Path, exc: OSError) -> OutputWriteError:
    if exc.errno in _DISK_FULL:
        return OutputWriteError(
            f"disk full while writing {path}; the verified blocks are kept for a resume"
        )
    return OutputWriteError(f"cannot write {path}: {exc.strerror or exc}")


__all__ = ["FileSink", "OutputWriteError", "partial_path", "remove_path"]
