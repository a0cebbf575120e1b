#!/usr/bin/env bash
# The clinic benchmark (issue 8): a doctor's action round trip with a large history vs. an
# empty store, durable clinic events per second, memory per 10,000 ended consultations, and a
# flood of unauthenticated WebSocket frames. Prints a markdown table (scenario, metric, value).
#
#   loadtest/clinic-bench.sh                          # build the release server + bench, run all
#   loadtest/clinic-bench.sh /path/to/huizhen         # measure that server binary (not built)
#   HUIZHEN_BIN=/path/to/huizhen loadtest/clinic-bench.sh
#   loadtest/clinic-bench.sh /path/to/huizhen --scenarios flood --flood-frames 20000
#
# Arguments after the server binary (or after `--`) go to huizhen-clinic-bench (see --help).
#
# Environment (all optional):
#   HUIZHEN_BIN   the server binary to measure (default: build target/release/huizhen)
#   BENCH_BIN     the bench binary (default: build target/release/huizhen-clinic-bench)
#   BENCH_OUT     output directory (default target/clinic-bench/<date-time>): the table
#                 (clinic-bench.md), the JSON and, with BENCH_KEEP=1, the servers' data and logs
#   BENCH_KEEP    1 to keep the servers' data directories and logs in BENCH_OUT/work
#
# Pinning: with two or more cores the server runs on core 0 (taskset, "one core") and the
# bench on core 1. Everything stays on 127.0.0.1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

SERVER="${HUIZHEN_BIN:-}"
if [ $# -gt 0 ] && [ "$1" != "--" ] && [[ "$1" != -* ]]; then
	SERVER="$1"
	shift
fi
if [ "${1:-}" = "--" ]; then
	shift
fi

log() { echo "clinic-bench: $*" >&2; }

build=()
if [ -z "$SERVER" ]; then
	build+=(-p huizhen --bin huizhen)
	SERVER="$TARGET_DIR/release/huizhen"
fi
BENCH="${BENCH_BIN:-}"
if [ -z "$BENCH" ]; then
	build+=(-p huizhen-loadtest --bin huizhen-clinic-bench)
	BENCH="$TARGET_DIR/release/huizhen-clinic-bench"
fi
if [ ${#build[@]} -gt 0 ]; then
	log "building ${build[*]}"
	nice -n 10 cargo build --release --locked "${build[@]}"
fi
[ -x "$SERVER" ] || { log "no server binary at $SERVER"; exit 1; }
[ -x "$BENCH" ] || { log "no bench binary at $BENCH"; exit 1; }

OUT="${BENCH_OUT:-$TARGET_DIR/clinic-bench/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
args=(--server "$SERVER" --json "$OUT/clinic-bench.json")
if [ "${BENCH_KEEP:-0}" = 1 ]; then
	args+=(--work-dir "$OUT/work" --keep)
fi
pin=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
	args+=(--server-cpu 0)
	pin=(taskset -c 1)
else
	log "one core (or no taskset): server and bench share the CPU"
fi

log "server $SERVER"
log "output $OUT"
{
	echo "# huizhen clinic benchmark"
	echo
	echo "- server: \`$SERVER\`"
	if commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"; then
		echo "- bench built from: $commit"
	fi
	echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(uname -sr)"
	echo "- command: \`$BENCH ${args[*]} $*\`"
	echo
} >"$OUT/clinic-bench.md"
${pin[@]+"${pin[@]}"} "$BENCH" "${args[@]}" "$@" | tee -a "$OUT/clinic-bench.md"
log "table in $OUT/clinic-bench.md"
