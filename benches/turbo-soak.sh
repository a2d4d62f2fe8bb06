#!/usr/bin/env bash
# Turbo for a long while, as a laptop in a classroom would run it: does Redis
# stay small, and does the score move every second?
#
#   benches/turbo-soak.sh SECONDS [more `dockercoins up` flags]
#   benches/turbo-soak.sh 600                  # ten minutes of `up --turbo`
#   benches/turbo-soak.sh 60 --wallet-cap 0    # the original wallet: it grows
#
# Once a second it reads webui's /json (hashes, coins) and the private
# Redis's `INFO memory` and `HLEN wallet`; every 10 s it prints a line. It
# fails when `hashes` stood still for two reads in a row, or when Redis's
# used_memory passed 256 MB. (One read in a row can find nothing new without
# a stall: the workers update once a second, as the reads come, and a
# second's jitter can put two reads between the same two updates.) Uses dockercoins from cargo's release folder (cargo build
# --release), redis-server and redis-cli, and ports 8000-8002.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=$1
shift
bound=$((256 * 1024 * 1024))
. benches/up.sh
log=$(mktemp)
LOG_FORMAT=json start_up "$log" --turbo "$@"
redis=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    url = json.loads(line).get("fields", {}).get("url", "")
    if url.startswith("redis://"):
        print(url); break
' "$log")
[ -n "$redis" ] || { echo "turbo-soak: no private redis-server in the log (is one on PATH?)"; cat "$log"; exit 1; }
echo "turbo-soak: up --turbo $* for ${seconds}s, Redis at $redis"
python3 - "$seconds" "$redis" "$bound" <<'PY'
import json, subprocess, sys, time, urllib.request
seconds, redis, bound = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def memory():
    info = subprocess.run(["redis-cli", "-u", redis, "INFO", "memory"], capture_output=True, text=True, timeout=5).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    wallet = subprocess.run(["redis-cli", "-u", redis, "HLEN", "wallet"], capture_output=True, text=True, timeout=5).stdout
    return int(fields["used_memory"]), int(fields["used_memory_rss"]), int(wallet or 0)
time.sleep(2)  # past every worker's first update
last, still, peak, run, longest = None, [], 0, 0, 0
start = time.monotonic()
for second in range(1, seconds + 1):
    time.sleep(max(0.0, start + second - time.monotonic()))
    score = json.load(urllib.request.urlopen("http://127.0.0.1:8000/json", timeout=5))
    used, rss, wallet = memory()
    peak = max(peak, used)
    if last is not None and score["hashes"] <= last:
        still.append(second)
        run += 1
        longest = max(longest, run)
    else:
        run = 0
    last = score["hashes"]
    if second % 10 == 0 or second == seconds:
        print(f"{second:5d} s  hashes {score['hashes']:>14,}  coins {score['coins']:>12,}  "
              f"wallet {wallet:>6}  Redis used {used / 2**20:7.1f} MB  rss {rss / 2**20:7.1f} MB", flush=True)
print(f"turbo-soak: {seconds} s; a read found hashes unchanged {len(still)} times {still[:10]}, "
      f"{longest} read(s) in a row at most; "
      f"Redis used_memory peak {peak / 2**20:.1f} MB, at the end {used / 2**20:.1f} MB")
sys.exit(1 if longest > 1 or peak > bound else 0)
PY
