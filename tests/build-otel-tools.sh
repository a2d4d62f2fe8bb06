#!/usr/bin/env bash
# Builds the trace backend of the compose stack from source, for the tests:
#   target/otel-tools/jaeger   Jaeger v2 (all-in-one), from its Go module
#   target/otel-tools/otelcol  the OpenTelemetry Collector with exactly the
#                              components of deploy/otel/collector.yaml, by the
#                              Collector's builder from deploy/otel/builder.yaml
# No image can be pulled on the project's machines, but the Go module proxy is
# reachable. Go's module and build caches (GOMODCACHE, GOCACHE) make a second
# run take seconds; a binary already built at the pinned version is kept.
#
# Versions: Jaeger 2.13.0 (its Go module is v1.76.0: Jaeger v2 kept the module
# path without /v2, and the module proxy here serves no later 2.x commit) and
# the Collector components of contrib 0.144.0, as docker-compose.yaml pins.
set -euo pipefail
cd "$(dirname "$0")/.."

JAEGER_MODULE=github.com/jaegertracing/jaeger
JAEGER_RELEASE=2.13.0    # what docker-compose.yaml and deploy/k8s pull
JAEGER_VERSION=v1.76.0   # its Go module version
BUILDER_VERSION=v0.144.0
out=target/otel-tools
mkdir -p "$out"
log() { printf '[build-otel-tools %3ss] %s\n' "$SECONDS" "$*"; }

command -v go >/dev/null || {
    echo "build-otel-tools: go is not on PATH (Go 1.24 or later builds Jaeger and the Collector)" >&2
    exit 1
}

# Jaeger. `go install MODULE/cmd/jaeger@VERSION` refuses a module whose go.mod
# has a replace directive (Jaeger's pins an old sarama), so it is built from a
# throwaway module that requires it, with the same replace.
if [ "$(cat "$out/jaeger.version" 2>/dev/null)" != "$JAEGER_VERSION" ] || [ ! -x "$out/jaeger" ]; then
    log "Jaeger $JAEGER_RELEASE, module $JAEGER_VERSION (first time: about 1.3 GB of modules, minutes of compiling)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (
        cd "$work"
        go mod init dockercoins/jaeger-build >/dev/null 2>&1
        go mod edit -replace github.com/Shopify/sarama=github.com/Shopify/sarama@v1.33.0
        if ! go get -tool "$JAEGER_MODULE/cmd/jaeger@$JAEGER_VERSION" >go-get.log 2>&1; then
            tail -20 go-get.log >&2
            echo "build-otel-tools: cannot fetch Jaeger's module $JAEGER_VERSION (is the Go module proxy reachable?)" >&2
            exit 1
        fi
        go build -trimpath -o "$OLDPWD/$out/jaeger" "$JAEGER_MODULE/cmd/jaeger"
    )
    echo "$JAEGER_VERSION" >"$out/jaeger.version"
fi
# Built from the module, it carries no version of its own: say which.
"$out/jaeger" version >/dev/null 2>&1 || {
    echo "build-otel-tools: $out/jaeger does not run" >&2
    exit 1
}
log "jaeger: Jaeger $JAEGER_RELEASE (module $JAEGER_VERSION) runs"

# The Collector, through its builder.
if [ ! -x "$out/builder" ] || [ "$(cat "$out/builder.version" 2>/dev/null)" != "$BUILDER_VERSION" ]; then
    log "the Collector's builder $BUILDER_VERSION"
    GOBIN="$PWD/$out" go install "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION"
    echo "$BUILDER_VERSION" >"$out/builder.version"
fi
manifest=deploy/otel/builder.yaml
stamp=$(sha256sum "$manifest" | cut -c1-16)
if [ "$(cat "$out/otelcol.manifest" 2>/dev/null)" != "$stamp" ] || [ ! -x "$out/otelcol" ]; then
    log "otelcol from $manifest"
    "$out/builder" --config "$manifest" >"$out/builder.log" 2>&1 || {
        tail -20 "$out/builder.log" >&2
        echo "build-otel-tools: the Collector's builder failed (whole log: $out/builder.log)" >&2
        exit 1
    }
    cp "$out/otelcol-build/otelcol" "$out/otelcol"
    echo "$stamp" >"$out/otelcol.manifest"
fi
# The project's own config must load in the binary built for it.
"$out/otelcol" validate --config deploy/otel/collector.yaml
log "otelcol: $("$out/otelcol" --version) (deploy/otel/collector.yaml validates)"
