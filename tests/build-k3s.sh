#!/usr/bin/env bash
# Builds from source, for the tests, what a single-node k3s needs to run the
# project's deploy/k8s manifests on this machine:
#   target/k8s-tools/k3s                      k3s (server, agent, containerd,
#                                             kubectl, crictl, ctr in one binary),
#                                             with the symlinks containerd, ctr,
#                                             crictl, kubectl -> k3s beside it
#   target/k8s-tools/containerd-shim-runc-v2  the shim of k3s' containerd
#   target/k8s-tools/runc                     runc 1.4.0 with seccomp
#   target/k8s-tools/coredns                  CoreDNS 1.14.1 (one static file,
#                                             for the rancher/mirrored-coredns image)
#   target/k8s-tools/pause                    the pod sandbox (tests/k3s/pause.c)
#   target/k8s-tools/adapter                  prometheus-adapter v0.12.0
# No image, release binary or git repository can be fetched on the project's
# machines, but the Go module proxy is reachable. Go's module and build caches
# (GOMODCACHE, GOCACHE) outlive a clone, so a run in a fresh clone mostly
# links; a binary whose stamp (X.version: version and a hash of its build
# flags) matches is kept as it is. Nothing is started here.
#
# Use: put target/k8s-tools FIRST in PATH when k3s runs: its agent starts
# `containerd` through PATH, and containerd looks up the shim and runc there
# too; Debian's containerd 1.6 and runc 1.1.5 (docker.io) must not be found
# first (runc 1.1.5 fails every sandbox here).
#
# Prometheus 3.6.0, which the cluster runs too, is tests/build-stack-tools.sh's.
#
# Versions: k3s is whatever the module proxy serves (one pseudo-version of
# its master: Kubernetes v1.35.1-k3s1, containerd v2.1.5-k3s1); the others are
# the versions deploy/k8s and the k3s bundled manifests pin.
set -euo pipefail
cd "$(dirname "$0")/.."

K3S_MODULE=github.com/k3s-io/k3s
K3S_VERSION=v1.35.1-0.20260211145931-c5b158798933   # the only k3s on the proxy
K3S_DATE=2026-02-11T14:59:31Z                       # its commit time, for buildDate
K3S_TAGS="ctrd netcgo osusergo providerless urfave_cli_no_docs sqlite_omit_load_extension apparmor seccomp"
RUNC_VERSION=v1.4.0
COREDNS_VERSION=v1.14.1
ADAPTER_MODULE=sigs.k8s.io/prometheus-adapter
ADAPTER_VERSION=v0.12.0
out=target/k8s-tools
logs=$out/logs
mkdir -p "$out" "$logs"
out=$(cd "$out" && pwd)
logs=$out/logs
log() { printf '[build-k3s %4ss] %s\n' "$SECONDS" "$*"; }

command -v go >/dev/null || {
    echo "build-k3s: go is not on PATH (Go 1.25 or later builds k3s)" >&2
    exit 1
}
command -v gcc >/dev/null || {
    echo "build-k3s: gcc is not on PATH (k3s, runc and pause need cgo or a C compiler): apt-get install gcc libc6-dev" >&2
    exit 1
}

BUILD_NAME=build-k3s
# work (removed on exit); fail, fresh, stamp, srccopy, gobuild.
source tests/go-build-lib.sh

# --- k3s and the shim, inside a writable copy of k3s' own module source. ---
# `go install` refuses k3s (71 replace directives), and scripts/build first
# copies manifests/ into pkg/deploy/embed/ (the bundled CoreDNS manifest
# among them), so it is built as the main module, as scripts/build does,
# without dapper and without what scripts/download fetches from GitHub.
K3S_COMMIT=${K3S_VERSION##*-}                 # c5b158798933
K3S_RELEASE=v1.35.1+k3s-${K3S_COMMIT:0:8}     # as scripts/version.sh names an untagged build
k3s_ldflags() { # the -X flags of scripts/build that matter; $1 = the Go version
    local k=$K3S_RELEASE
    printf '%s ' -w -s \
        -X "$K3S_MODULE/pkg/version.Version=$k" \
        -X "$K3S_MODULE/pkg/version.GitCommit=${K3S_COMMIT:0:8}" \
        -X "$K3S_MODULE/pkg/version.UpstreamGolang=$1" \
        -X "k8s.io/client-go/pkg/version.gitVersion=$k" \
        -X "k8s.io/client-go/pkg/version.gitCommit=$K3S_COMMIT" \
        -X "k8s.io/client-go/pkg/version.gitTreeState=clean" \
        -X "k8s.io/client-go/pkg/version.buildDate=$K3S_DATE" \
        -X "k8s.io/component-base/version.gitVersion=$k" \
        -X "k8s.io/component-base/version.gitCommit=$K3S_COMMIT" \
        -X "k8s.io/component-base/version.gitTreeState=clean" \
        -X "k8s.io/component-base/version.buildDate=$K3S_DATE" \
        -X "sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
        -X "github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
        -X "github.com/containerd/containerd/v2/version.Package=github.com/k3s-io/containerd/v2"
}
# Without UpstreamGolang, `k3s server` exits at once ("kubernetes golang build
# version not set"): it must name the Go that builds it, so that is in the
# stamp. The containerd and crictl versions follow from K3S_VERSION's go.mod.
GO_VERSION=$(go env GOVERSION)
K3S_STAMP=$(CONTAINERD_VERSION=go.mod CRICTL_VERSION=go.mod; stamp "$K3S_VERSION" "$K3S_TAGS" "$(k3s_ldflags "$GO_VERSION")")
SHIM_STAMP=$(stamp "$K3S_VERSION" "${K3S_TAGS/netcgo/netgo}" shim)
if ! fresh k3s "$K3S_STAMP" || ! fresh containerd-shim-runc-v2 "$SHIM_STAMP"; then
    t=$SECONDS
    log "k3s $K3S_RELEASE (module $K3S_VERSION): source copy"
    src=$work/k3s
    srccopy "$K3S_MODULE" "$K3S_VERSION" "$src"
    cp -r "$src"/manifests/* "$src/pkg/deploy/embed/"
    # The versions scripts/version.sh reads from go.mod (the replace targets).
    modver() { (cd "$src" && go list -mod=mod -m -f '{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}' "$1"); }
    CONTAINERD_VERSION=$(modver github.com/containerd/containerd/v2 2>"$logs/k3s-modver.log") ||
        fail k3s "$logs/k3s-modver.log" "cannot read k3s' module graph (is the Go module proxy reachable?)"
    CRICTL_VERSION=$(modver sigs.k8s.io/cri-tools 2>>"$logs/k3s-modver.log") ||
        fail k3s "$logs/k3s-modver.log" "cannot read k3s' module graph"
    if [ "$(cd "$src" && go env GOVERSION)" != "$GO_VERSION" ]; then
        echo "build-k3s: GOTOOLCHAIN picks $(cd "$src" && go env GOVERSION) for k3s, not $GO_VERSION: set GOTOOLCHAIN=local" >&2
        exit 1
    fi
    if ! fresh k3s "$K3S_STAMP"; then
        log "k3s: go build ./cmd/server with $GO_VERSION, CGO_ENABLED=1 (first time: about 500 modules, 8+ minutes on 2 cores)"
        rm -f "$out/k3s.version"
        (
            cd "$src"
            # shellcheck disable=SC2046 # the -X flags are words without spaces
            CGO_ENABLED=1 CGO_CFLAGS="-DSQLITE_ENABLE_DBSTAT_VTAB=1 -DSQLITE_USE_ALLOCA=1" \
                gobuild -tags "$K3S_TAGS" -ldflags "$(k3s_ldflags "$GO_VERSION")" -o "$out/k3s" ./cmd/server
        ) >"$logs/k3s.log" 2>&1 || fail k3s "$logs/k3s.log" "go build ./cmd/server failed"
        echo "$K3S_STAMP" >"$out/k3s.version"
        log "k3s: built in $((SECONDS - t))s"
    fi
    if ! fresh containerd-shim-runc-v2 "$SHIM_STAMP"; then
        t2=$SECONDS
        log "containerd-shim-runc-v2 $CONTAINERD_VERSION (k3s' module graph)"
        rm -f "$out/containerd-shim-runc-v2.version"
        (
            cd "$src"
            CGO_ENABLED=0 gobuild -tags "${K3S_TAGS/netcgo/netgo}" \
                -ldflags "-w -s -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION -X github.com/containerd/containerd/v2/version.Package=github.com/k3s-io/containerd/v2" \
                -o "$out/containerd-shim-runc-v2" github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
        ) >"$logs/containerd-shim-runc-v2.log" 2>&1 ||
            fail containerd-shim-runc-v2 "$logs/containerd-shim-runc-v2.log" "go build of the shim failed"
        echo "$SHIM_STAMP" >"$out/containerd-shim-runc-v2.version"
        log "containerd-shim-runc-v2: built in $((SECONDS - t2))s"
    fi
    chmod -R u+w "$src"
    rm -rf "$src"
fi
# k3s is a multi-call binary: it acts by the name it is started as.
for n in containerd ctr crictl kubectl; do ln -sfn k3s "$out/$n"; done
"$out/k3s" --version >"$logs/k3s-version.log" 2>&1 || fail k3s "$logs/k3s-version.log" "$out/k3s --version does not run"
"$out/kubectl" version --client >"$logs/kubectl-version.log" 2>&1 ||
    fail kubectl "$logs/kubectl-version.log" "$out/kubectl version --client does not run"
log "k3s: $(head -1 "$logs/k3s-version.log"); kubectl $(sed -n 's/^Client Version: //p' "$logs/kubectl-version.log")"
"$out/containerd-shim-runc-v2" -v >"$logs/shim-version.log" 2>&1 ||
    fail containerd-shim-runc-v2 "$logs/shim-version.log" "$out/containerd-shim-runc-v2 -v does not run"
log "containerd-shim-runc-v2: $(sed -n 's/^  *Version: *//p' "$logs/shim-version.log" | head -1)"

# --- runc, on its own: inside k3s' module graph it fails on cilium/ebpf. ---
# Debian's runc 1.1.5 fails every sandbox here; seccomp needs libseccomp-dev.
RUNC_STAMP=$(stamp "$RUNC_VERSION" seccomp)
if ! fresh runc "$RUNC_STAMP"; then
    t=$SECONDS
    missing=()
    for p in libseccomp-dev pkg-config; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "build-k3s: runc needs ${missing[*]}; as root run: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
            exit 1
        fi
        log "apt-get install ${missing[*]} (runc's seccomp)"
        { DEBIAN_FRONTEND=noninteractive apt-get update &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; } \
            >"$logs/apt.log" 2>&1 || fail runc "$logs/apt.log" "apt-get install ${missing[*]} failed"
    fi
    log "runc $RUNC_VERSION (-tags seccomp, CGO_ENABLED=1)"
    rm -f "$out/runc.version"
    (
        cd "$work"
        GOBIN=$out CGO_ENABLED=1 nice -n 10 go install -trimpath -buildvcs=false -tags seccomp \
            -ldflags "-X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"
    ) >"$logs/runc.log" 2>&1 || fail runc "$logs/runc.log" "go install github.com/opencontainers/runc@$RUNC_VERSION failed"
    echo "$RUNC_STAMP" >"$out/runc.version"
    log "runc: built in $((SECONDS - t))s"
fi
"$out/runc" --version >"$logs/runc-version.log" 2>&1 || fail runc "$logs/runc-version.log" "$out/runc --version does not run"
grep -q seccomp "$logs/runc-version.log" || fail runc "$logs/runc-version.log" "$out/runc is built without seccomp"
log "runc: $(tr '\n' ' ' <"$logs/runc-version.log")"

# --- CoreDNS: no replace directives, so `go install` takes it as it is. ---
COREDNS_STAMP=$(stamp "$COREDNS_VERSION" "CGO_ENABLED=0")
if ! fresh coredns "$COREDNS_STAMP"; then
    t=$SECONDS
    log "CoreDNS $COREDNS_VERSION (static, for the rancher/mirrored-coredns-coredns:${COREDNS_VERSION#v} image)"
    rm -f "$out/coredns.version"
    (
        cd "$work"
        GOBIN=$out CGO_ENABLED=0 nice -n 10 go install -trimpath -buildvcs=false -ldflags "-w -s" \
            "github.com/coredns/coredns@$COREDNS_VERSION"
    ) >"$logs/coredns.log" 2>&1 || fail coredns "$logs/coredns.log" "go install github.com/coredns/coredns@$COREDNS_VERSION failed"
    echo "$COREDNS_STAMP" >"$out/coredns.version"
    log "coredns: built in $((SECONDS - t))s"
fi
"$out/coredns" -version >"$logs/coredns-version.log" 2>&1 || fail coredns "$logs/coredns-version.log" "$out/coredns -version does not run"
log "coredns: $(head -1 "$logs/coredns-version.log")"

# --- pause: the pod sandbox, a static C program. ---
PAUSE_STAMP=$(stamp "$(sha256sum tests/k3s/pause.c | cut -c1-16)" "gcc -Os -static")
if ! fresh pause "$PAUSE_STAMP"; then
    log "pause from tests/k3s/pause.c (for the rancher/mirrored-pause:3.6 image)"
    rm -f "$out/pause.version"
    nice -n 10 gcc -Os -static -o "$out/pause" tests/k3s/pause.c >"$logs/pause.log" 2>&1 ||
        fail pause "$logs/pause.log" "gcc -static tests/k3s/pause.c failed (is libc6-dev's libc.a there?)"
    echo "$PAUSE_STAMP" >"$out/pause.version"
fi
log "pause: $(stat -c %s "$out/pause") bytes, static"

# --- prometheus-adapter, inside a writable copy of its module source. ---
# The proxy refuses its @v/list, so `go install ...@v0.12.0` cannot resolve
# the version, but `go mod download` of that exact version works.
ADAPTER_STAMP=$(stamp "$ADAPTER_VERSION" "CGO_ENABLED=0")
if ! fresh adapter "$ADAPTER_STAMP"; then
    t=$SECONDS
    log "prometheus-adapter $ADAPTER_VERSION: go build ./cmd/adapter in a copy of its source"
    rm -f "$out/adapter.version"
    src=$work/adapter
    srccopy "$ADAPTER_MODULE" "$ADAPTER_VERSION" "$src"
    (
        cd "$src"
        CGO_ENABLED=0 gobuild -ldflags "-w -s" -o "$out/adapter" ./cmd/adapter
    ) >"$logs/adapter.log" 2>&1 || fail adapter "$logs/adapter.log" "go build ./cmd/adapter failed"
    chmod -R u+w "$src"
    rm -rf "$src"
    echo "$ADAPTER_STAMP" >"$out/adapter.version"
    log "adapter: built in $((SECONDS - t))s"
fi
# It has no --version; its --help (exit status 2, pflag's) lists its own flags.
"$out/adapter" --help >"$logs/adapter-help.log" 2>&1 || true
grep -q -- '--prometheus-url' "$logs/adapter-help.log" || fail adapter "$logs/adapter-help.log" "$out/adapter --help does not run"
log "adapter: prometheus-adapter $ADAPTER_VERSION runs"

log "all built in $out (put it first in PATH for k3s)"
