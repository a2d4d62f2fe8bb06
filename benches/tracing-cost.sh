#!/usr/bin/env bash
# What tracing costs `dockercoins bench`: the same run with no tracing at all
# (OTEL_SDK_DISABLED=true), with spans exported to an OTLP receiver at two
# sampling ratios, and with the exporter pointed at a port nobody listens on.
# Configurations are interleaved, round after round, so a slow patch of a
# shared machine hits them all alike.
#
#   benches/tracing-cost.sh [MODE] [ROUNDS] [SECONDS]    # default: batch 3 10
#
# The receiver is examples/otlp_sink.rs (accepts and counts, like a collector
# that keeps up). Prints one line per run and the median per configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-batch} ROUNDS=${2:-3} SECS=${3:-10}
cargo build --release --quiet --bin dockercoins --example otlp_sink
. benches/release-dir.sh
SINK_ADDR=127.0.0.1:${SINK_PORT:-43170}
"$RELEASE/examples/otlp_sink" "$SINK_ADDR" >/tmp/otlp_sink.$$.log 2>&1 &
SINK=$!
trap 'kill $SINK 2>/dev/null; wait $SINK 2>/dev/null; rm -f /tmp/otlp_sink.$$.log /tmp/tracing-cost.$$.err' EXIT

configs=(off ratio0.01 ratio1 unreachable)
declare -A results
run() {
    local config=$1
    local env=(OTEL_SDK_DISABLED=false OTEL_EXPORTER_OTLP_ENDPOINT= OTEL_TRACES_SAMPLER=parentbased_traceidratio)
    case $config in
        off) env+=(OTEL_SDK_DISABLED=true) ;;
        ratio0.01) env+=(OTEL_EXPORTER_OTLP_ENDPOINT=http://$SINK_ADDR OTEL_TRACES_SAMPLER_ARG=0.01) ;;
        ratio1) env+=(OTEL_EXPORTER_OTLP_ENDPOINT=http://$SINK_ADDR OTEL_TRACES_SAMPLER_ARG=1.0) ;;
        unreachable) env+=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:9 OTEL_TRACES_SAMPLER_ARG=1.0) ;;
    esac
    local out rate
    out=$(env "${env[@]}" "$RELEASE/dockercoins" bench --mode "$MODE" --seconds "$SECS" --json 2>/tmp/tracing-cost.$$.err) || true
    rate=$(sed -n 's/^ *"hashes_per_second": *\([0-9.]*\).*/\1/p' <<<"$out" | head -1)
    if [ -z "$rate" ]; then
        echo "bench failed ($config): $(grep -v '^ *$' /tmp/tracing-cost.$$.err | tail -1)" >&2
    fi
    echo "${rate:-}"
}
for round in $(seq 1 "$ROUNDS"); do
    for config in "${configs[@]}"; do
        rate=$(run "$config")
        [ -n "$rate" ] || continue
        printf 'round %d  %-12s %12.0f hashes/s\n' "$round" "$config" "$rate"
        results[$config]+="$rate "
    done
done
echo "median over $ROUNDS rounds ($MODE, ${SECS} s windows):"
off=$(tr ' ' '\n' <<<"${results[off]}" | grep . | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
for config in "${configs[@]}"; do
    median=$(tr ' ' '\n' <<<"${results[$config]}" | grep . | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    awk -v c="$config" -v m="$median" -v o="$off" 'BEGIN { printf "  %-12s %12.0f hashes/s  %+6.1f%% vs off\n", c, m, (m / o - 1) * 100 }'
done
kill -INT $SINK 2>/dev/null || true
wait $SINK 2>/dev/null || true
echo "receiver: $(tail -1 /tmp/otlp_sink.$$.log)"
