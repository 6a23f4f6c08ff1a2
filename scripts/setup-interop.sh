#!/usr/bin/env bash
# Install the real third-party peers that the interop tests and benchmarks drive:
#   - js-libp2p 3.x (+ helia) in tests/interop/js/node_modules, with Node 22 from the npm
#     package `node` at tests/interop/js/node_modules/.bin/node (js-libp2p 3.x needs Node 22;
#     the system node may be older);
#   - py-libp2p in its own venv, .venv-pylibp2p (it runs on trio and pins its own deps).
# Idempotent: each part is skipped when its lock file has not changed since the last install.
# Needs only the npm and PyPI registries. Run from anywhere: `bash scripts/setup-interop.sh`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JS_DIR="$ROOT/tests/interop/js"
PY_REQ="$ROOT/tests/interop/py/requirements.txt"
PY_VENV="$ROOT/.venv-pylibp2p"
NODE_BIN="$JS_DIR/node_modules/.bin/node"
JS_STAMP="$JS_DIR/node_modules/.peerstack-installed"
PY_STAMP="$PY_VENV/.peerstack-installed"

say() { printf '[setup-interop] %s\n' "$*"; }
die() { printf '[setup-interop] ERROR: %s\n' "$*" >&2; exit 1; }

digest() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

setup_js() {
    command -v npm >/dev/null 2>&1 \
        || die "npm is not installed; it is needed to fetch js-libp2p and Node 22 (Debian: apt-get install npm)"
    [ -f "$JS_DIR/package-lock.json" ] || die "$JS_DIR/package-lock.json is missing"
    local want
    want="$(digest "$JS_DIR/package.json" "$JS_DIR/package-lock.json")"
    if [ -f "$JS_STAMP" ] && [ "$(cat "$JS_STAMP")" = "$want" ] && [ -x "$NODE_BIN" ]; then
        say "js peers up to date ($("$NODE_BIN" --version))"
        return
    fi
    say "npm ci in tests/interop/js (js-libp2p, helia, node@22) ..."
    # The `node` package installs its binary in a preinstall script; recent npm versions skip
    # dependency install scripts unless package.json's "allowScripts" allows them (it does).
    (cd "$JS_DIR" && npm ci --no-audit --no-fund --loglevel=error) \
        || die "npm ci failed in $JS_DIR (is the npm registry reachable?)"
    [ -x "$NODE_BIN" ] || die "npm ci did not install $NODE_BIN (the node@22 package's preinstall script did not run?)"
    local version
    version="$("$NODE_BIN" --version)" || die "$NODE_BIN does not run"
    case "$version" in
        v22.*) ;;
        *) die "$NODE_BIN is $version, expected v22.x" ;;
    esac
    (cd "$JS_DIR" && "$NODE_BIN" -e "import('libp2p').then(() => process.exit(0), (e) => { console.error(e); process.exit(1) })") \
        || die "js-libp2p does not load under $NODE_BIN"
    echo "$want" > "$JS_STAMP"
    say "js peers installed (node $version)"
}

setup_py() {
    local python="${PYTHON:-python3}"
    command -v "$python" >/dev/null 2>&1 || die "$python not found (set PYTHON=/path/to/python3.11)"
    "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || die "py-libp2p needs Python >= 3.10; $python is $("$python" --version 2>&1)"
    local want
    want="$(digest "$PY_REQ")"
    if [ -f "$PY_STAMP" ] && [ "$(cat "$PY_STAMP")" = "$want" ] && [ -x "$PY_VENV/bin/python" ]; then
        say "py-libp2p venv up to date ($PY_VENV)"
        return
    fi
    if [ ! -x "$PY_VENV/bin/python" ]; then
        say "creating $PY_VENV"
        "$python" -m venv "$PY_VENV" || die "python -m venv failed (Debian: apt-get install python3-venv)"
    fi
    say "pip install -r tests/interop/py/requirements.txt ..."
    "$PY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PY_REQ" \
        || die "pip install failed for $PY_REQ (is PyPI reachable?)"
    "$PY_VENV/bin/python" -c 'import libp2p, trio' || die "py-libp2p does not import in $PY_VENV"
    echo "$want" > "$PY_STAMP"
    say "py-libp2p installed ($("$PY_VENV/bin/python" -m pip show libp2p 2>/dev/null | sed -n 's/^Version: //p'))"
}

setup_js
setup_py
say "done"
