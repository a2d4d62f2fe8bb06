#!/usr/bin/env bash
# deploy/k8s against the Kubernetes API schemas, without a cluster:
# kubernetes-validate (PyPI; it ships the schemas) in strict mode, so an
# unknown or misspelt field fails. Every manifest file as written, and, where
# kubectl is installed, what `kubectl kustomize` builds from each
# kustomization (namespace and image tag applied). tests/it/k8s.rs checks the
# invariants (headless rng and hasher, probes, names matching compose...).
#
#   bash tests/k8s-validate.sh            # needs: pip install kubernetes-validate
set -euo pipefail
cd "$(dirname "$0")/.."
command -v kubernetes-validate >/dev/null ||
    { echo "kubernetes-validate is needed: python3 -m pip install kubernetes-validate" >&2; exit 1; }
# The oldest Kubernetes the manifests are for (gRPC probes are GA since 1.27),
# and the newest the tool knows.
versions=(1.29.0 "$(kubernetes-validate --version 2>/dev/null | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | tail -1)")
mapfile -t files < <(find deploy/k8s -name '*.yaml' ! -name kustomization.yaml | sort)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if command -v kubectl >/dev/null; then
    for dir in deploy/k8s deploy/k8s/lab-rng-daemonset deploy/k8s/autoscale-rng; do
        out="$work/$(echo "$dir" | tr / _).yaml"
        kubectl kustomize "$dir" >"$out"
        files+=("$out")
    done
else
    echo "kubectl is not installed: validating the files only, not the kustomize builds"
fi
for version in "${versions[@]}"; do
    [ -n "$version" ] || continue
    kubernetes-validate --strict --quiet -k "$version" "${files[@]}"
    echo "k8s: ${#files[@]} files valid against Kubernetes $version (strict)"
done
