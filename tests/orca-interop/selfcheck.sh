#!/usr/bin/env bash
# Checks orca-interop against itself, grpc-go on both sides: three `serve`
# (qps 300, util 0.5), (qps 100, util 0.5), (qps 100, util 0.5, eps 0) and a
# `client` over them. By gRFC A58 a weight is qps / (util + eps/qps * 1.0):
# 600, 200, 200, so grpc-go's weighted_round_robin should send about
# 0.6 / 0.2 / 0.2 of the calls; the reports must hold what the servers set.
# Then a fourth run with (qps 100, util 0.5, eps 50): weights 600, 200, 100.
#   bash tests/orca-interop/selfcheck.sh [BINARY]   (default target/stack-tools/orca-interop)
# Needs python3 (the JSON). Prints the client's JSON and the shares.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/stack-tools/orca-interop}
[ -x "$bin" ] || { echo "selfcheck: no $bin (bash tests/build-stack-tools.sh builds it)" >&2; exit 1; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/orca-selfcheck.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

# start NAME ARGS...: a server on a free port; its address in $dir/NAME.addr.
start() {
    local name=$1; shift
    "$bin" serve --listen 127.0.0.1:0 "$@" >"$dir/$name.out" 2>"$dir/$name.err" &
    pids+=($!)
    for _ in $(seq 50); do
        grep -q '^listening on ' "$dir/$name.out" 2>/dev/null && break
        sleep 0.1
    done
    sed -n 's/^listening on //p' "$dir/$name.out" >"$dir/$name.addr"
    [ -s "$dir/$name.addr" ] || { cat "$dir/$name.err" >&2; echo "selfcheck: $name did not say where it listens" >&2; exit 1; }
}
addr() { cat "$dir/$1.addr"; }

# check JSON WANT...: shares within 0.05 of WANT (in the order of --targets),
# no error, and each report with the qps, utilization and eps given as
# TARGET=QPS/UTIL/EPS in the environment variable REPORTS.
check() {
    python3 - "$@" <<'EOF'
import json, os, sys
res = json.loads(open(sys.argv[1]).read())
want = [float(w) for w in sys.argv[2:]]
targets = os.environ["TARGETS"].split(",")
ok = True
def bad(msg):
    global ok
    ok = False
    print("selfcheck: " + msg, file=sys.stderr)
if res["errors"]:
    bad(f"{res['errors']} calls failed: {res['first_error']}")
for t, w in zip(targets, want):
    got = res["share"][t]
    print(f"  {t}: share {got:.4f} (want {w}), {res['calls'][t]} calls")
    if abs(got - w) > 0.05:
        bad(f"{t}: share {got:.4f}, not about {w}")
for spec in os.environ["REPORTS"].split():
    t, vals = spec.split("=")
    qps, util, eps = (float(v) for v in vals.split("/"))
    r = res["reports"].get(t)
    if r is None:
        bad(f"{t}: no report")
        continue
    if (r["rps_fractional"], r["application_utilization"], r["eps"]) != (qps, util, eps):
        bad(f"{t}: report {r}, want qps {qps} util {util} eps {eps}")
sys.exit(0 if ok else 1)
EOF
}

start a --qps 300 --utilization 0.5 --cpu 0.2
start b --qps 100 --utilization 0.5
start c --qps 100 --utilization 0.5 --eps 0
start d --qps 100 --utilization 0.5 --eps 50
TARGETS=$(addr a),$(addr b),$(addr c)
export TARGETS REPORTS="$(addr a)=300/0.5/0 $(addr b)=100/0.5/0 $(addr c)=100/0.5/0"
echo "+ $bin client --targets $TARGETS"
"$bin" client --targets "$TARGETS" >"$dir/client.json"
cat "$dir/client.json"
check "$dir/client.json" 0.6 0.2 0.2
python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["reports"][sys.argv[2]]; sys.exit(r["cpu_utilization"] != 0.2)' "$dir/client.json" "$(addr a)" ||
    { echo "selfcheck: $(addr a) did not report cpu_utilization 0.2" >&2; exit 1; }

TARGETS=$(addr a),$(addr b),$(addr d)
export TARGETS REPORTS="$(addr d)=100/0.5/50"
echo "+ $bin client --targets $TARGETS --seconds 4"
"$bin" client --targets "$TARGETS" --seconds 4 >"$dir/client-eps.json"
check "$dir/client-eps.json" 0.6667 0.2222 0.1111

# Bad flags: 2; nothing listening: 1; SIGTERM: 0.
for args in "--targets nonsense" "--targets $(addr a) --size 0" "--targets $(addr a) --update 0s" "--bogus"; do
    rc=0; "$bin" client $args >/dev/null 2>&1 || rc=$?
    [ "$rc" = 2 ] || { echo "selfcheck: client $args: exit $rc, want 2" >&2; exit 1; }
done
rc=0; "$bin" serve --utilization 0.5 >/dev/null 2>&1 || rc=$?
[ "$rc" = 2 ] || { echo "selfcheck: serve without --qps: exit $rc, want 2" >&2; exit 1; }
rc=0; "$bin" client --targets 127.0.0.1:1 --warmup 0 --seconds 1 >"$dir/none.json" 2>/dev/null || rc=$?
[ "$rc" = 1 ] || { echo "selfcheck: client with nothing listening: exit $rc, want 1" >&2; exit 1; }
kill -TERM "${pids[0]}"
rc=0; wait "${pids[0]}" || rc=$?
[ "$rc" = 0 ] || { echo "selfcheck: serve after SIGTERM: exit $rc, want 0" >&2; exit 1; }
echo "selfcheck: ok"
