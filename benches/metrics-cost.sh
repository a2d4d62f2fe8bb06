#!/usr/bin/env bash
# What metrics cost `dockercoins bench`: the same run with metrics on (the
# default) and off (METRICS_DISABLED=true), in interleaved pairs, both modes.
# Each pair runs back to back, its order swapped every round, so a slow
# patch of a shared machine hits both sides of a pair alike; the cost is the
# median of the pairs' ratios, of throughput (hashes/s) and of CPU time per
# hash (all processes: rng, hasher, the worker, Redis), the steadier of the
# two on a shared machine.
#
#   benches/metrics-cost.sh [ROUNDS] [SECONDS]       # default: 6 10
#   MODES=unary benches/metrics-cost.sh 12           # one mode, more pairs
#
# Tracing is off in both (OTEL_SDK_DISABLED=true): exemplars need a sampled
# span, and tracing has its own bench (benches/tracing-cost.sh); with it on,
# metrics add their cost to a larger total.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-6} SECS=${2:-10} MODES=${MODES:-unary batch}
cargo build --release --quiet --bin dockercoins
. benches/release-dir.sh
err=$(mktemp)
trap 'rm -f "$err"' EXIT

# run MODE on|off -> "hashes/s cpu-seconds-per-million-hashes" of one bench
# run (the latency probes cut to 200: they are not what is compared).
run() {
    local mode=$1 metrics=$2 out rate cpu
    out=$(env OTEL_SDK_DISABLED=true OTEL_EXPORTER_OTLP_ENDPOINT= BENCH_PROBES=200 \
        METRICS_DISABLED=$([ "$metrics" = off ] && echo true || echo false) \
        "$RELEASE/dockercoins" bench --mode "$mode" --seconds "$SECS" --json 2>"$err") || true
    rate=$(sed -n 's/^ *"hashes_per_second": *\([0-9.]*\).*/\1/p' <<<"$out" | head -1)
    cpu=$(sed -n 's/^ *"cpu_seconds_per_million_hashes": *\([0-9.]*\).*/\1/p' <<<"$out" | head -1)
    [ -n "$rate" ] && [ -n "$cpu" ] || { echo "bench failed ($mode, metrics $metrics): $(grep -v '^ *$' "$err" | tail -1)" >&2; exit 1; }
    echo "$rate $cpu"
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

for mode in $MODES; do
    rates=()
    cpus=()
    for round in $(seq 1 "$ROUNDS"); do
        if [ $((round % 2)) = 1 ]; then
            off=$(run "$mode" off); on=$(run "$mode" on)
        else
            on=$(run "$mode" on); off=$(run "$mode" off)
        fi
        read -r off_rate off_cpu <<<"$off"
        read -r on_rate on_cpu <<<"$on"
        rate=$(awk -v a="$on_rate" -v b="$off_rate" 'BEGIN { printf "%.4f", a / b }')
        cpu=$(awk -v a="$on_cpu" -v b="$off_cpu" 'BEGIN { printf "%.4f", a / b }')
        printf '%-5s round %2d  off %11.0f hashes/s %8.2f cpu-s/M  on %11.0f hashes/s %8.2f cpu-s/M  on/off %.3f, cpu %.3f\n' \
            "$mode" "$round" "$off_rate" "$off_cpu" "$on_rate" "$on_cpu" "$rate" "$cpu"
        rates+=("$rate"); cpus+=("$cpu")
    done
    awk -v mode="$mode" -v n="$ROUNDS" -v r="$(printf '%s\n' "${rates[@]}" | median)" -v c="$(printf '%s\n' "${cpus[@]}" | median)" \
        'BEGIN { printf "%-5s median of %d pairs, metrics on vs off: throughput %+.1f%%, CPU per hash %+.1f%%\n", mode, n, (r - 1) * 100, (c - 1) * 100 }'
done
