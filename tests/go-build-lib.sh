# Sourced by tests/build-k3s.sh and tests/build-stack-tools.sh: how a tool is
# built from its Go module here, cached and stamped. The sourcing script sets
#   BUILD_NAME  the name its messages start with
#   out         the folder of the binaries (absolute), with X.version stamps
#   logs        the folder of the build logs (absolute)
# and gets `work`, a temporary folder removed on exit (and on Ctrl-C).
# shellcheck shell=bash

# Writable copies of module sources live here, and go nowhere else.
work=$(mktemp -d "${TMPDIR:-/tmp}/$BUILD_NAME.XXXXXX")
cleanup() { chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# fail NAME LOG WHAT: say what failed, with the tail of its log, and stop.
fail() {
    echo "--- last 30 lines of $2:" >&2
    tail -30 "$2" >&2
    echo "$BUILD_NAME: $1: $3 (whole log: $2)" >&2
    exit 1
}
# fresh NAME STAMP: the binary exists and was built with exactly this stamp.
fresh() { [ -x "$out/$1" ] && [ "$(cat "$out/$1.version" 2>/dev/null)" = "$2" ]; }
# stamp VERSION FLAGS...: the version and a short hash of the build flags.
stamp() { local v=$1; shift; printf '%s %s\n' "$v" "$(printf '%s\n' "$@" "$(go env GOVERSION)" | sha256sum | cut -c1-12)"; }
# srccopy MODULE VERSION DIR: a writable copy of a module's source, through
# the module cache (the proxy's zip, checked against go.sum's database).
srccopy() {
    local json dir
    json=$(go mod download -json "$1@$2" 2>&1) || {
        printf '%s\n' "$json" >"$logs/download-${1##*/}.log"
        fail "${1##*/}" "$logs/download-${1##*/}.log" "cannot download $1@$2 from the Go module proxy"
    }
    dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
    [ -d "$dir" ] || {
        printf '%s\n' "$json" >"$logs/download-${1##*/}.log"
        fail "${1##*/}" "$logs/download-${1##*/}.log" "go mod download gave no source folder for $1@$2"
    }
    cp -r "$dir" "$3"
    chmod -R u+w "$3"
}
# Every Go build: -trimpath, so the build cache does not depend on the
# folder of the copy (a new temporary one each run) and a fresh clone reuses it.
gobuild() { nice -n 10 go build -trimpath -buildvcs=false -mod=mod "$@"; }
