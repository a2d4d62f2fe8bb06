# Sourced by the bench scripts: RELEASE, the folder of cargo's release builds
# as cargo itself reports it (CARGO_TARGET_DIR, a config's build.target-dir,
# or target/), so a build made elsewhere is the one measured.
# shellcheck shell=bash
RELEASE=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release
