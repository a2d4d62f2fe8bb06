# Sourced by tests/compose-e2e.sh and tests/k8s-e2e.sh: what both end-to-ends
# do the same way. Set E2E_NAME (the log prefix) before sourcing; `log` and
# `fail` print with it and the seconds since the start.

log() { printf '[%s %4ds] %s\n' "$E2E_NAME" "$SECONDS" "$*"; }
fail() {
    printf '[%s %4ds] FAIL: %s\n' "$E2E_NAME" "$SECONDS" "$*" >&2
    exit 1
}

# The machine's Debian mirror (for debootstrap, and for trixie's Compose).
debian_mirror() {
    local mirror
    mirror=$(
        {
            sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n'
            sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) bookworm .*/\2/p' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true
        } | grep -E '^https?://' | grep -v -- '-security' | grep -i debian | sed -n 1p || true
    )
    echo "${mirror:-http://deb.debian.org/debian}"
}

# debian_rootfs WORK CACHE MIRROR NAME PACKAGES: the path of a Debian
# bookworm minbase rootfs tar with PACKAGES (comma-separated) added. From
# CACHE/NAME.tar when it is there (empty CACHE: no cache), else made with
# debootstrap (30-90 s) and kept there. Bump NAME when PACKAGES change.
debian_rootfs() {
    local work=$1 cache=$2 mirror=$3 name=$4 packages=$5 cached
    cached="${cache:+$cache/$name.tar}"
    if [ -n "$cached" ] && [ -s "$cached" ]; then
        log "rootfs $name from cache $cached" >&2
        echo "$cached"
        return 0
    fi
    log "debootstrap bookworm minbase + $packages from $mirror (about 30-90 s)" >&2
    mkdir -p "$work/rootfs-$name"
    if ! timeout 300 debootstrap --variant=minbase --include="$packages" bookworm "$work/rootfs-$name" "$mirror" \
        >"$work/debootstrap-$name.log" 2>&1; then
        tail -20 "$work/debootstrap-$name.log" >&2
        fail "debootstrap of $name failed"
    fi
    rm -rf "$work/rootfs-$name/var/cache/apt/archives/"*.deb "$work/rootfs-$name/var/lib/apt/lists/"*
    tar --numeric-owner -C "$work/rootfs-$name" -cf "$work/$name.tar" .
    rm -rf "$work/rootfs-$name"
    if [ -n "$cached" ] && mkdir -p "$cache" && cp "$work/$name.tar" "$cached.tmp"; then
        mv "$cached.tmp" "$cached"
        log "cached the rootfs in $cached" >&2
    fi
    echo "$work/$name.tar"
}

# base_rootfs WORK CACHE MIRROR: the rootfs with redis-server and wget, the
# stand-in for the Redis and distroless images (wget: Jaeger's healthcheck).
base_rootfs() { debian_rootfs "$1" "$2" "$3" bookworm-minbase-redis-wget-v2 redis-server,wget; }

# builder_rootfs WORK CACHE MIRROR: the rootfs of rust:*-slim-bookworm
# without Rust: what its Dockerfile installs on debian:bookworm-slim.
builder_rootfs() { debian_rootfs "$1" "$2" "$3" bookworm-minbase-gcc-v1 ca-certificates,gcc,libc6-dev,wget; }

# The score on webui's /json at WEBUI_URL (-1 when it does not answer).
hashes() {
    local j
    j=$(curl -s --max-time 3 "$WEBUI_URL/json") || { echo -1; return; }
    j=$(sed -n 's/.*"hashes": *\([0-9][0-9]*\).*/\1/p' <<<"$j")
    echo "${j:-0}"
}
# rate SECONDS -> hashes/s with two decimals, measured through webui's /json.
rate() {
    local h0 h1 t0 t1
    h0=$(hashes); t0=$(date +%s%N)
    sleep "$1"
    h1=$(hashes); t1=$(date +%s%N)
    [ "$h0" -ge 0 ] && [ "$h1" -ge 0 ] || { echo "-1"; return; }
    awk -v d="$((h1 - h0))" -v ns="$((t1 - t0))" 'BEGIN { printf "%.2f", d / (ns / 1e9) }'
}
in_range() { awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(x >= lo && x <= hi) }'; }
