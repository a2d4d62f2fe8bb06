#!/usr/bin/env bash
# Measures end-to-end hashes/s of `dockercoins up` from webui's /json, the way
# the lab's page does: two reads of the counter, SECONDS apart, after a warm-up.
#
#   benches/rate.sh WORKERS SECONDS [more `dockercoins up` flags]
#   benches/rate.sh 10 20                                    # the lab: ~10/s
#   benches/rate.sh 10 20 --rng-replicas 3                   # balanced: ~30/s
#   benches/rate.sh 10 20 --rng-replicas 3 --grpc-policy pinned  # the trap: ~10/s
#
# Uses dockercoins from cargo's release folder (cargo build --release) and ports 8000-8021.
set -euo pipefail
cd "$(dirname "$0")/.."
workers=$1 seconds=$2
shift 2
. benches/up.sh
log=$(mktemp)
start_up "$log" --workers "$workers" "$@"
sleep 3 # warm-up: every worker past its first update
a=$(curl -sf localhost:8000/json)
sleep "$seconds"
b=$(curl -sf localhost:8000/json)
python3 - "$a" "$b" "$workers" "$*" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rate = (b["hashes"] - a["hashes"]) / (b["now"] - a["now"])
print(f"workers={sys.argv[3]} flags=[{sys.argv[4]}] hashes/s={rate:.2f} over {b['now'] - a['now']:.1f} s")
PY
grep "calls per replica" "$log" | tail -1 | sed 's/.*calls per replica/calls per replica (all workers of up, one pool):/' || true
