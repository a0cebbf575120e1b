#!/usr/bin/env bash
# Fuzz huizhen's parsers with cargo-fuzz on the stable toolchain (no sanitizer).
#
#   fuzz/run.sh SECONDS [TARGET...]   build once, then fuzz each target (all by default) for
#                                     SECONDS; exits non-zero if any target crashed
#   fuzz/run.sh --totals              fuzzing time and executions so far, per target
#   fuzz/run.sh --seeds [TARGET...]   rewrite the seed corpora the targets make themselves
#   fuzz/run.sh --list                the targets
#
# New inputs found while fuzzing go to fuzz/target/work/<target> (ignored by git); the
# committed seeds in fuzz/corpus/<target> are only read. Each run appends a line to
# fuzz/LEDGER.tsv (committed): UTC date, target, seconds, executions, result.
set -euo pipefail

cd "$(dirname "$0")"
ledger=LEDGER.tsv
# Release build with 16 codegen units: cargo-fuzz builds with one by default, and the build of
# the 16 targets took ~20 min of the test command on 2 cores; 16 units build in about half
# that (the fuzzing itself a little slower). FUZZ_CODEGEN_UNITS=1 for the fastest targets. The
# same flags for build and run, or `cargo fuzz run` rebuilds.
build_flags=(-s none -O --codegen-units "${FUZZ_CODEGEN_UNITS:-16}")

totals() {
    printf "%-16s %6s %10s %14s %8s\n" target runs seconds executions crashes
    awk -F'\t' 'NR > 1 { s[$2] += $3; e[$2] += $4; n[$2]++; if ($5 != "ok") c[$2] += 1 }
        END { for (t in s) printf "%-16s %6d %10d %14d %8d\n", t, n[t], s[t], e[t], c[t] }' \
        "$ledger" | sort
    awk -F'\t' 'NR > 1 { s += $3; e += $4 } END { printf "%-16s %6s %10d %14d\n", "total", "", s, e }' \
        "$ledger"
}

targets() {
    sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^huizhen-fuzz$'
}

# Longest input per target: room for the biggest real input (an SDP, a manifest, a few
# Matroska segments), small enough that every execution stays quick.
max_len() {
    case "$1" in
        sdp_offer | whip | signaling_frame | manifest | token) echo 16384 ;;
        export | segmenter | spool_format) echo 65536 ;;
        *) echo 4096 ;;
    esac
}

if ! cargo fuzz --version > /dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

case "${1:-}" in
    --totals)
        totals
        exit 0
        ;;
    --list)
        targets
        exit 0
        ;;
    --seeds)
        shift
        nice -n 10 cargo fuzz build "${build_flags[@]}" "$@"
        bin=target/x86_64-unknown-linux-gnu/release
        for t in ${@:-$(targets)}; do
            # Targets that make their own seeds write them from their init and exit.
            HUIZHEN_FUZZ_SEEDS="corpus/$t" "$bin/$t" -runs=0 > /dev/null 2>&1 || true
        done
        exit 0
        ;;
    '' | -*)
        echo "usage: $0 SECONDS [TARGET...] | --totals | --seeds [TARGET...] | --list" >&2
        exit 2
        ;;
esac

seconds=$1
shift
selected=("$@")
if [ ${#selected[@]} -eq 0 ]; then
    mapfile -t selected < <(targets)
fi

[ -f "$ledger" ] || printf 'date_utc\ttarget\tseconds\texecutions\tresult\n' > "$ledger"
nice -n 10 cargo fuzz build "${build_flags[@]}"
mkdir -p target/logs

failed=()
for t in "${selected[@]}"; do
    mkdir -p "target/work/$t" "corpus/$t"
    log="target/logs/$t.log"
    echo "== $t: ${seconds}s"
    status=0
    start=$SECONDS
    nice -n 10 cargo fuzz run "${build_flags[@]}" "$t" "target/work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=60 \
        -max_len="$(max_len "$t")" -print_final_stats=1 > "$log" 2>&1 || status=$?
    # Fuzzing time: the wall time, at most what was asked (a crash stops early).
    elapsed=$((SECONDS - start))
    [ "$elapsed" -le "$seconds" ] || elapsed=$seconds
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    artifact=${artifact#"$PWD/"}
    if [ "$status" -eq 0 ]; then
        result=ok
    else
        result="crash:${artifact:-see $log}"
        failed+=("$t: ${artifact:-no artifact, see fuzz/$log}")
        tail -n 40 "$log"
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$t" "$elapsed" "${execs:-0}" \
        "$result" >> "$ledger"
    echo "   ${execs:-?} executions, $result"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed:" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
