#!/usr/bin/env bash
# The traced stack's memory over a class: every process of the compose stack,
# run here as plain processes for as long as a class lasts, its resident
# memory read once a minute.
#
#   benches/stack-memory.sh [MINUTES] [WORKERS]     # default: 60 minutes, 10 workers
#
# The processes are the compose file's, with its configurations: redis-server,
# rng, hasher, webui and WORKERS workers (the release build of dockercoins,
# classroom timings, every trace sampled as in the compose file), the
# Collector with deploy/otel/collector.yaml, Jaeger with deploy/otel/jaeger.yaml
# (its in-memory store bounded by max_traces) and Prometheus 3.6 with
# deploy/prometheus/prometheus.yml's intervals (target/stack-tools, from
# tests/build-stack-tools.sh). Only addresses change: everything listens on
# 127.0.0.1, ports from STACK_MEMORY_PORTS (default 45000) up, and Prometheus
# scrapes the same jobs by static addresses instead of Compose's DNS.
#
# Prints one line a minute: each process's anonymous memory (Pss_Anon, in
# MiB, replicas summed: what it allocated, which no limit can take back),
# the total, and the total with the pages of files the processes map (Pss:
# their binaries' code, Prometheus's chunk files; a shared page split between
# its users). At the end, the highest of each; exits 1 when the anonymous
# total passed LIMIT_MIB (default 256, the goal for a whole class with ten
# workers). `docker stats` counts a container's anonymous memory plus the
# file pages charged to it and recently used: between the two figures here,
# depending on which process first read a binary's pages (after `docker
# load`, dockerd did, and they are charged to none of the stack).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-60}
workers=${2:-10}
limit=${LIMIT_MIB:-256}
base=${STACK_MEMORY_PORTS:-45000}
tools=target/stack-tools
for tool in otelcol jaeger prometheus; do
    [ -x "$tools/$tool" ] || { echo "stack-memory: no $tools/$tool: run bash tests/build-stack-tools.sh" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "stack-memory: no redis-server on PATH" >&2; exit 1; }
cargo build --release --locked -q
. benches/release-dir.sh
bin=$RELEASE/dockercoins

work=$(mktemp -d /tmp/stack-memory.XXXXXX)
pids=()
names=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# start NAME COMMAND...: in the background, its output in $work/NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
    names+=("$name")
}

p_webui=$base p_rng=$((base + 1)) p_hasher=$((base + 2)) p_redis=$((base + 3))
p_otlp=$((base + 17)) p_otlp_http=$((base + 18)) p_spanmetrics=$((base + 89)) p_col_health=$((base + 33))
p_jaeger_otlp=$((base + 27)) p_jaeger_http=$((base + 28)) p_jaeger_ui=$((base + 86))
p_jaeger_grpc=$((base + 85)) p_jaeger_health=$((base + 34)) p_prometheus=$((base + 90))

sed -e "s/0\.0\.0\.0:4317/127.0.0.1:$p_otlp/; s/0\.0\.0\.0:4318/127.0.0.1:$p_otlp_http/" \
    -e "s/jaeger:4317/127.0.0.1:$p_jaeger_otlp/; s/0\.0\.0\.0:8889/127.0.0.1:$p_spanmetrics/" \
    -e "s/0\.0\.0\.0:13133/127.0.0.1:$p_col_health/" deploy/otel/collector.yaml >"$work/collector.yaml"
sed -e "s/:16686\"/:$p_jaeger_ui\"/; s/:16685\"/:$p_jaeger_grpc\"/; s/:13133\"/:$p_jaeger_health\"/" \
    -e "s/:4317\"/:$p_jaeger_otlp\"/; s/:4318\"/:$p_jaeger_http\"/" \
    -e "s|http://prometheus:9090|http://127.0.0.1:$p_prometheus|" deploy/otel/jaeger.yaml >"$work/jaeger.yaml"
{
    sed -n '/^global:/,/^scrape_configs:/p' deploy/prometheus/prometheus.yml
    job() { printf '  - job_name: %s\n    static_configs:\n      - targets: [%s]\n' "$1" "$2"; }
    job rng "'127.0.0.1:$p_rng'"
    job hasher "'127.0.0.1:$p_hasher'"
    job worker "$(for i in $(seq 1 "$workers"); do printf "'127.0.0.1:%s'," $((base + 100 + i)); done | sed 's/,$//')"
    job webui "'127.0.0.1:$p_webui'"
    job spanmetrics "'127.0.0.1:$p_spanmetrics'"
} >"$work/prometheus.yml"
grep -q "^scrape_configs:" "$work/prometheus.yml" || { echo "stack-memory: no global/scrape_configs in deploy/prometheus/prometheus.yml" >&2; exit 1; }
# The compose file's flags.
prometheus_flags=$(sed -n '/^  prometheus:/,/^  [a-z]/p' docker-compose.yaml | sed -n 's/^ *- \(--[a-z.-]*=.*\)$/\1/p' |
    grep -v -e '--config.file' -e '--storage.tsdb.path')

start redis redis-server --port "$p_redis" --save "" --appendonly no
start prometheus "$tools/prometheus" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus-data" \
    --web.listen-address="127.0.0.1:$p_prometheus" $prometheus_flags
start jaeger "$tools/jaeger" --config "$work/jaeger.yaml"
start collector "$tools/otelcol" --config "$work/collector.yaml"
export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$p_otlp OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=1.0
export RUST_LOG=warn REDIS_URL=redis://127.0.0.1:$p_redis
export RNG_URL=http://127.0.0.1:$p_rng HASHER_URL=http://127.0.0.1:$p_hasher
OTEL_SERVICE_NAME=rng start rng "$bin" rng --listen "127.0.0.1:$p_rng"
OTEL_SERVICE_NAME=hasher start hasher "$bin" hasher --listen "127.0.0.1:$p_hasher"
OTEL_SERVICE_NAME=webui start webui "$bin" webui --listen "127.0.0.1:$p_webui" --jaeger "http://127.0.0.1:$p_jaeger_ui"
for i in $(seq 1 "$workers"); do
    OTEL_SERVICE_NAME=worker start worker "$bin" worker --health-listen "127.0.0.1:$((base + 100 + i))"
done

# Every process still up, and the score moving, before the first reading.
sleep 10
for i in "${!pids[@]}"; do
    kill -0 "${pids[$i]}" 2>/dev/null || { tail -20 "$work/${names[$i]}.log" >&2; echo "stack-memory: ${names[$i]} exited" >&2; exit 1; }
done
score() { curl -s --max-time 3 "http://127.0.0.1:$p_webui/json" | sed -n 's/.*"hashes": *\([0-9]*\).*/\1/p'; }

echo "stack-memory: $workers workers, classroom, every trace sent to Jaeger (it keeps its max_traces newest); ${minutes} min, a line a minute (MiB)"
highest=0
highest_pss=0
for minute in $(seq 1 "$minutes"); do
    sleep 60
    line=$(for i in "${!pids[@]}"; do
        read -r anon pss < <(awk '/^Pss_Anon:/ { a = $2 } /^Pss:/ { p = $2 } END { print a + 0, p + 0 }' \
            "/proc/${pids[$i]}/smaps_rollup" 2>/dev/null) && [ "$pss" -gt 0 ] ||
            { echo "stack-memory: ${names[$i]} exited" >&2; exit 1; }
        echo "${names[$i]} $anon $pss"
    done | awk '{ m[$1] += $2; n[$1]++; t += $2; p += $3 }
        END { printf "%.0f %.0f:", t / 1024, p / 1024; for (k in m) printf " %s%s %.0f", k, (n[k] > 1 ? "x" n[k] : ""), m[k] / 1024 }')
    read -r total pss <<<"${line%%:*}"
    [ "$total" -gt "$highest" ] && highest=$total
    [ "$pss" -gt "$highest_pss" ] && highest_pss=$pss
    echo "min $minute  hashes $(score)  anonymous $total (with mapped files $pss):${line#*:}"
done
echo "stack-memory: highest over ${minutes} min: anonymous ${highest} MiB (limit ${limit} MiB), with mapped files ${highest_pss} MiB"
[ "$highest" -le "$limit" ] || { echo "stack-memory: over ${limit} MiB" >&2; exit 1; }
