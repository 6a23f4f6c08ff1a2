#!/usr/bin/env bash
# Install the third-party anchors that bench/ runs side by side with peerstack:
#   - bmuller `kademlia` 2.2.3 (PyPI; asyncio + rpcudp over UDP) in its own venv, .venv-kademlia,
#     so its pins never touch the project venv or the py-libp2p interop venv;
#   - py-libp2p (for bench/dht_anchor_pylibp2p.py) comes from scripts/setup-interop.sh, which
#     this script runs too unless SKIP_INTEROP=1.
# Idempotent: the kademlia venv is rebuilt only when the pinned requirement changes.
# Needs only PyPI. Run from anywhere: `bash scripts/setup-bench.sh`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAD_VENV="$ROOT/.venv-kademlia"
KAD_REQ="kademlia==2.2.3"
KAD_STAMP="$KAD_VENV/.peerstack-installed"

say() { printf '[setup-bench] %s\n' "$*"; }
die() { printf '[setup-bench] ERROR: %s\n' "$*" >&2; exit 1; }

setup_kademlia() {
    local python="${PYTHON:-python3}"
    command -v "$python" >/dev/null 2>&1 || die "$python not found (set PYTHON=/path/to/python3.11)"
    if [ -f "$KAD_STAMP" ] && [ "$(cat "$KAD_STAMP")" = "$KAD_REQ" ] && [ -x "$KAD_VENV/bin/python" ]; then
        say "kademlia venv up to date ($KAD_VENV)"
        return
    fi
    if [ ! -x "$KAD_VENV/bin/python" ]; then
        say "creating $KAD_VENV"
        "$python" -m venv "$KAD_VENV" || die "python -m venv failed (Debian: apt-get install python3-venv)"
    fi
    say "pip install $KAD_REQ ..."
    "$KAD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$KAD_REQ" \
        || die "pip install $KAD_REQ failed (is PyPI reachable?)"
    "$KAD_VENV/bin/python" -c 'import kademlia.network, rpcudp' || die "kademlia does not import in $KAD_VENV"
    echo "$KAD_REQ" > "$KAD_STAMP"
    say "kademlia installed ($("$KAD_VENV/bin/python" -m pip show kademlia 2>/dev/null | sed -n 's/^Version: //p'))"
}

setup_kademlia
if [ "${SKIP_INTEROP:-0}" != "1" ]; then
    bash "$ROOT/scripts/setup-interop.sh"
fi
say "done"
