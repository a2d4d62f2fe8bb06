#!/usr/bin/env bash
# Builds the trace and metrics backends of the stack from source, for the
# tests (the native ones, and the compose and Kubernetes end-to-ends' images):
#   target/stack-tools/jaeger      Jaeger v2 (all-in-one), from its Go module
#   target/stack-tools/otelcol     the OpenTelemetry Collector with exactly the
#                                  components of deploy/otel/collector.yaml, by
#                                  the Collector's builder from deploy/otel/builder.yaml
#   target/stack-tools/prometheus  Prometheus 3.6.0 and its promtool, from the
#   target/stack-tools/promtool    module (the API, no web UI); promtool checks
#                                  compose's and Kubernetes' prometheus.yml
#   target/stack-tools/orca-interop  grpc-go's side of the ORCA load report and
#                                  weighted_round_robin interop tests, from its
#                                  own module in tests/orca-interop
# No image can be pulled on the project's machines, but the Go module proxy is
# reachable. Go's module and build caches (GOMODCACHE, GOCACHE) make a second
# run take seconds; a binary already built at the pinned version is kept.
#
# Versions: Jaeger 2.13.0 (its Go module is v1.76.0: Jaeger v2 kept the module
# path without /v2, and the module proxy here serves no later 2.x commit),
# the Collector components of contrib 0.144.0 and Prometheus 3.6.0 (module
# v0.306.0), as docker-compose.yaml and deploy/k8s pin.
set -euo pipefail
cd "$(dirname "$0")/.."

JAEGER_MODULE=github.com/jaegertracing/jaeger
JAEGER_RELEASE=2.13.0    # what docker-compose.yaml and deploy/k8s pull
JAEGER_VERSION=v1.76.0   # its Go module version
BUILDER_VERSION=v0.144.0
PROMETHEUS_MODULE=github.com/prometheus/prometheus
PROMETHEUS_RELEASE=3.6.0      # what docker-compose.yaml and deploy/k8s pull
PROMETHEUS_VERSION=v0.306.0   # its Go module version
out=target/stack-tools
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
logs=$out/logs
log() { printf '[build-stack-tools %3ss] %s\n' "$SECONDS" "$*"; }

command -v go >/dev/null || {
    echo "build-stack-tools: go is not on PATH (Go 1.24 or later builds Jaeger, the Collector and Prometheus)" >&2
    exit 1
}
BUILD_NAME=build-stack-tools
# work (removed on exit); fail, fresh, stamp, srccopy, gobuild.
source tests/go-build-lib.sh

# Jaeger. `go install MODULE/cmd/jaeger@VERSION` refuses a module whose go.mod
# has a replace directive (Jaeger's pins an old sarama), so it is built from a
# throwaway module that requires it, with the same replace.
if [ "$(cat "$out/jaeger.version" 2>/dev/null)" != "$JAEGER_VERSION" ] || [ ! -x "$out/jaeger" ]; then
    log "Jaeger $JAEGER_RELEASE, module $JAEGER_VERSION (first time: about 1.3 GB of modules, minutes of compiling)"
    mkdir "$work/jaeger"
    (
        cd "$work/jaeger"
        go mod init dockercoins/jaeger-build >/dev/null 2>&1
        go mod edit -replace github.com/Shopify/sarama=github.com/Shopify/sarama@v1.33.0
        if ! go get -tool "$JAEGER_MODULE/cmd/jaeger@$JAEGER_VERSION" >go-get.log 2>&1; then
            tail -20 go-get.log >&2
            echo "build-stack-tools: cannot fetch Jaeger's module $JAEGER_VERSION (is the Go module proxy reachable?)" >&2
            exit 1
        fi
        go build -trimpath -o "$out/jaeger" "$JAEGER_MODULE/cmd/jaeger"
    )
    echo "$JAEGER_VERSION" >"$out/jaeger.version"
fi
# Built from the module, it carries no version of its own: say which.
"$out/jaeger" version >/dev/null 2>&1 || {
    echo "build-stack-tools: $out/jaeger does not run" >&2
    exit 1
}
log "jaeger: Jaeger $JAEGER_RELEASE (module $JAEGER_VERSION) runs"

# The Collector, through its builder.
if [ ! -x "$out/builder" ] || [ "$(cat "$out/builder.version" 2>/dev/null)" != "$BUILDER_VERSION" ]; then
    log "the Collector's builder $BUILDER_VERSION"
    GOBIN="$out" go install "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION"
    echo "$BUILDER_VERSION" >"$out/builder.version"
fi
manifest=deploy/otel/builder.yaml
stamp=$(sha256sum "$manifest" | cut -c1-16)
if [ "$(cat "$out/otelcol.manifest" 2>/dev/null)" != "$stamp" ] || [ ! -x "$out/otelcol" ]; then
    log "otelcol from $manifest"
    "$out/builder" --config "$manifest" >"$out/builder.log" 2>&1 || {
        tail -20 "$out/builder.log" >&2
        echo "build-stack-tools: the Collector's builder failed (whole log: $out/builder.log)" >&2
        exit 1
    }
    cp "$out/otelcol-build/otelcol" "$out/otelcol"
    echo "$stamp" >"$out/otelcol.manifest"
fi
# The project's own config must load in the binary built for it.
"$out/otelcol" validate --config deploy/otel/collector.yaml
log "otelcol: $("$out/otelcol" --version) (deploy/otel/collector.yaml validates)"

# Prometheus and promtool, inside a writable copy of its module source:
# `go install .../cmd/prometheus@v0.306.0` is refused (replace directives).
# Built without -tags builtinassets: the web UI's assets are not in the module
# zip; the tests use the API (prom/prometheus's image has the UI).
PROMETHEUS_LDFLAGS="-w -s -X github.com/prometheus/common/version.Version=$PROMETHEUS_RELEASE -X github.com/prometheus/common/version.Branch=release-${PROMETHEUS_RELEASE%.*} -X github.com/prometheus/common/version.BuildUser=dockercoins -X github.com/prometheus/common/version.BuildDate=module-$PROMETHEUS_VERSION"
PROMETHEUS_STAMP=$(stamp "$PROMETHEUS_RELEASE/$PROMETHEUS_VERSION" netgo "$PROMETHEUS_LDFLAGS")
if ! fresh prometheus "$PROMETHEUS_STAMP" || ! fresh promtool "$PROMETHEUS_STAMP"; then
    t=$SECONDS
    log "Prometheus $PROMETHEUS_RELEASE (module $PROMETHEUS_VERSION): go build ./cmd/prometheus ./cmd/promtool in a copy of its source (first time: minutes)"
    rm -f "$out/prometheus.version" "$out/promtool.version"
    src=$work/prometheus
    srccopy "$PROMETHEUS_MODULE" "$PROMETHEUS_VERSION" "$src"
    # The revision, if the proxy says which commit the version is.
    rev=$(go mod download -json "$PROMETHEUS_MODULE@$PROMETHEUS_VERSION" | sed -n 's/^[[:space:]]*"Hash": "\([0-9a-f]*\)",*$/\1/p' | head -1)
    (
        cd "$src"
        for cmd in prometheus promtool; do
            CGO_ENABLED=0 gobuild -tags netgo \
                -ldflags "$PROMETHEUS_LDFLAGS -X github.com/prometheus/common/version.Revision=${rev:-$PROMETHEUS_VERSION}" \
                -o "$out/$cmd" "./cmd/$cmd"
        done
    ) >"$logs/prometheus.log" 2>&1 || fail prometheus "$logs/prometheus.log" "go build ./cmd/prometheus ./cmd/promtool failed"
    echo "$PROMETHEUS_STAMP" >"$out/prometheus.version"
    echo "$PROMETHEUS_STAMP" >"$out/promtool.version"
    log "prometheus, promtool: built in $((SECONDS - t))s"
fi
"$out/prometheus" --version >"$logs/prometheus-version.log" 2>&1 ||
    fail prometheus "$logs/prometheus-version.log" "$out/prometheus --version does not run"
grep -q "version $PROMETHEUS_RELEASE" "$logs/prometheus-version.log" ||
    fail prometheus "$logs/prometheus-version.log" "$out/prometheus does not say version $PROMETHEUS_RELEASE"
# The project's own configurations (compose's, Kubernetes'), checked by this
# version's promtool.
for config in deploy/prometheus/prometheus.yml deploy/k8s/base/prometheus.yml; do
    "$out/promtool" check config "$config" >"$logs/promtool.log" 2>&1 ||
        fail promtool "$logs/promtool.log" "$config does not pass promtool check config"
done
log "prometheus: $(head -1 "$logs/prometheus-version.log") (both prometheus.yml check)"

# orca-interop: a grpc-go server with per-call ORCA reports and a grpc-go
# weighted_round_robin client, for the interop tests of gRFC A51 and A58
# (tests/orca-interop/main.go says what it does). Stamped with a hash of its
# source, so that any change to go.mod, go.sum or a .go file rebuilds it.
# Built in a copy, with -mod=readonly (the last -mod wins over gobuild's): the
# go.sum committed must be complete, it is never mended here.
ORCA_INTEROP_SRC=tests/orca-interop
ORCA_INTEROP_STAMP=$(stamp "src-$(cd "$ORCA_INTEROP_SRC" && LC_ALL=C sha256sum go.mod go.sum ./*.go | sha256sum | cut -c1-16)" -mod=readonly)
if ! fresh orca-interop "$ORCA_INTEROP_STAMP"; then
    t=$SECONDS
    log "orca-interop from $ORCA_INTEROP_SRC (grpc-go v1.85.0; first time: a minute or two)"
    rm -f "$out/orca-interop.version"
    cp -r "$ORCA_INTEROP_SRC" "$work/orca-interop"
    (cd "$work/orca-interop" && gobuild -mod=readonly -o "$out/orca-interop" .) >"$logs/orca-interop.log" 2>&1 ||
        fail orca-interop "$logs/orca-interop.log" "go build in $ORCA_INTEROP_SRC failed (it needs Go 1.26 or later, as grpc-go v1.85.0 does, and the Go module proxy for a first build)"
    echo "$ORCA_INTEROP_STAMP" >"$out/orca-interop.version"
    log "orca-interop: built in $((SECONDS - t))s"
fi
"$out/orca-interop" --help >"$logs/orca-interop-help.log" 2>&1 && grep -q 'orca-interop client' "$logs/orca-interop-help.log" ||
    fail orca-interop "$logs/orca-interop-help.log" "$out/orca-interop --help does not run"
log "orca-interop: runs ($(cut -d' ' -f1 "$out/orca-interop.version"))"
