#!/usr/bin/env bash
# The load-balancing lab's measurements in one command, on `dockercoins up`
# with classroom timings and 10 workers:
#
#   1. Policies: 3 rng replicas, the last slowed to 300 ms a call; hashes/s
#      (webui's /json) and the workers' p99 of Rng/Generate (whole calls,
#      retries included: webui's /metrics, `worker_` series) per policy:
#      pinned, round_robin, least_request, ewma, weighted_round_robin.
#   1b. Capacities: 3 rng replicas of 1, 1 and 3 lanes (the last); the same
#      measures for round_robin, least_request, ewma and
#      weighted_round_robin, with the classroom's workers (100 ms pause
#      before each unit) and with workers that do not pause (so that rng,
#      not the workers' pause, bounds the rate).
#   2. Hedging: 3 rng replicas without a lane (no queue), the last paying
#      +1 s on 10% of its calls; p99 and the extra load (hedges per call),
#      hedging off and on (GRPC_HEDGE_MS=250).
#   3. A rolling restart (SIGHUP to `up`: every rng replica, then every
#      hasher replica, one at a time) under load: the units of work that
#      failed (must be 0). Two hashers: a lone replica cannot restart
#      without a gap.
#
#   benches/policies.sh [SECONDS] [--json]     # SECONDS per measure, default 20
#
# Uses dockercoins from cargo's release folder (built if missing), ports 8000-8022 and
# python3. Takes about 17 x (SECONDS + 8) s, plus 7 s for each
# weighted_round_robin measure: its warm-up outlasts A58's 10 s blackout.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=20
json=false
for arg in "$@"; do
    case $arg in
    --json) json=true ;;
    *[!0-9]* | '') echo "usage: $0 [SECONDS] [--json]" >&2; exit 2 ;;
    *) seconds=$arg ;;
    esac
done
. benches/release-dir.sh
bin=$RELEASE/dockercoins
[ -x "$bin" ] || cargo build --release --locked
results=$(mktemp)
log=$(mktemp)
up_pid=
# Ctrl-C to `up`; it stops within a second or two, else (10 s) it is killed
# and the bench says so.
stop_up() {
    [ -n "$up_pid" ] || return 0
    kill -INT "$up_pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$up_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$up_pid" 2>/dev/null; then
        echo "$0: dockercoins up did not stop within 10 s of Ctrl-C; killed" >&2
        kill -KILL "$up_pid" 2>/dev/null || true
    fi
    wait "$up_pid" 2>/dev/null || true
    up_pid=
}
trap 'stop_up; rm -f "$results" "$log"' EXIT

# Starts `up` with 10 classroom workers and the given flags; waits for /json
# (10 s at most, else the log is printed and the bench fails saying so).
start() {
    "$bin" up --workers 10 "$@" >"$log" 2>&1 &
    up_pid=$!
    for _ in $(seq 100); do
        curl -sf --max-time 2 localhost:8000/json >/dev/null && return 0
        kill -0 "$up_pid" 2>/dev/null || { cat "$log" >&2; echo "$0: dockercoins up $* exited before /json answered" >&2; exit 1; }
        sleep 0.1
    done
    cat "$log" >&2
    echo "$0: webui's /json did not answer within 10 s of dockercoins up $*" >&2
    exit 1
}

# One snapshot of the counters: /json and the workers' metrics (5 s at most
# each; a webui that does not answer fails the bench, saying so).
snapshot() {
    local page metrics
    page=$(curl -sf --max-time 5 localhost:8000/json) || { echo "$0: webui's /json did not answer within 5 s" >&2; exit 1; }
    metrics=$(curl -sf --max-time 5 localhost:8000/metrics) || { echo "$0: webui's /metrics did not answer within 5 s" >&2; exit 1; }
    printf '%s\n' "$page"
    grep -E '^worker_(grpc_client_call_duration_seconds_(bucket|count)|rpc_client_(hedges|retries))' <<<"$metrics" || true
}

# measure KIND NAME [up flags...]: a run, warmed up 5 s (12 s under
# weighted_round_robin: the weights count 10 s after the first reports, as
# A58 says, and are taken every second), measured SECONDS.
measure() {
    local kind=$1 name=$2 warm=5
    shift 2
    [ "$name" = weighted_round_robin ] && warm=12
    start "$@"
    sleep "$warm"
    local a b
    a=$(snapshot)
    sleep "$seconds"
    b=$(snapshot)
    stop_up
    python3 benches/policies_read.py "$kind" "$name" "$a" "$b" >>"$results"
}

# weighted_round_robin takes its weights every 200 ms, not A58's 1 s: a
# classroom replica serves 10 calls a second and its queue turns over in a
# few hundred ms; taken every second, the weights chase a queue already
# gone (measured: 21.8 against 22.8 hashes/s with the slow replica). The
# other policies ignore the flag.
common=(--rng-replicas 3 --wrr-update-ms 200)
for policy in pinned round_robin least_request ewma weighted_round_robin; do
    measure policy "$policy" "${common[@]}" --rng-last-replica delay-ms=300 --grpc-policy "$policy"
done
# And the most the workers can do whatever the policy: no lane anywhere.
for policy in round_robin least_request ewma weighted_round_robin; do
    measure capacity "$policy" "${common[@]}" --rng-last-replica lanes=3 --grpc-policy "$policy"
done
measure capacity "no lanes (the workers' ceiling)" "${common[@]}" --rng-lanes 0
for policy in round_robin least_request ewma weighted_round_robin; do
    measure capacity-nopause "$policy" "${common[@]}" --rng-last-replica lanes=3 --worker-delay-ms 0 --grpc-policy "$policy"
done
measure capacity-nopause "no lanes (the workers' ceiling)" "${common[@]}" --rng-lanes 0 --worker-delay-ms 0
bucket=(--rng-lanes 0 --rng-last-replica 'extra-delay=10%=1s')
measure hedging off "${common[@]}" "${bucket[@]}"
measure hedging 250ms "${common[@]}" "${bucket[@]}" --hedge-ms 250

# The rolling restart: load, SIGHUP, and the failed units until it is done
# (30 s at most: three replicas of about a second each, and the load).
start "${common[@]}" --hasher-replicas 2 --grpc-policy least_request
sleep 5
a=$(snapshot)
kill -HUP "$up_pid"
for _ in $(seq 300); do
    grep -q "rolling restart: done" "$log" && break
    sleep 0.1
done
grep -q "rolling restart: done" "$log" || { cat "$log" >&2; echo "$0: the rolling restart did not finish within 30 s of SIGHUP" >&2; exit 1; }
sleep 2
b=$(snapshot)
took=$(grep "rolling restart: done" "$log" | tail -1 | sed -E 's/.*took_ms=([0-9]+).*/\1/')
stop_up
python3 benches/policies_read.py restart "${took:-?} ms" "$a" "$b" >>"$results"

python3 benches/policies_read.py --report "$json" "$seconds" <"$results"
