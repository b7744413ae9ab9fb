#!/usr/bin/env bash
# Installs what the console's browser test (tests/http/console.rs, tests/browser/console.mjs)
# needs, idempotently:
#   /usr/bin/chromium          Debian's chromium package (apt-get, as root or through sudo)
#   target/browser/node_modules playwright-core, pinned by tests/browser/package-lock.json,
#                              which drives that Chromium over its DevTools protocol (it
#                              downloads no browser of its own)
# Re-running it is cheap: each install is skipped when its result is already there.
# Override the Chromium with FLEXRUN_CHROMIUM, the install directory with FLEXRUN_BROWSER_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${FLEXRUN_BROWSER_DIR:-$ROOT/target/browser}"
CHROMIUM="${FLEXRUN_CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$CHROMIUM" ]; then
    echo "setup-browser: installing Debian's chromium"
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        as_root=(sudo -n)
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! "${as_root[@]}" apt-get install -y -q --no-install-recommends chromium >/dev/null; then
        "${as_root[@]}" apt-get update -q >/dev/null
        "${as_root[@]}" apt-get install -y -q --no-install-recommends chromium >/dev/null
    fi
fi
"$CHROMIUM" --version 2>/dev/null

mkdir -p "$DIR"
if ! cmp -s "$ROOT/tests/browser/package-lock.json" "$DIR/package-lock.json" \
    || [ ! -f "$DIR/node_modules/playwright-core/package.json" ]; then
    echo "setup-browser: installing playwright-core (tests/browser/package-lock.json)"
    cp "$ROOT/tests/browser/package.json" "$ROOT/tests/browser/package-lock.json" "$DIR/"
    (cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup-browser: node_modules $DIR/node_modules"
