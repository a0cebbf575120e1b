#!/usr/bin/env bash
# Install what the tests need and run every test: Rust unit and integration tests (including
# the webrtc-rs clients), the benchmark build, and the headless-Chromium browser tests.
# Usage: tests/run-all.sh        (from anywhere; needs root or sudo for apt on a fresh machine)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x /usr/bin/chromium ]; then
  log "installing Chromium (Debian package)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi

log "installing browser test packages (playwright-core, no browser download)"
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)

log "building"
cargo build --workspace --all-targets --locked

log "Rust tests"
cargo test --workspace --locked -- --test-threads=2

log "browser tests (headless Chromium)"
export HUIZHEN_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/huizhen"
(cd tests/browser && npm test)

log "all tests passed"
