#!/usr/bin/env bash
# The benchmark: huizhen and Janus VideoRoom under the same scenarios, on the same machine, in
# the same run, with the same load generator. Writes JSON reports and a markdown table.
#
#   loadtest/bench.sh                 # everything (needs root for the Janus namespace)
#   BENCH_SKIP_JANUS=1 loadtest/bench.sh   # huizhen only
#
# Environment (all optional):
#   BENCH_OUT        output directory (default target/bench/<date-time>)
#   BENCH_SECS       length of each fixed-load run, s (default 25)
#   BENCH_FOLLOWUP   follow-up visits in the fixed run (default 50 = 100 participants)
#   BENCH_PANELS     panel rooms of 6 in the fixed run (default 4)
#   BENCH_OBSERVERS  observers of the one teaching room in the fixed run (default 100)
#   BENCH_CAPACITY   1 (default) to also run --find-capacity on both servers: followup
#                    (BENCH_CAP_STEP visits per step, default 25) and teaching (one more room
#                    of 100 observers per step)
#   BENCH_CAP_STEP   visits added per followup capacity step (default 25)
#   RELAY_SHARE      share of the participants of every huizhen run (0..1, default 0) that
#                    connect through the server's embedded TURN over UDP (relay-only ICE,
#                    [turn] below); the reports then show the relayed packets. Janus runs and
#                    BENCH_BASE_BIN (no TURN) are always direct.
#   HUIZHEN_BIN      measure this server binary instead of target/release/huizhen
#   BENCH_BIN        use this generator binary; with both given nothing is built
#
# Adaptive media cost (issue 9): BENCH_ADAPTIVE=1 runs, instead of the above, each scenario
# on a fresh server four times: the server before adaptive media (BENCH_BASE_BIN) and the
# current one with single-layer publishers, then the current one with simulcast publishers
# (q,h,f) and with simulcast publishers and half of the receivers behind an emulated
# 800 kbit/s downlink. Sizes: BENCH_A_FOLLOWUP (40 visits), BENCH_A_PANELS (3 rooms of 6),
# BENCH_A_OBSERVERS (80), BENCH_A_SECS (30 s per run, of which BENCH_A_WARMUP 10 s settle:
# the subscribers' estimates start at 500 kbit/s and take seconds to climb),
# BENCH_A_DOWNLINK (800 kbit/s), BENCH_A_CAPPED_SHARE (0.5).
#
# Pinning: with two or more cores the server runs on core 0 and the generator on core 1
# (taskset), so "per core" means what it says. All traffic stays on 127.0.0.0/8: huizhen
# announces 127.0.0.1; Janus runs in a network namespace on 127.0.0.2 (loadtest/janus-netns.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${BENCH_OUT:-$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}"
SECS="${BENCH_SECS:-25}"
FOLLOWUP="${BENCH_FOLLOWUP:-50}"
PANELS="${BENCH_PANELS:-4}"
OBSERVERS="${BENCH_OBSERVERS:-100}"
CAPACITY="${BENCH_CAPACITY:-1}"
CAP_STEP="${BENCH_CAP_STEP:-25}"
SKIP_JANUS="${BENCH_SKIP_JANUS:-0}"
RELAY_SHARE="${RELAY_SHARE:-0}"
NS=hzbench
mkdir -p "$OUT"

log() { echo "bench: $*" >&2; }

if [ -z "${HUIZHEN_BIN:-}" ] || [ -z "${BENCH_BIN:-}" ]; then
	cargo build --release --locked -p huizhen -p huizhen-loadtest
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SERVER_BIN="${HUIZHEN_BIN:-$TARGET_DIR/release/huizhen}"
GEN_BIN="${BENCH_BIN:-$TARGET_DIR/release/huizhen-loadtest}"

if [ "$(nproc)" -ge 2 ]; then
	SERVER_CORE=0
	GEN_CORE=1
	PIN_GEN=(taskset -c "$GEN_CORE")
else
	SERVER_CORE=""
	PIN_GEN=()
	log "one core: server and generator share it"
fi

HZ_PID=""
cleanup() {
	if [ -n "$HZ_PID" ]; then kill "$HZ_PID" 2>/dev/null || true; wait "$HZ_PID" 2>/dev/null || true; fi
	if [ "$SKIP_JANUS" != 1 ]; then loadtest/janus-netns.sh down "$NS" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# --- huizhen ---------------------------------------------------------------------------------
HZ_DIR="$OUT/huizhen-server"
mkdir -p "$HZ_DIR"
cat >"$HZ_DIR/huizhen.toml" <<EOF
[http]
listen = "127.0.0.1:17880"
[media]
udp_listen = "127.0.0.1:17882"
tcp_listen = "127.0.0.1:17883"
announce = ["127.0.0.1"]
max_participants_per_room = 1000
max_participants = 10000
[turn]
udp_listen = "127.0.0.1:17884"
tcp_listen = "127.0.0.1:17884"
[storage]
data_dir = "$HZ_DIR/data"
[archive]
local_dir = "$HZ_DIR/archive"
EOF
start_huizhen() {
	local bin="${1:-$SERVER_BIN}"
	rm -rf "$HZ_DIR/data" "$HZ_DIR/archive"
	if [ -n "$SERVER_CORE" ]; then
		RUST_LOG=warn taskset -c "$SERVER_CORE" "$bin" serve --config "$HZ_DIR/huizhen.toml" >>"$HZ_DIR/server.log" 2>&1 &
	else
		RUST_LOG=warn "$bin" serve --config "$HZ_DIR/huizhen.toml" >>"$HZ_DIR/server.log" 2>&1 &
	fi
	HZ_PID=$!
	for _ in $(seq 100); do
		curl -sf http://127.0.0.1:17880/readyz >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	log "huizhen did not become ready; see $HZ_DIR/server.log"
	exit 1
}
stop_huizhen() {
	kill "$HZ_PID" 2>/dev/null || true
	wait "$HZ_PID" 2>/dev/null || true
	HZ_PID=""
}

# run_gen NAME ARGS... : one generator run, report in $OUT/NAME.json, table in $OUT/NAME.txt
run_gen() {
	local name=$1
	shift
	log "$name"
	"$@" --quiet --json "$OUT/$name.json" | tee "$OUT/$name.txt"
}

FIXED=(
	"followup --units $FOLLOWUP"
	"panel --units $PANELS --room-size 6"
	"teaching --units 1 --observers $OBSERVERS"
)

# The relayed share (RELAY_SHARE) goes to every huizhen run but the adaptive base server's
# (HZ_RELAY_SHARE overrides it for one run); at 0 the flag is left out.
hz_gen() {
	local share="${HZ_RELAY_SHARE:-$RELAY_SHARE}"
	local relay=()
	if [ "$share" != 0 ]; then relay=(--relay-share "$share"); fi
	run_gen "$1" "${PIN_GEN[@]}" "$GEN_BIN" --target huizhen --url ws://127.0.0.1:17880/ws \
		--server-pid "$HZ_PID" --metrics-url http://127.0.0.1:17880/metrics --client-ip 127.0.0.1 \
		"${relay[@]}" "${@:2}"
}

if [ "${BENCH_ADAPTIVE:-0}" = 1 ]; then
	BASE_BIN="${BENCH_BASE_BIN:?BENCH_BASE_BIN: the server binary before adaptive media}"
	A_SECS="${BENCH_A_SECS:-30}"
	A_WARMUP="${BENCH_A_WARMUP:-10}"
	A_FIXED=(
		"followup --units ${BENCH_A_FOLLOWUP:-40}"
		"panel --units ${BENCH_A_PANELS:-3} --room-size 6"
		"teaching --units 1 --observers ${BENCH_A_OBSERVERS:-80}"
	)
	CAPPED=(--simulcast q,h,f --downlink-kbps "${BENCH_A_DOWNLINK:-800}" --downlink-queue-ms 200
		--capped-share "${BENCH_A_CAPPED_SHARE:-0.5}")
	for spec in "${A_FIXED[@]}"; do
		read -r scenario rest <<<"$spec"
		for variant in base single simulcast capped; do
			case $variant in
			base) bin="$BASE_BIN" extra=() ;;
			single) bin="$SERVER_BIN" extra=() ;;
			simulcast) bin="$SERVER_BIN" extra=(--simulcast q,h,f) ;;
			capped) bin="$SERVER_BIN" extra=("${CAPPED[@]}") ;;
			esac
			start_huizhen "$bin"
			share="$RELAY_SHARE"
			if [ "$variant" = base ]; then share=0; fi
			# shellcheck disable=SC2086
			HZ_RELAY_SHARE="$share" hz_gen "adaptive-$scenario-$variant" --scenario $scenario $rest \
				--duration "$A_SECS" --warmup "$A_WARMUP" --ramp 100 "${extra[@]}"
			stop_huizhen
		done
	done
	python3 loadtest/bench_table.py "$OUT" | tee "$OUT/results.md"
	log "results in $OUT/results.md"
	exit 0
fi

for spec in "${FIXED[@]}"; do
	read -r scenario rest <<<"$spec"
	start_huizhen
	# shellcheck disable=SC2086
	hz_gen "huizhen-$scenario" --scenario $scenario $rest --duration "$SECS" --ramp 100
	stop_huizhen
done
CAP_FOLLOWUP=(--scenario followup --find-capacity --units "$CAP_STEP" --step-units "$CAP_STEP"
	--step-secs 8 --warmup 3 --ramp 200 --duration 600 --max-units 4000)
CAP_TEACHING=(--scenario teaching --observers 100 --find-capacity --units 1 --step-units 1
	--step-secs 8 --warmup 3 --ramp 200 --duration 600 --max-units 40)
if [ "$CAPACITY" = 1 ]; then
	start_huizhen
	hz_gen huizhen-followup-capacity "${CAP_FOLLOWUP[@]}"
	stop_huizhen
	start_huizhen
	hz_gen huizhen-teaching-capacity "${CAP_TEACHING[@]}"
	stop_huizhen
fi

# --- Janus -----------------------------------------------------------------------------------
if [ "$SKIP_JANUS" != 1 ]; then
	loadtest/janus-netns.sh install
	janus_gen() {
		local jpid
		jpid="$(loadtest/janus-netns.sh pid "$NS")"
		run_gen "$1" ip netns exec "$NS" "${PIN_GEN[@]}" "$GEN_BIN" --target janus --url ws://127.0.0.2:8188/ \
			--server-pid "$jpid" --client-ip 127.0.0.2 "${@:2}"
	}
	start_janus() {
		loadtest/janus-netns.sh up "$NS" >&2
		if [ -n "$SERVER_CORE" ]; then
			taskset -apc "$SERVER_CORE" "$(loadtest/janus-netns.sh pid "$NS")" >/dev/null
		fi
	}
	for spec in "${FIXED[@]}"; do
		read -r scenario rest <<<"$spec"
		start_janus
		# shellcheck disable=SC2086
		janus_gen "janus-$scenario" --scenario $scenario $rest --duration "$SECS" --ramp 100
		loadtest/janus-netns.sh down "$NS" >&2
	done
	if [ "$CAPACITY" = 1 ]; then
		start_janus
		janus_gen janus-followup-capacity "${CAP_FOLLOWUP[@]}"
		loadtest/janus-netns.sh down "$NS" >&2
		start_janus
		janus_gen janus-teaching-capacity "${CAP_TEACHING[@]}"
		loadtest/janus-netns.sh down "$NS" >&2
	fi
fi

python3 loadtest/bench_table.py "$OUT" | tee "$OUT/results.md"
log "results in $OUT/results.md"
