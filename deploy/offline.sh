#!/usr/bin/env bash
# Every image of the compose stack in one file, for a room without a registry
# (or with a slow one): save it on a machine that has the images, carry the
# file, load it on each laptop. docs/offline.md is the trainer's walkthrough.
#
#   deploy/offline.sh save [FILE]   write every image into FILE (default dockercoins-images.tar.gz)
#   deploy/offline.sh load [FILE]   load FILE, list what it brought, check nothing is missing
#   deploy/offline.sh list          the images, one a line, as the compose files name them
#
# The list is asked of Compose (`docker compose config --images`, or
# `docker-compose config` for v1), for docker-compose.yaml alone and with each
# of its overrides (docker-compose.*.yaml), so it is the images `up` runs,
# dockercoins:${DOCKERCOINS_TAG} included, never a copy that can drift.
# FILE ending in .gz is written through `gzip -1`, any other name as a plain
# tar; `docker load` reads either. Gzip is the default: measured on this
# stack, 2.4x smaller (140 MiB against 338) for 6 s more to save once and 3 s
# more to load on each laptop, and a room's copies (a USB stick, a share over
# the room's Wi-Fi) are paid in bytes; gzip -6 was 8% smaller again for 1.6x
# the time of -1 (docs/offline.md has the numbers).
#
# Environment: DOCKER (default `docker`), COMPOSE (default `$DOCKER compose`
# when that runs, else `docker-compose`), and Docker's own (DOCKER_HOST...).
set -euo pipefail

USAGE="usage: deploy/offline.sh save [FILE] | load [FILE] | list   (FILE: default dockercoins-images.tar.gz; gzipped when it ends in .gz)"
usage() {
    echo "$USAGE" >&2
    exit 2
}
die() {
    echo "offline.sh: $*" >&2
    exit 1
}

if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
action=$1
file=${2:-dockercoins-images.tar.gz}
case $action in
    save | load) ;;
    list) [ $# = 1 ] || usage ;;
    -h | --help | help) echo "$USAGE" && exit 0 ;;
    *) usage ;;
esac
# FILE is relative to where the command was typed; Compose runs from the
# repository root (it reads .env and the override files there).
case $file in /*) ;; *) file=$PWD/$file ;; esac
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
command -v "$DOCKER" >/dev/null || die "'$DOCKER' is not on PATH (install Docker, or set DOCKER)"
if [ -n "${COMPOSE:-}" ]; then
    read -r -a compose <<<"$COMPOSE"
elif "$DOCKER" compose version >/dev/null 2>&1; then
    compose=("$DOCKER" compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    compose=()
fi
# v1 (1.29) has no `config --images`.
compose_v1=false
if [ ${#compose[@]} -gt 0 ] && "${compose[@]}" version 2>/dev/null | sed -n 1p | grep -q 'version v\{0,1\}1\.'; then
    compose_v1=true
fi

# The images of docker-compose.yaml, alone and with each override, sorted and
# unique. Compose v2 prints them itself; v1 has no --images, so they are read
# from its normalized output, where each service's `image:` is one line.
stack_images() {
    local override args
    [ ${#compose[@]} -gt 0 ] || {
        echo "offline.sh: no Compose: neither '$DOCKER compose' nor docker-compose runs (set COMPOSE)" >&2
        return 1
    }
    for override in "" docker-compose.*.yaml; do
        args=(-f docker-compose.yaml ${override:+-f "$override"})
        if $compose_v1; then
            "${compose[@]}" "${args[@]}" config 2>/dev/null | sed -n 's/^    image: *//p'
        else
            "${compose[@]}" "${args[@]}" config --images
        fi || {
            echo "offline.sh: ${compose[*]} ${args[*]} config failed" >&2
            return 1
        }
    done | LC_ALL=C sort -u
}

engine_up() {
    "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
        die "Docker's engine does not answer ('$DOCKER version'): start it (sudo systemctl start docker), or check DOCKER_HOST and that you may use it (the docker group)"
}

human() { awk -v b="$1" 'BEGIN { if (b >= 1073741824) printf "%.2f GiB", b / 1073741824; else printf "%.0f MiB", b / 1048576 }'; }

case $action in
list)
    stack_images
    ;;

save)
    images=$(stack_images) || exit 1
    [ -n "$images" ] || die "Compose lists no image"
    engine_up
    missing=()
    for image in $images; do
        "$DOCKER" image inspect --format '{{.Id}}' "$image" >/dev/null 2>&1 || missing+=("$image")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        {
            echo "offline.sh: not on this machine, so not saved: ${missing[*]}"
            for image in "${missing[@]}"; do
                case $image in
                    dockercoins:*) echo "  $image: build it here: docker compose build (a Rust build of minutes)" ;;
                    *) echo "  $image: docker pull $image" ;;
                esac
            done
            echo "then run deploy/offline.sh save again"
        } >&2
        exit 1
    fi
    [ -d "$(dirname "$file")" ] || die "no directory $(dirname "$file") for $file"
    # Written beside FILE, renamed at the end: an interrupted save leaves no
    # FILE that looks whole.
    tmp="$file.partial"
    trap 'rm -f "$tmp"' EXIT
    # shellcheck disable=SC2086 # one image a word: names have no spaces
    set -- $images
    echo "offline.sh: saving $# images into $file"
    start=$(date +%s)
    case $file in
        *.gz) "$DOCKER" save "$@" | gzip -1 >"$tmp" ;;
        # Through stdout, not -o: the file gets the umask's mode (-o makes it 0600).
        *) "$DOCKER" save "$@" >"$tmp" ;;
    esac || die "docker save failed (disk full? $(df -h "$(dirname "$file")" | awk 'NR == 2 { print $4 " free" }'))"
    mv "$tmp" "$file"
    trap - EXIT
    for image in "$@"; do
        printf '  %-48s %s\n' "$image" "$(human "$("$DOCKER" image inspect --format '{{.Size}}' "$image")")"
    done
    echo "offline.sh: wrote $file: $(human "$(stat -c %s "$file")") in $(($(date +%s) - start)) s" \
        "(images share layers, so the file is less than their sum)"
    echo "on each machine: deploy/offline.sh load $(basename "$file"), then dockercoins doctor"
    ;;

load)
    [ -f "$file" ] || die "no file $file (deploy/offline.sh save writes it, on a machine that has the images)"
    engine_up
    echo "offline.sh: loading $file ($(human "$(stat -c %s "$file")"))"
    start=$(date +%s)
    # `docker load` reads a plain or a gzipped tarball alike.
    "$DOCKER" load -i "$file" | sed 's/^/  /' ||
        die "docker load failed: is $file whole? (compare its size with the one on the saving machine)"
    echo "offline.sh: loaded in $(($(date +%s) - start)) s"
    # What the stack needs, checked against what the engine now has.
    if images=$(stack_images); then
        missing=()
        for image in $images; do
            "$DOCKER" image inspect --format '{{.Id}}' "$image" >/dev/null 2>&1 || missing+=("$image")
        done
        [ ${#missing[@]} = 0 ] ||
            die "still missing after the load: ${missing[*]} (was $file saved from this version of the repository?)"
        echo "offline.sh: every image of the stack is here ($(wc -w <<<"$images")); next: docker compose up -d"
    else
        echo "offline.sh: could not ask Compose which images the stack needs: not checked" >&2
    fi
    ;;
esac
