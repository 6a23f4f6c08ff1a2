"""libtorrent 2.x over TCP on loopback: the BitTorrent anchor of ``bench/share_1gib.py``.

Runs under the interpreter of ``.venv-libtorrent`` (``scripts/setup-bench-share.sh`` installs
PyPI ``libtorrent`` there), never the project's venv: it imports nothing from peerstack. The
driver starts one process per role:

    make-torrent --src FILE --out FILE.torrent [--format hybrid|v1|v2]
    seed   --torrent T --dir DIR_OF_SRC [--upload-cap BYTES_PER_S]
           -> one JSON line {"port": P} once seeding; exits when stdin closes
    leech  --torrent T --out-dir DIR --peer 127.0.0.1:P [--peer ...] --expect-sha256 HEX
           -> one JSON line with the timings; exits

Settings that make it a fair loopback run:

- TCP only: uTP is libtorrent's default and slow on loopback (its delay-based congestion control
  sees the loopback queue as congestion), so ``enable_{incoming,outgoing}_utp`` are off;
- listen on 127.0.0.1 only, no DHT / LSD / UPnP / NAT-PMP: peers are connected explicitly with
  ``connect_peer``;
- ``allow_multiple_connections_per_ip``: the four seeders all live on 127.0.0.1;
- upload cap: ``upload_rate_limit``. libtorrent exempts local-network peers from rate limits by
  default (``ignore_limits_on_local_network``), which on loopback would silently disable the
  cap, so a capped seeder turns that off; ``rate_limit_ip_overhead`` is off so the cap counts
  payload, as it would for the other implementations.

Time in the leecher starts just before ``add_torrent`` (the torrent metadata is given, as the
CID is given to the others) and stops when the file is complete (every piece hash-checked by
libtorrent), flushed to the file (``flush_cache`` answered), and its sha256 equals the source's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ALERT_WAIT_MS = 50
READ_CHUNK = 4 * 1024 * 1024


def _load_libtorrent() -> Any:
    """The libtorrent module (imported on use: ``make bench`` runs this file bare, without it)."""
    import libtorrent  # type: ignore[import-not-found,unused-ignore]

    return libtorrent


lt: Any = None  # set by main() once the role is known


def settings(upload_cap: int = 0) -> dict[str, Any]:
    """Session settings: TCP over 127.0.0.1 only, no discovery, local peers allowed."""
    mask = (
        lt.alert.category_t.status_notification
        | lt.alert.category_t.error_notification
        | lt.alert.category_t.storage_notification
    )
    return {
        "listen_interfaces": "127.0.0.1:0",
        "outgoing_interfaces": "",
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_tcp": True,
        "enable_incoming_tcp": True,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "upload_rate_limit": upload_cap,
        "download_rate_limit": 0,
        # Rate limits do not apply to local peers unless told so: a capped seeder must be told.
        "ignore_limits_on_local_network": upload_cap == 0,
        "rate_limit_ip_overhead": False,
        "alert_mask": mask,
        "user_agent": "peerstack-bench",
    }


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def make_torrent(src: Path, out: Path, fmt: str) -> dict[str, Any]:
    """Create a torrent for ``src`` (piece size chosen by libtorrent) and write it to ``out``."""
    fs = lt.file_storage()
    lt.add_files(fs, str(src))
    flags = {"hybrid": 0, "v1": lt.create_torrent.v1_only, "v2": lt.create_torrent.v2_only}[fmt]
    ct = lt.create_torrent(fs, 0, flags=flags)
    ct.set_creator("peerstack bench/share_1gib.py")
    lt.set_piece_hashes(ct, str(src.parent))
    out.write_bytes(lt.bencode(ct.generate()))
    info = lt.torrent_info(str(out))
    return {"piece_size": int(info.piece_length()), "pieces": int(info.num_pieces()), "format": fmt}


def _wait_for(ses: Any, want: tuple[type, ...], timeout: float) -> Any:
    """Pop alerts until one of the ``want`` types arrives; raise on an error alert."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ses.wait_for_alert(ALERT_WAIT_MS)
        for alert in ses.pop_alerts():
            if isinstance(alert, want):
                return alert
            if isinstance(alert, lt.torrent_error_alert | lt.file_error_alert):
                raise RuntimeError(f"libtorrent: {alert.message()}")
    raise TimeoutError(f"no {[w.__name__ for w in want]} within {timeout} s")


def seed(torrent: Path, directory: Path, upload_cap: int) -> None:
    """Seed ``torrent`` from ``directory``; print the port once seeding; exit on stdin EOF."""
    ses = lt.session(settings(upload_cap))
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(str(torrent))
    atp.save_path = str(directory)
    handle = ses.add_torrent(atp)
    # A full check of the data (not timed: it happens before the leecher starts).
    deadline = time.monotonic() + 600
    while not handle.status().is_seeding:
        if time.monotonic() > deadline:
            raise TimeoutError("seeder never reached the seeding state")
        ses.wait_for_alert(ALERT_WAIT_MS)
        ses.pop_alerts()
    print(json.dumps({"port": ses.listen_port(), "version": lt.__version__}), flush=True)
    # Each stdin line asks for the bytes uploaded so far; the driver closes stdin to stop us.
    for _line in sys.stdin:
        status = handle.status()
        print(json.dumps({"uploaded": int(status.total_payload_upload)}), flush=True)


def leech(torrent: Path, out_dir: Path, peers: list[str], expect: str, timeout: float) -> None:
    """Download ``torrent`` from ``peers``; print the timings as one JSON line."""
    ses = lt.session(settings(0))
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(str(torrent))
    atp.save_path = str(out_dir)
    target = out_dir / atp.ti.files().file_path(0)
    t0 = time.perf_counter()
    handle = ses.add_torrent(atp)
    for peer in peers:
        host, _, port = peer.rpartition(":")
        handle.connect_peer((host, int(port)))
    _wait_for(ses, (lt.torrent_finished_alert,), timeout)
    t_done = time.perf_counter()
    handle.flush_cache()
    _wait_for(ses, (lt.cache_flushed_alert,), 120)
    t_disk = time.perf_counter()
    digest = sha256_file(target)
    t_verified = time.perf_counter()
    status = handle.status()
    print(
        json.dumps(
            {
                "ok": digest == expect,
                "sha256": digest,
                "bytes": target.stat().st_size,
                "seconds_complete": t_done - t0,
                "seconds_on_disk": t_disk - t0,
                "seconds_verified": t_verified - t0,
                "downloaded": int(status.total_payload_download),
                "peers": len(handle.get_peer_info()),
                "version": lt.__version__,
            }
        ),
        flush=True,
    )
    ses.remove_torrent(handle)


def main(argv: list[str] | None = None) -> None:
    global lt
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("an anchor of bench/share_1gib.py (run that); roles: make-torrent, seed, leech")
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    mk = sub.add_parser("make-torrent")
    mk.add_argument("--src", type=Path, required=True)
    mk.add_argument("--out", type=Path, required=True)
    mk.add_argument("--format", choices=("hybrid", "v1", "v2"), default="hybrid")
    sd = sub.add_parser("seed")
    sd.add_argument("--torrent", type=Path, required=True)
    sd.add_argument("--dir", type=Path, required=True)
    sd.add_argument("--upload-cap", type=int, default=0, help="bytes per second, 0 = none")
    lc = sub.add_parser("leech")
    lc.add_argument("--torrent", type=Path, required=True)
    lc.add_argument("--out-dir", type=Path, required=True)
    lc.add_argument("--peer", action="append", required=True)
    lc.add_argument("--expect-sha256", required=True)
    lc.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    # add_files / create_torrent(file_storage) / files() still work in 2.x but warn
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    lt = _load_libtorrent()
    if args.role == "make-torrent":
        print(json.dumps(make_torrent(args.src, args.out, args.format)), flush=True)
    elif args.role == "seed":
        seed(args.torrent, args.dir, args.upload_cap)
    else:
        leech(args.torrent, args.out_dir, args.peer, args.expect_sha256, args.timeout)


if __name__ == "__main__":
    main()
