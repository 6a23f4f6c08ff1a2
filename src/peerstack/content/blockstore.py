"""The on-disk blockstore: one file per block, pins and refs in SQLite.

Layout under ``root``::

    blocks/<shard>/<KEY>.data   KEY = base32 (upper case, no padding) of the block's multihash,
                                shard = the two characters before the last one (go-ds-flatfs
                                "next-to-last/2"), so keys spread evenly over 1024 folders
    tmp/                        blocks being written; emptied on open
    store.sqlite                pins, the links of dag-pb blocks (refs), transfers, metadata,
                                and file references (table ``filestore``)

A raw block may also be held by *reference* (kubo's "filestore"): a row saying its bytes are
``length`` bytes at ``offset`` in a file outside the store, typically the output of a get, which
writes each leaf once, into that file, instead of once there and once more as a block file. The
file belongs to the user, who may edit, truncate or delete it: every read of a referenced block
re-hashes its bytes, and a reference that no longer holds them is dropped (with a warning) and
the block is absent, never served wrong. Where both exist, the block file is preferred. Deleting
or collecting a referenced block drops the reference only; the user's file is never touched.

Blocks are keyed by multihash, not CID, as kubo does: the same bytes under CIDv0 and CIDv1 are one
file. A block is written to ``tmp/``, optionally fsynced, then renamed into place, so a reader never
sees half a block and a crash leaves at most a stray temp file. SQLite runs in WAL mode and every
multi-row change is one transaction.

All file I/O and hashing run in worker threads (``asyncio.to_thread``) so the event loop stays
live; the SQLite connection is shared by those threads under a lock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import errno
import fcntl
import logging
import mmap
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG

from peerstack.content import dagpb
from peerstack.content.chunks import (
    DIRECT_ALIGN,
    DIRECT_MIN,
    O_DIRECT,
    AlignedBuffer,
    Buffer,
    as_bytes,
    gather,
    write_all,
)
from peerstack.core.cid import CID, DAG_PB, RAW, hash_bytes
from peerstack.core.multihash import SHA2_256, Multihash
from peerstack.errors import DecodeError, PeerstackError, UsageError

log = logging.getLogger(__name__)

MAX_BLOCK_SIZE = 2 * 1024 * 1024
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}

# preadv2 flag: fail with EAGAIN instead of waiting for the disk (Linux 4.14+; None elsewhere).
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


class BlockstoreError(PeerstackError):
    """The blockstore could not do what was asked (I/O failure, closed store)."""


class BlockstoreFull(BlockstoreError):
    """The disk is full (ENOSPC/EDQUOT). Nothing partial was left behind."""


class BlockNotFound(BlockstoreError, KeyError):
    """No block with this multihash is stored."""


class HashMismatch(DecodeError):
    """Bytes do not hash to the CID they were given under."""


class FsyncPolicy(enum.Enum):
    ALWAYS = "always"  # fsync the block file and its folder: survives power loss
    FILE = "file"  # fsync the block file only: its content survives, a fresh rename may not
    NEVER = "never"  # leave it to the OS: fastest, for caches and tests


class PinKind(enum.Enum):
    RECURSIVE = "recursive"
    DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class GCResult:
    removed: int  # block files deleted
    freed_bytes: int
    kept: int  # block files kept
    refs_dropped: int = 0  # file references dropped (their files are left alone)
    refs_kept: int = 0


@dataclass(frozen=True, slots=True)
class FileRef:
    """Where a referenced block's bytes are: ``length`` bytes at ``offset`` in ``path``."""

    path: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class DamagedRef:
    """A file reference whose file no longer holds the block's bytes, and why."""

    key: str
    ref: FileRef
    why: str


@dataclass(slots=True)
class VerifyReport:
    checked: int = 0
    damaged: list[str] = field(default_factory=list)  # keys whose bytes do not match
    unreadable: list[str] = field(default_factory=list)  # keys that could not be read
    foreign: list[str] = field(default_factory=list)  # files that are not blocks
    missing_pinned: list[str] = field(default_factory=list)  # pinned roots not stored
    checked_refs: int = 0
    damaged_refs: list[DamagedRef] = field(default_factory=list)  # refs that no longer hold

    @property
    def ok(self) -> bool:
        return not (self.damaged or self.unreadable or self.missing_pinned or self.damaged_refs)


@dataclass(frozen=True, slots=True)
class StoreStat:
    """What the store holds: block files, and blocks referenced in files outside it."""

    blocks: int
    size: int
    referenced_blocks: int
    referenced_size: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS pins (cid TEXT PRIMARY KEY, kind TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dagpb (mh TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS refs (parent TEXT NOT NULL, child TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS refs_parent ON refs(parent);
CREATE TABLE IF NOT EXISTS transfers (root TEXT PRIMARY KEY, target TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS filestore (
    mh TEXT PRIMARY KEY, path TEXT NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS filestore_path ON filestore(path);
"""

# Rows read or keys bound per SQLite statement when walking the file references: the walks
# (iter_keys, gc, verify, stat) hold at most this many in memory besides what they return.
_REF_BATCH = 500
# New file references wait in memory until this many are due, then go to SQLite in one
# transaction (a row a transaction cost a get ~0.1 ms of worker-thread CPU per leaf). Any
# statement on the database writes them first (see ``_conn``), so every reader sees them; a
# crash loses at most these, whose leaves a resumed get then fetches again.
_REF_WRITE_BATCH = 64
# A reference whose file is gone, has no such bytes any more, or is not a file: dropped.
_REF_GONE = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def mh_key(mh: Multihash) -> str:
    """The file-name key of a multihash (kubo's upper-case unpadded base32)."""
    return base64.b32encode(mh.to_bytes()).decode("ascii").rstrip("=")


def key_to_multihash(key: str) -> Multihash:
    try:
        raw = base64.b32decode(key + "=" * (-len(key) % 8))
    except ValueError:
        raise DecodeError(f"not a block key: {key!r}") from None
    return Multihash.from_bytes(raw)


def _shard(key: str) -> str:
    return key[-3:-1]


def _abspath(path: str | os.PathLike[str]) -> str:
    """How a referenced file's path is stored: absolute, so a later working folder, or a
    relative name given for the same file, still finds its rows."""
    return os.path.abspath(os.fspath(path))


def load_ref(ref: FileRef, mh: Multihash) -> tuple[bytes | None, str, bool]:
    """Read and re-hash the bytes ``ref`` names (a stored reference, or a place to check):
    (bytes, "", _) when they still hash to ``mh``, else (None, why, gone) where ``gone`` says
    the reference can never hold again (file gone, too short, other bytes) rather than failing
    for now (permissions, an I/O error)."""
    try:
        fd = os.open(ref.path, os.O_RDONLY | os.O_CLOEXEC)
    except _REF_GONE:
        return None, "the file is gone", True
    except OSError as exc:
        return None, f"cannot open the file: {exc.strerror or exc}", False
    try:
        parts: list[bytes] = []
        got = 0
        while got < ref.length:  # pread of a regular file is short only at its end
            piece = os.pread(fd, ref.length - got, ref.offset + got)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
    except _REF_GONE:
        return None, "the file is gone", True
    except OSError as exc:
        return None, f"cannot read the file: {exc.strerror or exc}", False
    finally:
        os.close(fd)
    if got < ref.length:
        return None, f"the file ends before byte {ref.offset + ref.length}", True
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    try:
        good = hash_bytes(data, mh.code) == mh.digest
    except UsageError as exc:  # a hash we cannot compute here
        return None, str(exc), False
    if not good:
        return None, "the bytes there changed", True
    return data, "", False


def _rename_refs(
    db: sqlite3.Connection, old: str | os.PathLike[str], new: str | os.PathLike[str]
) -> int:
    """(store lock held) Point the references of the file ``old`` at ``new``; how many."""
    with _transaction(db, "renaming file references"):
        cur = db.execute("UPDATE filestore SET path=? WHERE path=?", (_abspath(new), _abspath(old)))
        return cur.rowcount


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, what: str) -> Iterator[None]:
    """BEGIN ... COMMIT, rolled back on any error (a full disk, a cancelled thread, a bug).

    The connection is shared: a transaction left open would make every later BEGIN fail with
    "cannot start a transaction within a transaction", so no error may skip the ROLLBACK.
    SQLite itself may already have rolled back (on SQLITE_FULL, for one), hence the check.
    """
    db.execute("BEGIN")
    try:
        yield
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
            raise BlockstoreFull(f"disk full while {what}") from exc
        raise


class Blockstore:
    """Blocks on disk plus pins; open with ``Blockstore(root)``, close with ``close()``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        fsync: FsyncPolicy = FsyncPolicy.FILE,
        max_block_size: int = MAX_BLOCK_SIZE,
        *,
        direct_io: bool = False,
    ) -> None:
        """``direct_io``: write blocks of 64 KiB and more past the page cache (O_DIRECT), where
        the file system allows it (it falls back by itself where not). Blocks of a big download
        are cold once stored (the user reads the output file), and filling the page cache with a
        second copy of every byte costs more CPU than the copy into a reused aligned buffer
        (on the 2-core bench VM: 2.6 ms of kernel time per MiB against 0.14). But each such
        write waits for the disk, and reads of such blocks come from it: in the 1 GiB share
        bench the saved CPU did not turn into a faster transfer, so it is off by default.
        Since a get's leaves are referenced in its output rather than copied (``put_ref_sync``)
        it only concerns the blocks still written as files: a get's dag-pb nodes, what a fetch
        without an output file stores, and everything with ``get_keeps_copies``."""
        self.root = Path(root)
        self.fsync = fsync
        self.max_block_size = max_block_size
        self.direct_io = direct_io and bool(O_DIRECT)
        self._aligned = AlignedBuffer()
        self._blocks = self.root / "blocks"
        self._blocks_dir = os.fspath(self._blocks)
        self._tmp = self.root / "tmp"
        self._blocks.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        for stale in self._tmp.iterdir():  # leftovers of writes a crash interrupted
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        # Roots held in memory by work in progress (a fetch, an import): GC keeps their DAGs.
        self._holds: dict[CID, int] = {}
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.root / "store.sqlite", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # put_ref_sync's rows not in the database yet (key -> row; the newest place wins)
        self._new_refs: dict[str, tuple[str, str, int, int]] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self._write_refs(self._db)
                except (sqlite3.Error, BlockstoreError) as exc:  # fetched again if needed
                    log.warning("file references not saved on close: %r", exc)
                finally:
                    self._db.close()
                    self._db = None

    def __enter__(self) -> Blockstore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        """The database, with the file references still in memory written to it first, so
        whatever the caller runs sees them. Call with ``_lock`` held (every caller does)."""
        if self._db is None:
            raise UsageError("blockstore is closed")
        if self._new_refs:
            self._write_refs(self._db)
        return self._db

    def _write_refs(self, db: sqlite3.Connection) -> None:
        """(``_lock`` held) Write the waiting file references, in one transaction. Should
        that fail they are dropped (their leaves are fetched again if ever needed) and the
        error raised: keeping them would fail every later statement the same way."""
        rows = list(self._new_refs.values())
        self._new_refs.clear()
        if not rows:
            return
        sql = "INSERT OR REPLACE INTO filestore VALUES (?, ?, ?, ?)"
        if db.in_transaction:  # a caller's transaction: the rows join it
            db.executemany(sql, rows)
        else:
            with _transaction(db, "referencing blocks"):
                db.executemany(sql, rows)

    # -- paths ----------------------------------------------------------------------------

    def aligned_buffer(self) -> mmap.mmap:
        """This thread's page-aligned buffer of ``max_block_size`` bytes and more, for O_DIRECT
        writes of a block (the store's, and a get's output file's): one per thread and store,
        not per file, so concurrent gets add no memory. Valid until this thread's next use."""
        return self._aligned.get(self.max_block_size)

    def path_for(self, cid: CID | Multihash) -> Path:
        return Path(self._block_file(cid))

    def _block_file(self, cid: CID | Multihash) -> str:
        """``path_for`` as a string: the per-block paths (a server's reads, a walk's lookups)
        are built without pathlib, whose joins cost more than the stat or read they serve."""
        return self._key_file(mh_key(cid.multihash if isinstance(cid, CID) else cid))

    def _key_file(self, key: str) -> str:
        return f"{self._blocks_dir}/{_shard(key)}/{key}.data"

    # -- synchronous core (runs in worker threads) -----------------------------------------

    def _write_sync(self, cid: CID, data: Buffer, verify: bool) -> bool:
        """Store ``data`` under ``cid``; False when it was already there."""
        if len(data) > self.max_block_size:
            raise UsageError(f"block of {len(data)} bytes exceeds {self.max_block_size}")
        if verify and not cid.verify(as_bytes(data)):
            raise HashMismatch(f"block does not hash to {cid}")
        links: tuple[dagpb.PBLink, ...] | None = None
        if cid.codec == DAG_PB:
            # refuse malformed dag-pb before it is stored
            links = dagpb.decode(as_bytes(data)).links
        final = self.path_for(cid)
        if final.exists():
            if links is not None:
                self._index_links(cid.multihash, links)
            return False
        tmp = self._tmp / f"{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                if not (
                    self.direct_io and len(data) >= DIRECT_MIN and self._write_direct(fd, data)
                ):
                    write_all(fd, data)  # the pieces of a received block in one writev
                if self.fsync is not FsyncPolicy.NEVER:
                    os.fsync(fd)
            finally:
                os.close(fd)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            if self.fsync is FsyncPolicy.ALWAYS:
                dfd = os.open(final.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in _DISK_FULL:
                raise BlockstoreFull(f"disk full while writing block {cid}") from exc
            raise BlockstoreError(f"cannot write block {cid}: {exc}") from exc
        if links is not None:
            self._index_links(cid.multihash, links)
        return True

    def put_sync(self, cid: CID, data: Buffer, *, verify: bool = True) -> bool:
        """``put`` on the calling thread (a worker thread that also does other work with the
        block, so one trip serves both); False when the block was already stored."""
        return self._write_sync(cid, data, verify)

    def read_sync(self, cid: CID | Multihash) -> bytes:
        """``get`` on the calling thread (for worker threads); ``BlockNotFound`` if absent."""
        return self._read_sync(cid)

    # -- file references (synchronous: worker threads) -------------------------------------

    def put_ref_sync(
        self, cid: CID, path: str | os.PathLike[str], offset: int, length: int
    ) -> None:
        """Hold raw block ``cid`` as ``length`` bytes at ``offset`` in the file ``path``.

        The caller has just verified those bytes (it hashed them and wrote them there), so
        nothing is read here; every later read re-hashes them. Nothing is fsynced for the
        reference either: should the bytes not survive a power loss, the reference is dropped
        when read and the block fetched again. Replaces an earlier reference of the same
        block: the newest known place is the likeliest to be intact. Only raw blocks (leaves,
        which have no links to index) are held this way.

        The row is written with the next ones (``_REF_WRITE_BATCH``), or before any other
        statement on the database, whichever comes first: readers see it at once either way.
        """
        if cid.codec != RAW:
            raise UsageError(f"only raw blocks can be held by reference, not {cid}")
        if offset < 0 or not 0 <= length <= self.max_block_size:
            raise UsageError(f"bad file reference: {length} bytes at {offset}")
        key = mh_key(cid.multihash)
        row = (key, _abspath(path), offset, length)
        with self._lock:
            if self._db is None:
                raise UsageError("blockstore is closed")
            self._new_refs[key] = row
            if len(self._new_refs) >= _REF_WRITE_BATCH:
                self._write_refs(self._db)

    def flush_refs_sync(self) -> None:
        """Write the file references still held in memory to the database now (a get that
        stops keeps them for the next one, even should the process die later)."""
        with self._lock:
            self._conn()

    def ref_sync(self, cid: CID | Multihash) -> FileRef | None:
        """Where a referenced block's bytes should be (not checked), None without a ref."""
        mh = cid.multihash if isinstance(cid, CID) else cid
        return self._refs_of([mh_key(mh)]).get(mh_key(mh))

    def refs_in_sync(self, path: str | os.PathLike[str]) -> int:
        """How many blocks are referenced in the file ``path``."""
        rows = self._exec("SELECT COUNT(*) FROM filestore WHERE path=?", (_abspath(path),))
        return int(str(rows[0][0]))

    def rename_refs_sync(self, old: str | os.PathLike[str], new: str | os.PathLike[str]) -> int:
        """The file ``old`` is now called ``new``: move its references (one transaction)."""
        with self._lock:
            return _rename_refs(self._conn(), old, new)

    def move_file_sync(self, old: str | os.PathLike[str], new: str | os.PathLike[str]) -> int:
        """Rename the file ``old`` to ``new`` (``os.replace``) and move its references.

        Both happen under the store's lock, so a concurrent read of one of the references
        either sees the old row before the rename (and, when the file it then misses, finds the
        row changed and looks again) or the new row: a reader never drops a reference because
        it looked in the middle. A crash between the two steps leaves rows naming a file that
        is gone: they are dropped when read and those blocks are fetched again if needed, which
        costs a refetch but never serves wrong bytes.
        """
        with self._lock:
            db = self._conn()
            os.replace(old, new)
            return _rename_refs(db, old, new)

    def drop_refs_sync(self, path: str | os.PathLike[str]) -> int:
        """Forget every block referenced in the file ``path`` (the file itself is left)."""
        with self._lock:
            cur = self._conn().execute("DELETE FROM filestore WHERE path=?", (_abspath(path),))
            return cur.rowcount

    def copy_refs_sync(self, path: str | os.PathLike[str]) -> int:
        """Store a block file of each block referenced in ``path`` (those whose bytes still
        hold) and drop the references: for a file about to be removed whose verified blocks
        are still needed. Returns how many blocks were copied."""
        copied = 0
        for key, ref in self._iter_refs(_abspath(path)):
            mh = key_to_multihash(key)
            data, why, _gone = load_ref(ref, mh)
            if data is not None:
                self._write_sync(CID(1, RAW, mh), data, verify=False)
                copied += 1
            else:
                log.warning("%s: block %s is not copied: %s", ref.path, key, why)
            self._drop_ref_if(key, ref)
        return copied

    def _refs_of(self, keys: list[str]) -> dict[str, FileRef]:
        """The references among ``keys`` (a few statements for any number of keys)."""
        out: dict[str, FileRef] = {}
        for i in range(0, len(keys), _REF_BATCH):
            part = keys[i : i + _REF_BATCH]
            marks = ",".join("?" * len(part))
            rows = self._exec(
                f"SELECT mh, path, offset, length FROM filestore WHERE mh IN ({marks})",
                tuple(part),
            )
            for mh_text, path, offset, length in rows:
                out[str(mh_text)] = FileRef(str(path), int(str(offset)), int(str(length)))
        return out

    def _drop_ref_if(self, key: str, ref: FileRef) -> bool:
        """Drop ``key``'s reference if it is still ``ref``; False when it changed meanwhile
        (its file was renamed, or the block was referenced anew)."""
        with self._lock:
            cur = self._conn().execute(
                "DELETE FROM filestore WHERE mh=? AND path=? AND offset=? AND length=?",
                (key, ref.path, ref.offset, ref.length),
            )
            return cur.rowcount > 0

    def read_ref_sync(self, cid: CID | Multihash) -> tuple[bytes, FileRef]:
        """A referenced block's bytes (re-hashed) and where they were, even when a block file
        of it exists too; ``BlockNotFound`` when there is no reference or it no longer holds
        (then it is dropped)."""
        mh = cid.multihash if isinstance(cid, CID) else cid
        found = self._read_ref(mh)
        if found is None:
            raise BlockNotFound(str(cid))
        return found

    def _read_ref(self, mh: Multihash) -> tuple[bytes, FileRef] | None:
        """A referenced block's bytes, re-hashed, and the reference; None (and the reference
        dropped, if it can never hold again) when they are not there any more."""
        key = mh_key(mh)
        for _ in range(3):  # a rename between reading the row and the file: look again
            ref = self._refs_of([key]).get(key)
            if ref is None:
                return None
            data, why, gone = load_ref(ref, mh)
            if data is not None:
                return data, ref
            if not gone:
                log.warning("block %s in %s cannot be read now: %s", key, ref.path, why)
                return None
            if self._drop_ref_if(key, ref):
                log.warning(
                    "block %s is no longer in %s (%d bytes at %d): %s; reference dropped",
                    key,
                    ref.path,
                    ref.length,
                    ref.offset,
                    why,
                )
                return None
        return None

    @staticmethod
    def _plausible(ref: FileRef, sizes: dict[str, int | None]) -> bool:
        """Whether ``ref``'s file exists and is long enough (a stat per file, kept in
        ``sizes`` for the caller's batch): the cheap check of has/size, not a read."""
        if ref.path not in sizes:
            try:
                st = os.stat(ref.path)
                sizes[ref.path] = st.st_size if S_ISREG(st.st_mode) else None
            except OSError:
                sizes[ref.path] = None
        size = sizes[ref.path]
        return size is not None and size >= ref.offset + ref.length

    def sizes_sync(self, cids: list[CID]) -> dict[CID, int | None]:
        """The size of each block held (file or reference), None for the others.

        A reference counts when its file exists and is long enough; its bytes are only
        checked when read, so a block answered here may still turn out absent then.
        """
        out: dict[CID, int | None] = {}
        # by key, each made once (base32 is pure Python); CIDs of one multihash share a key
        missing: dict[str, list[CID]] = {}
        for cid in cids:
            key = mh_key(cid.multihash)
            try:
                out[cid] = os.stat(self._key_file(key)).st_size
            except OSError:  # missing, or unreadable: either way no block file to serve
                out[cid] = None
                missing.setdefault(key, []).append(cid)
        if missing:
            refs = self._refs_of(list(missing))
            sizes: dict[str, int | None] = {}
            for key, ref in refs.items():
                if self._plausible(ref, sizes):
                    for cid in missing[key]:
                        out[cid] = ref.length
        return out

    def _write_direct(self, fd: int, data: Buffer) -> bool:
        """Write ``data`` into the new, empty file ``fd`` past the page cache: the aligned part
        with O_DIRECT from this thread's aligned buffer, the tail (under 4 KiB) normally.
        False, having written nothing, when the file system refuses O_DIRECT (then this store
        stops trying)."""
        view = memoryview(self.aligned_buffer())
        size = gather(data, view)
        aligned = size - size % DIRECT_ALIGN
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | O_DIRECT)
            done = os.write(fd, view[:aligned])
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            log.info("%s: no O_DIRECT here (%s); blocks go through the page cache", self.root, exc)
            self.direct_io = False
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            os.ftruncate(fd, 0)
            return False
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        while done < size:  # the tail, or the rest of a short write
            done += os.pwrite(fd, view[done:size], done)
        return True

    def _index_links(self, mh: Multihash, links: tuple[dagpb.PBLink, ...]) -> None:
        key = mh_key(mh)
        with self._lock:
            db = self._conn()
            if db.execute("SELECT 1 FROM dagpb WHERE mh=?", (key,)).fetchone():
                return
            with _transaction(db, "indexing links"):
                db.execute("DELETE FROM refs WHERE parent=?", (key,))
                db.executemany(
                    "INSERT INTO refs(parent, child) VALUES (?, ?)",
                    [(key, str(link.hash)) for link in links],
                )
                db.execute("INSERT INTO dagpb(mh) VALUES (?)", (key,))

    def _read_sync(self, cid: CID | Multihash) -> bytes:
        path = self.path_for(cid)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BlockstoreError(f"cannot read block {cid}: {exc}") from exc
        found = self._read_ref(cid.multihash if isinstance(cid, CID) else cid)
        if found is None:
            raise BlockNotFound(str(cid))
        return found[0]

    def read_cached(self, cid: CID) -> bytes | None:
        """The bytes of ``cid``'s block file when the page cache holds all of them, else None.

        Meant for the event loop: a read that would wait for the disk is refused
        (``RWF_NOWAIT``), not made, so the cost is a memory copy. None also for a block held by
        reference (its bytes are re-hashed when read), a missing or unreadable block file, and
        where the OS has no ``RWF_NOWAIT``: the caller then takes the usual way, ``get``.
        """
        if _RWF_NOWAIT is None:
            return None
        try:
            fd = os.open(self._block_file(cid), os.O_RDONLY)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size > self.max_block_size:
                return None
            buf = self.aligned_buffer()
            # Into this thread's page-aligned buffer, then one copy out into ``bytes`` (which
            # the transport sends without copying; a bytes object cannot be read into). Into a
            # bytearray the read took twice as long here as into this mmap (134 / 69 us a MiB).
            with memoryview(buf) as whole, whole[:size] as view:
                got = os.preadv(fd, [view], 0, _RWF_NOWAIT)
                return bytes(view) if got == size else None
        except OSError:  # EAGAIN: not all cached; anything else, ``get`` reports it
            return None
        finally:
            os.close(fd)

    def _children_sync(self, cid: CID) -> list[CID]:
        """The CIDs a dag-pb block links to (from the index, or parsed and indexed now)."""
        if cid.codec != DAG_PB:
            return []
        key = mh_key(cid.multihash)
        with self._lock:
            db = self._conn()
            indexed = db.execute("SELECT 1 FROM dagpb WHERE mh=?", (key,)).fetchone()
            if indexed:
                rows = db.execute("SELECT child FROM refs WHERE parent=? ORDER BY rowid", (key,))
                return [CID.parse(r[0]) for r in rows.fetchall()]
        links = dagpb.decode(self._read_sync(cid)).links
        self._index_links(cid.multihash, links)
        return [link.hash for link in links]

    def iter_keys(self) -> Iterator[str]:
        """Every block key held, as a file or by reference, once each (synchronous: a
        directory scan, then the references in batches; they are not re-hashed here)."""
        yield from self._block_keys()
        for key, _ref in self._iter_refs():
            if not os.path.exists(self._key_file(key)):
                yield key

    def _block_keys(self) -> Iterator[str]:
        """The keys of the block files."""
        for shard in sorted(self._blocks.iterdir()):
            if not shard.is_dir():
                continue
            for entry in sorted(shard.iterdir()):
                if entry.suffix == ".data":
                    yield entry.stem

    def _iter_refs(self, path: str | None = None) -> Iterator[tuple[str, FileRef]]:
        """Every file reference (of the file ``path`` only, if given), read in batches in key
        order: rows added or dropped meanwhile may or may not be seen."""
        after = ""
        while True:
            args: tuple[object, ...]
            if path is None:
                where, args = "", (after, _REF_BATCH)
            else:
                where, args = "path=? AND ", (path, after, _REF_BATCH)
            rows = self._exec(
                f"SELECT mh, path, offset, length FROM filestore WHERE {where}mh>? "
                "ORDER BY mh LIMIT ?",
                args,
            )
            if not rows:
                return
            for mh_text, file, offset, length in rows:
                after = str(mh_text)
                yield after, FileRef(str(file), int(str(offset)), int(str(length)))

    def stat_sync(self) -> StoreStat:
        """Block files and their bytes; referenced blocks and theirs (a directory scan)."""
        blocks = size = 0
        for key in self._block_keys():
            with contextlib.suppress(OSError):
                size += os.stat(self._key_file(key)).st_size
                blocks += 1
        rows = self._exec("SELECT COUNT(*), COALESCE(SUM(length), 0) FROM filestore")
        return StoreStat(blocks, size, int(str(rows[0][0])), int(str(rows[0][1])))

    # -- async API ------------------------------------------------------------------------

    async def put(
        self, cid: CID, data: bytes | bytearray | memoryview, *, verify: bool = True
    ) -> bool:
        """Store a block; with ``verify`` (default) its hash is checked first.

        Returns False when the block was already stored. Raises ``HashMismatch``,
        ``BlockstoreFull``, ``BlockstoreError`` or ``MalformedDagPb`` for bad dag-pb bytes.
        """
        return await asyncio.to_thread(self._write_sync, cid, data, verify)

    async def put_data(
        self,
        data: bytes | bytearray | memoryview,
        codec: int,
        version: int = 1,
        hash_code: int = SHA2_256,
    ) -> CID:
        """Hash ``data``, store it, return its CID: one trip to a worker thread."""

        def work() -> CID:
            cid = CID.hash_of(data, codec, version, hash_code)
            self._write_sync(cid, data, verify=False)
            return cid

        return await asyncio.to_thread(work)

    async def get(self, cid: CID) -> bytes:
        """The block's bytes; ``BlockNotFound`` if absent."""
        return await asyncio.to_thread(self._read_sync, cid)

    def has_sync(self, cid: CID | Multihash) -> bool:
        """Whether the block is held: a block file, or a reference whose file exists and is
        long enough (its bytes are re-hashed when read, not here)."""
        if self.path_for(cid).exists():
            return True
        ref = self.ref_sync(cid)
        return ref is not None and self._plausible(ref, {})

    async def has(self, cid: CID) -> bool:
        return await asyncio.to_thread(self.has_sync, cid)

    def lookup_many_sync(self, cids: list[CID]) -> dict[CID, tuple[int, bytes | None]]:
        """The blocks held among ``cids``: size of each, and the bytes of dag-pb ones.

        Synchronous, for a worker thread: a DAG walk checks all of a node's children (up to
        1024) in one trip instead of one trip per child. A raw block held by reference counts
        as held when its file exists and is long enough; a caller that then reads it must
        expect ``BlockNotFound`` if the user changed those bytes.
        """
        out: dict[CID, tuple[int, bytes | None]] = {}
        raw: list[CID] = []
        for cid in cids:
            if cid.codec == DAG_PB:
                try:
                    data = self._read_sync(cid)
                except BlockNotFound:
                    continue
                out[cid] = (len(data), data)
            else:
                raw.append(cid)
        for cid, size in self.sizes_sync(raw).items():
            if size is not None:
                out[cid] = (size, None)
        return out

    async def has_many(self, cids: list[CID]) -> dict[CID, tuple[int, bytes | None]]:
        """``lookup_many_sync`` in one trip to a worker thread."""
        return await asyncio.to_thread(self.lookup_many_sync, cids)

    async def size(self, cid: CID) -> int | None:
        return (await asyncio.to_thread(self.sizes_sync, [cid]))[cid]

    async def read_stream(self, cid: CID, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        """The block's bytes in pieces of at most ``chunk_size``, each read off the loop.

        A referenced block is read (and re-hashed) whole first: it must be known good before
        its first piece goes out, and a block is at most ``max_block_size``."""
        path = self.path_for(cid)
        try:
            fh = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            data = await asyncio.to_thread(self._read_sync, cid)
            for start in range(0, len(data), chunk_size):
                yield data[start : start + chunk_size]
            return
        try:
            while True:
                piece = await asyncio.to_thread(fh.read, chunk_size)
                if not piece:
                    return
                yield piece
        finally:
            fh.close()

    async def delete(self, cid: CID) -> bool:
        """Delete the block file and drop the reference of ``cid`` (never the referenced
        file: it is the user's); False when neither was there."""

        def work() -> bool:
            key = mh_key(cid.multihash)
            with self._lock:
                cur = self._conn().execute("DELETE FROM filestore WHERE mh=?", (key,))
                had_ref = cur.rowcount > 0
            try:
                self.path_for(cid).unlink()
            except FileNotFoundError:
                return had_ref
            self._forget_links([key])
            return True

        return await asyncio.to_thread(work)

    def _forget_links(self, keys: list[str]) -> None:
        with self._lock:
            db = self._conn()
            with _transaction(db, "forgetting links"):
                db.executemany("DELETE FROM refs WHERE parent=?", [(k,) for k in keys])
                db.executemany("DELETE FROM dagpb WHERE mh=?", [(k,) for k in keys])

    async def children(self, cid: CID) -> list[CID]:
        return await asyncio.to_thread(self._children_sync, cid)

    # -- pins and transfers ---------------------------------------------------------------

    def _exec(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._conn().execute(sql, args).fetchall())

    async def pin(self, cid: CID, kind: PinKind = PinKind.RECURSIVE) -> None:
        """Protect ``cid`` (and with RECURSIVE everything under it) from garbage collection."""
        await asyncio.to_thread(
            self._exec,
            "INSERT INTO pins(cid, kind, created) VALUES (?, ?, ?) "
            "ON CONFLICT(cid) DO UPDATE SET kind=excluded.kind",
            (str(cid), kind.value, time.time()),
        )

    async def unpin(self, cid: CID) -> bool:
        def work() -> bool:
            with self._lock:
                cur = self._conn().execute("DELETE FROM pins WHERE cid=?", (str(cid),))
                return cur.rowcount > 0

        return await asyncio.to_thread(work)

    async def pins(self) -> list[tuple[CID, PinKind]]:
        rows = await asyncio.to_thread(self._exec, "SELECT cid, kind FROM pins ORDER BY created")
        return [(CID.parse(str(c)), PinKind(str(k))) for c, k in rows]

    async def begin_transfer(self, root: CID, target: str | None = None) -> None:
        """Record a fetch in progress: its blocks survive GC and a restart resumes it."""
        await asyncio.to_thread(
            self._exec,
            "INSERT OR IGNORE INTO transfers(root, target, created) VALUES (?, ?, ?)",
            (str(root), target, time.time()),
        )

    async def end_transfer(self, root: CID) -> None:
        await asyncio.to_thread(self._exec, "DELETE FROM transfers WHERE root=?", (str(root),))

    async def transfers(self) -> list[tuple[CID, str | None]]:
        rows = await asyncio.to_thread(self._exec, "SELECT root, target FROM transfers")
        return [(CID.parse(str(r)), None if t is None else str(t)) for r, t in rows]

    async def set_meta(self, key: str, value: str) -> None:
        await asyncio.to_thread(
            self._exec, "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value)
        )

    async def get_meta(self, key: str) -> str | None:
        rows = await asyncio.to_thread(self._exec, "SELECT value FROM meta WHERE key=?", (key,))
        return str(rows[0][0]) if rows else None

    @contextlib.contextmanager
    def hold(self, root: CID) -> Iterator[None]:
        """Keep the DAG under ``root`` safe from GC while the block runs (not persisted)."""
        with self._lock:
            self._holds[root] = self._holds.get(root, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._holds[root] - 1
                if left:
                    self._holds[root] = left
                else:
                    del self._holds[root]

    # -- garbage collection and verification ----------------------------------------------

    def _live_keys_sync(self) -> set[str]:
        roots: list[tuple[CID, bool]] = []
        for c, k in self._exec("SELECT cid, kind FROM pins"):
            roots.append((CID.parse(str(c)), str(k) == PinKind.RECURSIVE.value))
        for (r,) in self._exec("SELECT root FROM transfers"):
            roots.append((CID.parse(str(r)), True))
        with self._lock:
            roots.extend((cid, True) for cid in self._holds)
        live: set[str] = set()
        stack: list[CID] = []
        for cid, recursive in roots:
            live.add(mh_key(cid.multihash))
            if recursive:
                stack.append(cid)
        seen: set[CID] = set()
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            try:
                kids = self._children_sync(cid)
            except BlockNotFound:
                continue  # a pinned DAG with missing parts (an unfinished transfer)
            except DecodeError:
                log.warning("pinned block %s is not valid dag-pb; its children are not kept", cid)
                continue
            for kid in kids:
                live.add(mh_key(kid.multihash))
                stack.append(kid)
        return live

    def _gc_sync(self) -> GCResult:
        live = self._live_keys_sync()
        removed = freed = kept = 0
        dead: list[str] = []
        for key in list(self._block_keys()):
            if key in live:
                kept += 1
                continue
            path = self._key_file(key)
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed += 1
            freed += size
            dead.append(key)
        if dead:
            self._forget_links(dead)
        refs_dropped = refs_kept = 0
        dead_refs: list[str] = []
        for key, _ref in self._iter_refs():
            if key in live:
                refs_kept += 1
                continue
            dead_refs.append(key)
            if len(dead_refs) >= _REF_BATCH:
                refs_dropped += self._drop_refs(dead_refs)
                dead_refs = []
        refs_dropped += self._drop_refs(dead_refs)  # the files stay: they are the user's
        return GCResult(removed, freed, kept, refs_dropped, refs_kept)

    def _drop_refs(self, keys: list[str]) -> int:
        """Drop the references of ``keys`` (one transaction); how many there were."""
        if not keys:
            return 0
        with self._lock:
            db = self._conn()
            with _transaction(db, "dropping file references"):
                cur = db.executemany("DELETE FROM filestore WHERE mh=?", [(k,) for k in keys])
                return cur.rowcount

    async def gc(self) -> GCResult:
        """Delete every block not reachable from a pin or a transfer in progress (block files
        are deleted; references are dropped, their files left alone).

        The caller must not add unpinned content concurrently (the node holds a GC lock).
        """
        return await asyncio.to_thread(self._gc_sync)

    def _verify_sync(self, remove_damaged: bool) -> VerifyReport:
        report = VerifyReport()
        for shard in sorted(self._blocks.iterdir()):
            entries = sorted(shard.iterdir()) if shard.is_dir() else [shard]
            for entry in entries:
                if entry.suffix != ".data" or not shard.is_dir():
                    report.foreign.append(str(entry.relative_to(self.root)))
                    continue
                key = entry.stem
                try:
                    mh = key_to_multihash(key)
                except DecodeError:
                    report.foreign.append(str(entry.relative_to(self.root)))
                    continue
                report.checked += 1
                if _shard(key) != shard.name:
                    report.foreign.append(str(entry.relative_to(self.root)))
                    continue
                try:
                    data = entry.read_bytes()
                except OSError:
                    report.unreadable.append(key)
                    continue
                try:
                    good = hash_bytes(data, mh.code) == mh.digest
                except UsageError:
                    report.unreadable.append(key)  # a hash we cannot compute here
                    continue
                if not good:
                    report.damaged.append(key)
                    if remove_damaged:
                        entry.unlink(missing_ok=True)
        if remove_damaged and report.damaged:
            self._forget_links(report.damaged)
        for key, ref in self._iter_refs():
            report.checked_refs += 1
            try:
                mh = key_to_multihash(key)
            except DecodeError:
                report.damaged_refs.append(DamagedRef(key, ref, "not a block key"))
                if remove_damaged:
                    self._drop_ref_if(key, ref)
                continue
            held, why, gone = load_ref(ref, mh)
            if held is not None:
                continue
            if not gone:
                report.unreadable.append(key)
                continue
            report.damaged_refs.append(DamagedRef(key, ref, why))
            if remove_damaged:
                self._drop_ref_if(key, ref)
        for c, _k in self._exec("SELECT cid, kind FROM pins"):
            cid = CID.parse(str(c))
            if not self.has_sync(cid):
                report.missing_pinned.append(str(cid))
        return report

    async def verify(self, remove_damaged: bool = False) -> VerifyReport:
        """Re-hash every block, and the bytes of every file reference; report (and optionally
        delete the block files, drop the references of) those that are damaged."""
        return await asyncio.to_thread(self._verify_sync, remove_damaged)
