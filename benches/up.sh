# Sourced by the benches that run `dockercoins up` (rate.sh, turbo-soak.sh):
#
#   start_up LOG [up flags...]   # $up_pid is its pid; stopped (Ctrl-C) at exit
#
# Starts dockercoins from cargo's release folder (built if missing) with its log in LOG,
# and waits for webui's /json on port 8000: 10 s at most, then the log is
# printed and the bench fails, saying which.
start_up() {
    local log=$1
    shift
    . benches/release-dir.sh
    local bin=$RELEASE/dockercoins
    [ -x "$bin" ] || cargo build --release --locked
    "$bin" up "$@" >"$log" 2>&1 &
    up_pid=$!
    trap 'kill -INT $up_pid 2>/dev/null || true; wait $up_pid 2>/dev/null || true; rm -f "'"$log"'"' EXIT
    for _ in $(seq 100); do
        curl -sf localhost:8000/json >/dev/null && return 0
        kill -0 $up_pid 2>/dev/null || { cat "$log"; echo "$0: dockercoins up exited before /json answered" >&2; exit 1; }
        sleep 0.1
    done
    cat "$log"
    echo "$0: webui's /json on localhost:8000 did not answer within 10 s of dockercoins up" >&2
    exit 1
}
