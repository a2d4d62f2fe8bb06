#!/usr/bin/env bash
# Instructions per call of rng and per unit of work of the unary worker,
# counted by callgrind: a count, not a time, so two builds compare on a busy
# machine. One process runs under callgrind while the rest of the mesh runs
# natively with bench's turbo settings; the counters are zeroed after a
# warm-up and dumped after a window, and the calls in that window are read
# from the process's own /metrics.
#
#   benches/callgrind.sh [BINARY...]     # default: the release build
#   CALLGRIND_SECONDS=20 CALLGRIND_CONCURRENCY=16 benches/callgrind.sh a b
#   CALLGRIND_KEEP=/tmp/profiles benches/callgrind.sh   # keep the dumps, for
#       callgrind_annotate --inclusive=yes /tmp/profiles/rng-1.out
#
# Prints one line per binary and process: instructions per call (rng) or
# per unit (worker, two calls). Needs valgrind and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/release-dir.sh
binaries=("$@")
[ ${#binaries[@]} -gt 0 ] || binaries=("$RELEASE/dockercoins")
seconds=${CALLGRIND_SECONDS:-20}
concurrency=${CALLGRIND_CONCURRENCY:-16}
for tool in valgrind callgrind_control redis-server curl; do
    command -v $tool >/dev/null || { echo "callgrind.sh: needs $tool (apt-get install -y valgrind redis-server curl)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits (at most 30 s: valgrind starts a process about 50 times slower) for a
# /metrics page to answer.
wait_metrics() {
    for _ in $(seq 300); do curl -sf "http://$1/metrics" >/dev/null && return 0; sleep 0.1; done
    echo "callgrind.sh: nothing answered on http://$1/metrics within 30 s" >&2; exit 1
}
# The sum of every sample of a series on a /metrics page.
series() { curl -sf "http://$1/metrics" | awk -v s="$2" -v m="$3" '$1 ~ "^"s && $1 ~ m {n += $NF} END {printf "%d\n", n}'; }
total_ir() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }

kept=()
redis_port=$(free_port)
redis-server --port "$redis_port" --save '' --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)

# One process of BINARY under callgrind (WHO: rng or worker); prints its
# instructions per call (per unit for the worker).
measure() {
    local bin=$1 who=$2 rng_port hasher_port status_port prefix=() out="$work/$who.out"
    rng_port=$(free_port); hasher_port=$(free_port); status_port=$(free_port)
    local grind=(valgrind --tool=callgrind --callgrind-out-file="$out" --dump-line=no)
    [ "$who" = rng ] && prefix=("${grind[@]}")
    "${prefix[@]}" "$bin" rng --listen "127.0.0.1:$rng_port" --delay-ms 0 --lanes 0 >"$work/rng.log" 2>&1 &
    local rng=$!; pids+=($rng)
    "$bin" hasher --listen "127.0.0.1:$hasher_port" --delay-ms 0 >"$work/hasher.log" 2>&1 &
    local hasher=$!; pids+=($hasher)
    wait_metrics "127.0.0.1:$rng_port"; wait_metrics "127.0.0.1:$hasher_port"
    prefix=(); [ "$who" = worker ] && prefix=("${grind[@]}")
    "${prefix[@]}" "$bin" worker --rng "http://127.0.0.1:$rng_port" --hasher "http://127.0.0.1:$hasher_port" \
        --redis "redis://127.0.0.1:$redis_port" --delay-ms 0 --batch 0 --concurrency "$concurrency" \
        --grpc-channels 4 --health-listen "127.0.0.1:$status_port" >"$work/worker.log" 2>&1 &
    local worker=$!; pids+=($worker)
    wait_metrics "127.0.0.1:$status_port"
    sleep 3  # warm-up: connections made, buffers grown
    local pid=$rng at="127.0.0.1:$rng_port" name=rpc_server_call_duration_seconds_count match='Generate'
    if [ "$who" = worker ]; then pid=$worker at="127.0.0.1:$status_port" name=worker_hashes_total match=''; fi
    callgrind_control -z "$pid" >/dev/null 2>&1
    local before; before=$(series "$at" "$name" "$match")
    sleep "$seconds"
    local after; after=$(series "$at" "$name" "$match")
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$worker" "$hasher" "$rng"; wait "$worker" "$hasher" "$rng" 2>/dev/null || true
    # The dump asked for is the first numbered one; the last, at exit, holds
    # only what came after it.
    local dump="$out.1"
    local ir; ir=$(total_ir "$dump")
    if [ -n "${CALLGRIND_KEEP:-}" ]; then
        mkdir -p "$CALLGRIND_KEEP"
        cp "$dump" "$CALLGRIND_KEEP/$who-$(( ${#kept[@]} + 1 )).out"
        kept+=("$dump")
    fi
    rm -f "$out"*
    awk -v ir="$ir" -v n="$((after - before))" -v who="$who" -v bin="$bin" \
        'BEGIN {printf "%-8s %-40s %8d calls %10.1f thousand instructions per %s\n", who, bin, n, ir / n / 1000, (who == "rng" ? "call" : "unit")}'
}

for who in rng worker; do
    for bin in "${binaries[@]}"; do measure "$bin" "$who"; done
done
