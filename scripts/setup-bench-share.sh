#!/usr/bin/env bash
# Install the anchors of bench/share_1gib.py in their own environments:
#   - libtorrent 2.x (PyPI `libtorrent`, binary wheels) in its own venv, .venv-libtorrent, so its
#     bindings never touch the project's shared .venv;
#   - helia / js-libp2p come from tests/interop/js (scripts/setup-interop.sh installs them; this
#     script runs it when node_modules is missing).
# Idempotent: a stamp file records what was installed; a second run does nothing.
# Needs only the PyPI and npm registries. Run from anywhere: `bash scripts/setup-bench-share.sh`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LT_VENV="$ROOT/.venv-libtorrent"
LT_SPEC="${LIBTORRENT_SPEC:-libtorrent>=2,<3}"
LT_STAMP="$LT_VENV/.peerstack-installed"
JS_NODE="$ROOT/tests/interop/js/node_modules/.bin/node"

say() { printf '[setup-bench-share] %s\n' "$*"; }
die() { printf '[setup-bench-share] ERROR: %s\n' "$*" >&2; exit 1; }

setup_libtorrent() {
    local python="${PYTHON:-python3}"
    command -v "$python" >/dev/null 2>&1 || die "$python not found (set PYTHON=/path/to/python3)"
    if [ -f "$LT_STAMP" ] && [ "$(cat "$LT_STAMP")" = "$LT_SPEC" ] && [ -x "$LT_VENV/bin/python" ] \
        && "$LT_VENV/bin/python" -c 'import libtorrent' >/dev/null 2>&1; then
        say "libtorrent venv up to date ($("$LT_VENV/bin/python" -c 'import libtorrent; print(libtorrent.__version__)'))"
        return
    fi
    say "creating $LT_VENV with $LT_SPEC ..."
    [ -x "$LT_VENV/bin/python" ] || "$python" -m venv "$LT_VENV" || die "python -m venv failed"
    "$LT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "$LT_SPEC" \
        || die "pip could not install $LT_SPEC (no binary wheel for this Python/platform?)"
    local version
    version="$("$LT_VENV/bin/python" -c 'import libtorrent; print(libtorrent.__version__)')" \
        || die "libtorrent does not import in $LT_VENV"
    case "$version" in
        2.*) ;;
        *) die "libtorrent $version installed, expected 2.x" ;;
    esac
    echo "$LT_SPEC" > "$LT_STAMP"
    say "libtorrent $version installed in $LT_VENV"
}

# Every package bench/share_anchor_helia.mjs loads from tests/interop/js/node_modules. Some are
# helia's own dependencies (not named in that package.json), present because npm hoists them.
HELIA_ANCHOR_PACKAGES=(helia @helia/libp2p @helia/bitswap @helia/unixfs @libp2p/tcp @libp2p/noise
    @libp2p/yamux @libp2p/identify blockstore-core datastore-core @multiformats/multiaddr multiformats)

helia_missing() {
    local pkg
    for pkg in "${HELIA_ANCHOR_PACKAGES[@]}"; do
        [ -f "$ROOT/tests/interop/js/node_modules/$pkg/package.json" ] || { echo "$pkg"; return; }
    done
}

setup_helia() {
    if [ -x "$JS_NODE" ] && [ -z "$(helia_missing)" ]; then
        say "helia present in tests/interop/js ($("$JS_NODE" --version), helia $(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$ROOT/tests/interop/js/node_modules/helia/package.json"))"
        return
    fi
    say "helia or one of its packages missing; running scripts/setup-interop.sh"
    bash "$ROOT/scripts/setup-interop.sh"
    local missing
    missing="$(helia_missing)"
    [ -z "$missing" ] || die "tests/interop/js/node_modules/$missing is missing after setup-interop.sh (the helia anchor needs it)"
}

setup_libtorrent
setup_helia
