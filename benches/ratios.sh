#!/usr/bin/env bash
# The mesh against the machine's own floor and limit (see BENCHMARKS.md):
# `dockercoins bench --json` in both modes, interleaved round after round
# (the order swapped every round) so a slow patch of a shared machine hits
# both alike, then each run's reference lines and ratios, and the median and
# range of each ratio, as Markdown tables.
#
#   benches/ratios.sh [ROUNDS] [SECONDS]     # default: 3 10
#
# Each bench run measures its own floor (a bare tonic echo) and SHA-256
# limit first, so every ratio compares numbers taken minutes apart at most.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3} SECS=${2:-10}
cargo build --release --quiet --bin dockercoins
. benches/release-dir.sh
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in $(seq 1 "$ROUNDS"); do
    modes="unary batch"
    [ $((round % 2)) = 0 ] && modes="batch unary"
    for mode in $modes; do
        "$RELEASE/dockercoins" bench --mode "$mode" --seconds "$SECS" --json \
            >"$out/$mode-$round.json" 2>"$out/$mode-$round.err" || {
            echo "bench --mode $mode failed (round $round): $(tail -1 "$out/$mode-$round.err")" >&2
            exit 1
        }
        echo "round $round: $mode done" >&2
    done
done
python3 - "$out" "$ROUNDS" "$SECS" <<'PY'
import json, statistics, sys
out, rounds, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def row(name, values, fmt):
    cells = " | ".join(fmt(v) for v in values)
    return f"| {name} | {cells} | {fmt(statistics.median(values))} ({fmt(min(values))} to {fmt(max(values))}) |"
for mode in ("unary", "batch"):
    runs = [json.load(open(f"{out}/{mode}-{r}.json")) for r in range(1, rounds + 1)]
    print(f"\n`dockercoins bench --mode {mode} --seconds {secs}`, {rounds} runs ({runs[0]['machine']}):\n")
    print("| | " + " | ".join(f"run {r}" for r in range(1, rounds + 1)) + " | median (range) |")
    print("|---|" + "---|" * rounds + "---|")
    n = lambda v: f"{v:,.0f}"
    peak = lambda p: lambda r: r["processes"][p]["peak_rss_kb"] / 1024
    # Each mode against its own reference (the JSON has both ratios).
    against = {
        "unary": ("**hashes/s over floor calls/s** (ceiling 0.5; goal 0.35)", lambda r: r["floor_ratio"], lambda v: f"{v:.3f}"),
        "batch": (f"**share of the SHA-256 limit of {runs[0]['cores']} cores** (goal 50%)", lambda r: r["sha256_ratio"] * 100, lambda v: f"{v:.1f}%"),
    }[mode]
    lines = [
        ("floor, calls/s (bare tonic echo)", lambda r: r["floor_rpc_per_second"], n),
        ("SHA-256 limit, digests/s, one core", lambda r: r["sha256_per_second_one_core"], n),
        ("end to end, hashes/s", lambda r: r["hashes_per_second"], n),
        against,
        ("floor p50, µs (light load)", lambda r: r["floor_p50_us"], n),
        ("rng / hasher p50, µs (light load)", lambda r: max(r["hops"]["rng"]["p50_us"], r["hops"]["hasher"]["p50_us"]), n),
        ("**slower hop's p50 over the floor's** (goal 1.5)", lambda r: r["light_p50_over_floor"], lambda v: f"{v:.2f}"),
        ("worker peak RSS, MB (goal 30)", peak("worker"), lambda v: f"{v:.1f}"),
        ("CPU s per million hashes", lambda r: r["cpu_seconds_per_million_hashes"], lambda v: f"{v:.3f}"),
    ]
    for name, get, fmt in lines:
        print(row(name, [get(r) for r in runs], fmt))
    checks = ", ".join("equal" if r["cross_check"] else "MISMATCH" for r in runs)
    print(f"\nCross-check (worker = Redis, hashes and coins): {checks}.")
PY
