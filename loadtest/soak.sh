#!/usr/bin/env bash
# The soak (issue 11): the load generator for an hour at about 70 % of capacity, with
# participants joining and leaving all the time, while the server's resident memory, open
# files and runtime tasks are sampled. A leak that a 25 s benchmark cannot see (a room, a task,
# a socket or a buffer kept after its participant left) shows here as a line that climbs.
#
#   loadtest/soak.sh                    # 60 min, 140 follow-up visits, each ~60 s long
#
# Not part of the test command (it takes an hour); its figures are in the README.
#
# Environment (all optional):
#   SOAK_MINUTES   length of the load, minutes (default 60)
#   SOAK_VISITS    follow-up visits held at once (default 140: 70 % of the 200 measured as one
#                  core's capacity, README "Load benchmark")
#   SOAK_CHURN     mean length of a visit, s (default 60; spread 30-90 s): every visit that
#                  ends is replaced at once by a new one in new rooms, so ~2 participants join
#                  and ~2 leave every second at the default sizes
#   SOAK_SAMPLE    seconds between samples (default 10)
#   SOAK_OUT       output directory (default target/soak/<date-time>)
#   HUIZHEN_BIN, BENCH_BIN   the server and generator binaries (else built in release)
#
# Output: samples.csv (elapsed s, RSS KiB, open files, alive tasks, threads, participants,
# rooms), report.json (the generator's), server.log, and summary.md: the baseline before any
# load, the load's first and last ten minutes, and 60 s after the last participant left.
#
# Pinning as in bench.sh: the server on core 0, the generator on core 1. Loopback only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MINUTES="${SOAK_MINUTES:-60}"
VISITS="${SOAK_VISITS:-140}"
CHURN="${SOAK_CHURN:-60}"
SAMPLE="${SOAK_SAMPLE:-10}"
OUT="${SOAK_OUT:-$ROOT/target/soak/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
log() { echo "soak: $*" >&2; }

if [ -z "${HUIZHEN_BIN:-}" ] || [ -z "${BENCH_BIN:-}" ]; then
	cargo build --release --locked -p huizhen -p huizhen-loadtest
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SERVER_BIN="${HUIZHEN_BIN:-$TARGET_DIR/release/huizhen}"
GEN_BIN="${BENCH_BIN:-$TARGET_DIR/release/huizhen-loadtest}"
PIN_SERVER=()
PIN_GEN=()
if [ "$(nproc)" -ge 2 ]; then
	PIN_SERVER=(taskset -c 0)
	PIN_GEN=(taskset -c 1)
fi

HZ_PID=""
GEN_PID=""
cleanup() {
	for pid in $GEN_PID $HZ_PID; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
}
trap cleanup EXIT

HZ_DIR="$OUT/server"
mkdir -p "$HZ_DIR"
cat >"$HZ_DIR/huizhen.toml" <<EOF
[http]
listen = "127.0.0.1:17980"
[media]
udp_listen = "127.0.0.1:17982"
tcp_listen = "127.0.0.1:17983"
announce = ["127.0.0.1"]
max_participants_per_room = 1000
max_participants = 10000
[storage]
data_dir = "$HZ_DIR/data"
[archive]
local_dir = "$HZ_DIR/archive"
EOF
METRICS=http://127.0.0.1:17980/metrics
RUST_LOG=warn "${PIN_SERVER[@]}" "$SERVER_BIN" serve --config "$HZ_DIR/huizhen.toml" \
	>"$OUT/server.log" 2>&1 &
HZ_PID=$!
for _ in $(seq 100); do
	curl -sf http://127.0.0.1:17980/readyz >/dev/null 2>&1 && break
	sleep 0.1
done
curl -sf http://127.0.0.1:17980/readyz >/dev/null || {
	log "the server did not become ready; see $OUT/server.log"
	exit 1
}

# One sample: elapsed s, RSS KiB, open files, alive tasks, threads, participants, rooms, and
# the allocator's live and resident KiB (a leak climbs in the first, fragmentation only in the
# second).
START=$(date +%s)
sample() {
	local m rss fds threads
	m=$(curl -sf --max-time 5 "$METRICS" || true)
	rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$HZ_PID/status")
	threads=$(awk '/^Threads:/ { print $2 }' "/proc/$HZ_PID/status")
	fds=$(find "/proc/$HZ_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
	metric() { awk -v n="$1" '$1 == n { print $2; exit }' <<<"$m"; }
	kib() { awk -v n="$1" '$1 == n { printf "%d", $2 / 1024; exit }' <<<"$m"; }
	echo "$(($(date +%s) - START)),$rss,$fds,$(metric huizhen_runtime_alive_tasks),$threads,$(metric huizhen_sfu_participants),$(metric huizhen_sfu_rooms),$(kib huizhen_process_heap_allocated_bytes),$(kib huizhen_process_heap_resident_bytes),$1"
}
echo "elapsed_s,rss_kib,open_files,alive_tasks,threads,participants,rooms,heap_allocated_kib,heap_resident_kib,phase" >"$OUT/samples.csv"
# Baseline: the idle server, a few samples.
for _ in 1 2 3; do
	sample baseline >>"$OUT/samples.csv"
	sleep 2
done

DURATION=$((MINUTES * 60))
log "$VISITS visits for $MINUTES min, each ~${CHURN} s; samples every ${SAMPLE} s in $OUT/samples.csv"
"${PIN_GEN[@]}" "$GEN_BIN" --target huizhen --url ws://127.0.0.1:17980/ws --scenario followup \
	--units "$VISITS" --churn-secs "$CHURN" --duration "$DURATION" --ramp 50 --warmup 10 \
	--server-pid "$HZ_PID" --metrics-url "$METRICS" --client-ip 127.0.0.1 --quiet \
	--json "$OUT/report.json" >"$OUT/generator.txt" 2>"$OUT/generator.log" &
GEN_PID=$!
# Bounded: the generator stops itself at DURATION; a little slack for its ramp and report.
deadline=$(($(date +%s) + DURATION + 120))
while kill -0 "$GEN_PID" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
	sample load >>"$OUT/samples.csv"
	sleep "$SAMPLE"
done
if kill -0 "$GEN_PID" 2>/dev/null; then
	log "the generator overran its duration; stopping it"
	kill "$GEN_PID" 2>/dev/null || true
fi
wait "$GEN_PID" || log "the generator exited with status $?"
GEN_PID=""
# After: every participant has left; give the server its timeouts (peer timeout, room
# teardown) and the allocator its background purge.
for _ in $(seq 6); do
	sleep 10
	sample after >>"$OUT/samples.csv"
done

python3 - "$OUT" "$MINUTES" "$VISITS" "$CHURN" <<'EOF' | tee "$OUT/summary.md"
import csv, json, sys
out, minutes, visits, churn = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = list(csv.DictReader(open(f"{out}/samples.csv")))
def num(r, k):
    try:
        return float(r[k])
    except (ValueError, TypeError):
        return None
def mean(rs, k):
    v = [num(r, k) for r in rs if num(r, k) is not None]
    return sum(v) / len(v) if v else float("nan")
base = [r for r in rows if r["phase"] == "baseline"]
load = [r for r in rows if r["phase"] == "load"]
after = [r for r in rows if r["phase"] == "after"]
t0 = num(load[0], "elapsed_s") if load else 0
span = min(600, minutes * 60 / 4)
# The first window starts once the load has ramped and settled (2 min in).
first = [r for r in load if 120 <= num(r, "elapsed_s") - t0 < 120 + span]
last_t = num(load[-1], "elapsed_s") if load else 0
last = [r for r in load if num(r, "elapsed_s") > last_t - span]
report = {}
try:
    report = json.load(open(f"{out}/report.json"))
except Exception:
    pass
print(f"Soak: {visits} follow-up visits held, each ~{churn} s (replaced as they end), {minutes} min.")
print(f"Units replaced: {report.get('units_churned', 'n/a')}; loss {report.get('rx', {}).get('loss', float('nan')) * 100:.3f} %; "
      f"errors {report.get('errors', {})}")
print()
print("| | RSS MiB | heap live MiB | heap resident MiB | open files | alive tasks | threads | participants | rooms |")
print("|---|---|---|---|---|---|---|---|---|")
for name, rs in [("idle, before", base), (f"load, first {span/60:.0f} min (from 2 min)", first),
                 (f"load, last {span/60:.0f} min", last), ("60 s after the last left", after[-1:])]:
    print(f"| {name} | {mean(rs, 'rss_kib')/1024:.1f} | {mean(rs, 'heap_allocated_kib')/1024:.1f} | "
          f"{mean(rs, 'heap_resident_kib')/1024:.1f} | {mean(rs, 'open_files'):.0f} | "
          f"{mean(rs, 'alive_tasks'):.0f} | {mean(rs, 'threads'):.0f} | {mean(rs, 'participants'):.0f} | "
          f"{mean(rs, 'rooms'):.0f} |")
growth = (mean(last, "rss_kib") / mean(first, "rss_kib") - 1) * 100
print()
print(f"RSS growth under load, first to last window: {growth:+.1f} % (target < 5 %)")
heap = (mean(last, "heap_allocated_kib") / mean(first, "heap_allocated_kib") - 1) * 100
print(f"Live heap growth under load, first to last window: {heap:+.1f} %")
b, a = base[-1], after[-1]
for k in ["open_files", "alive_tasks"]:
    print(f"{k}: baseline {num(b, k):.0f}, after {num(a, k):.0f}")
EOF
log "done: $OUT/summary.md"
