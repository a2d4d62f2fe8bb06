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

# base_rootfs WORK CACHE MIRROR: the path of a Debian bookworm minbase
# rootfs tar with redis-server and wget, the stand-in for the Redis and
# distroless images (wget: Jaeger's healthcheck). From CACHE when it holds
# one (empty CACHE: no cache), else made with debootstrap (30-60 s) and kept
# there. Bump the name when the package set changes.
base_rootfs() {
    local work=$1 cache=$2 mirror=$3 cached
    cached="${cache:+$cache/bookworm-minbase-redis-wget-v2.tar}"
    if [ -n "$cached" ] && [ -s "$cached" ]; then
        log "base rootfs from cache $cached" >&2
        echo "$cached"
        return 0
    fi
    log "debootstrap bookworm minbase + redis-server, wget from $mirror (about 30-60 s)" >&2
    mkdir -p "$work/rootfs"
    if ! timeout 300 debootstrap --variant=minbase --include=redis-server,wget bookworm "$work/rootfs" "$mirror" \
        >"$work/debootstrap.log" 2>&1; then
        tail -20 "$work/debootstrap.log" >&2
        fail "debootstrap failed"
    fi
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    tar --numeric-owner -C "$work/rootfs" -cf "$work/rootfs.tar" .
    rm -rf "$work/rootfs"
    if [ -n "$cached" ] && mkdir -p "$cache" && cp "$work/rootfs.tar" "$cached.tmp"; then
        mv "$cached.tmp" "$cached"
        log "cached the rootfs in $cached" >&2
    fi
    echo "$work/rootfs.tar"
}

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
