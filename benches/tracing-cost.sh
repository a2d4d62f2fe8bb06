#!/usr/bin/env bash
# What tracing costs, in CPU per hash: `dockercoins bench` in both modes,
# closed loop (flat out) and open loop (`--rate`, the same load for every
# configuration), in four configurations:
#   off       OTEL_SDK_DISABLED=true: no trace at all
#   on        the default: traces decided, nothing exported (no endpoint)
#   ratio1%   exported at parentbased_traceidratio 0.01
#   ratio100% exported at 1.0
# Exported means to a real OpenTelemetry Collector with the project's own
# config (deploy/otel/collector.yaml: memory_limiter, batch, spanmetrics),
# which sends on to a real Jaeger (deploy/otel/jaeger.yaml), both built by
# tests/build-stack-tools.sh and run here on free ports.
#
#   benches/tracing-cost.sh [ROUNDS] [SECONDS]     # default: 3 8
#   TRACING_COST_UNARY_RATE=3000 TRACING_COST_BATCH_RATE=200 (open loop, units/s)
#
# Rounds interleave the configurations (the order turns every round) so a
# slow patch of the shared machine hits them all; each configuration's
# ratio to "off" is taken within its round, and the table gives the median
# of the rounds' ratios with their range. Prints Markdown.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3} SECS=${2:-8}
UNARY_RATE=${TRACING_COST_UNARY_RATE:-3000}
BATCH_RATE=${TRACING_COST_BATCH_RATE:-200}
cargo build --release --quiet --bin dockercoins
. benches/release-dir.sh
TOOLS=target/stack-tools
for tool in otelcol jaeger; do
    [ -x "$TOOLS/$tool" ] || { echo "tracing-cost.sh: needs $TOOLS/$tool: run tests/build-stack-tools.sh" >&2; exit 1; }
done
command -v curl >/dev/null || { echo "tracing-cost.sh: needs curl" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The project's configs, every address moved to a free local port.
j_otlp=$(free_port) j_otlp_http=$(free_port) j_http=$(free_port) j_grpc=$(free_port) j_health=$(free_port)
c_grpc=$(free_port) c_http=$(free_port) c_health=$(free_port) c_metrics=$(free_port)
host='${env:JAEGER_LISTEN_HOST:-localhost}'
sed -e "s|$host:4317|127.0.0.1:$j_otlp|; s|$host:4318|127.0.0.1:$j_otlp_http|" \
    -e "s|$host:16686|127.0.0.1:$j_http|; s|$host:16685|127.0.0.1:$j_grpc|; s|$host:13133|127.0.0.1:$j_health|" \
    -e "s|http://prometheus:9090|http://127.0.0.1:9|" deploy/otel/jaeger.yaml >"$work/jaeger.yaml"
sed -e "s|jaeger:4317|127.0.0.1:$j_otlp|; s|0.0.0.0:4317|127.0.0.1:$c_grpc|; s|0.0.0.0:4318|127.0.0.1:$c_http|" \
    -e "s|0.0.0.0:13133|127.0.0.1:$c_health|; s|0.0.0.0:8889|127.0.0.1:$c_metrics|" \
    deploy/otel/collector.yaml >"$work/collector.yaml"
if grep -v '^ *#' "$work/collector.yaml" | grep -q 0.0.0.0; then
    echo "tracing-cost.sh: collector.yaml has an address this script does not move" >&2; exit 1
fi
"$TOOLS/jaeger" --config "$work/jaeger.yaml" >"$work/jaeger.log" 2>&1 &
pids+=($!)
"$TOOLS/otelcol" --config "$work/collector.yaml" >"$work/collector.log" 2>&1 &
pids+=($!)
# Waits at most 30 s for a health endpoint (both start in about a second).
wait_healthy() {
    for _ in $(seq 300); do curl -sf "$2" >/dev/null && return 0; sleep 0.1; done
    echo "tracing-cost.sh: $1 not healthy at $2 within 30 s; its log:" >&2
    tail -5 "$work/$1.log" >&2; exit 1
}
wait_healthy jaeger "http://127.0.0.1:$j_health/status"
wait_healthy collector "http://127.0.0.1:$c_health/"
endpoint=http://127.0.0.1:$c_grpc

configs=(off on ratio1% ratio100%)
# One bench run; prints its JSON to $work/$name.json.
run() {
    local name=$1 mode=$2 loop=$3 config=$4 env=(OTEL_SDK_DISABLED=false OTEL_EXPORTER_OTLP_ENDPOINT= OTEL_TRACES_SAMPLER=parentbased_traceidratio)
    case $config in
        off) env+=(OTEL_SDK_DISABLED=true) ;;
        on) ;;
        ratio1%) env+=(OTEL_EXPORTER_OTLP_ENDPOINT=$endpoint OTEL_TRACES_SAMPLER_ARG=0.01) ;;
        ratio100%) env+=(OTEL_EXPORTER_OTLP_ENDPOINT=$endpoint OTEL_TRACES_SAMPLER_ARG=1.0) ;;
    esac
    local args=(bench --mode "$mode" --seconds "$SECS" --json --probes 200)
    if [ "$loop" = open ]; then
        local rate=$UNARY_RATE; [ "$mode" = batch ] && rate=$BATCH_RATE
        args+=(--rate "$rate")
    fi
    env "${env[@]}" "$RELEASE/dockercoins" "${args[@]}" >"$work/$name.json" 2>"$work/$name.err" || {
        echo "tracing-cost.sh: $mode $loop $config failed: $(tail -1 "$work/$name.err")" >&2; exit 1
    }
}
for round in $(seq 1 "$ROUNDS"); do
    # The order turns every round: each configuration runs first once.
    order=("${configs[@]:$(( (round - 1) % 4 ))}" "${configs[@]:0:$(( (round - 1) % 4 ))}")
    for mode in unary batch; do
        for loop in closed open; do
            for config in "${order[@]}"; do
                run "$mode-$loop-$config-$round" "$mode" "$loop" "$config"
            done
            echo "round $round: $mode $loop done" >&2
        done
    done
done
spans=$(curl -sf "http://127.0.0.1:$c_metrics/metrics" | awk '/^traces_span_metrics_calls_total/ {n += $NF} END {printf "%d", n}')
python3 - "$work" "$ROUNDS" "$SECS" "$UNARY_RATE" "$BATCH_RATE" "$spans" <<'PY'
import json, statistics, sys
work, rounds, secs, unary_rate, batch_rate, spans = sys.argv[1:]
rounds = int(rounds)
configs = ["off", "on", "ratio1%", "ratio100%"]
def load(mode, loop, config, r):
    report = json.load(open(f"{work}/{mode}-{loop}-{config}-{r}.json"))
    if loop == "closed":
        return report["cpu_seconds_per_million_hashes"], report["hashes_per_second"], None
    step = report["step"]
    return step["cpu_seconds_per_million_hashes"], step["hashes_per_second"], step["p99_ms"]
def spread(values, fmt):
    return f"{fmt(statistics.median(values))} ({fmt(min(values))} to {fmt(max(values))})"
for mode in ("unary", "batch"):
    for loop in ("closed", "open"):
        rate = unary_rate if mode == "unary" else batch_rate
        what = "flat out" if loop == "closed" else f"--rate {rate}"
        print(f"\n`dockercoins bench --mode {mode}` {what}, {secs} s windows, {rounds} rounds:\n")
        head = "| configuration | CPU s per million hashes | vs off (median of the rounds' ratios) | hashes/s |"
        if loop == "open":
            head += " p99 ms |"
        print(head)
        print("|---" * (head.count("|") - 1) + "|")
        off = [load(mode, loop, "off", r)[0] for r in range(1, rounds + 1)]
        for config in configs:
            runs = [load(mode, loop, config, r) for r in range(1, rounds + 1)]
            cpu = [run[0] for run in runs]
            ratios = [c / o for c, o in zip(cpu, off)]
            row = f"| {config} | {spread(cpu, lambda v: f'{v:.3f}')} | {spread(ratios, lambda v: f'{v:.2f}')} | {spread([run[1] for run in runs], lambda v: f'{v:,.0f}')} |"
            if loop == "open":
                row += f" {spread([run[2] for run in runs], lambda v: f'{v:.2f}')} |"
            print(row)
print(f"\nThe Collector's spanmetrics counted {int(spans):,} spans over the runs (sent on to Jaeger).")
PY
