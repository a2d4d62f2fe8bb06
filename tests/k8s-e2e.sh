#!/usr/bin/env bash
# deploy/k8s, for real, on this machine: a single-node k3s built from its Go
# module (tests/build-k3s.sh), the stack's images loaded without a registry,
# and the lab run with the commands docs/kubernetes.md gives a trainer.
#
#   sudo bash tests/k8s-e2e.sh
#
# Needs root (k3s runs containers; a private dockerd builds the images),
# Debian's packages and the Go module proxy; no registry of images. Steps:
#   1. notes the machine's state: iptables (every table, v4 and v6), the
#      sysctls k3s, kubelet and kube-proxy set, the mounts and their
#      propagation, the network links;
#   2. builds or reuses k3s and its parts (tests/build-k3s.sh), Jaeger,
#      the Collector and Prometheus (tests/build-stack-tools.sh);
#   3. builds the stack's images on a private dockerd that changes no network
#      state (no bridge, no iptables, no forwarding), as tests/compose-e2e.sh
#      does, plus the cluster's own (pause, CoreDNS, prometheus-adapter), and
#      saves them into one file, which k3s imports at start;
#   4. starts k3s (server and agent in one process, its data, kubelet and
#      CNI directories under this run's temporary directory) with a bridge
#      CNI from Debian's plugins;
#   5. the lab: `kubectl apply -k deploy/k8s`, every pod Running and Ready
#      under the namespace's `restricted` enforcement, a privileged pod
#      refused; 1 worker (about 3.3 hashes/s, from webui's /json through
#      `kubectl port-forward`), 10 workers (about 10); rng's lane wait over
#      0.5 s in Prometheus and in `dockercoins traces` against the cluster's
#      Jaeger; rng scaled to 3: the headless Service names the 3 pods, every
#      worker reaches each, the rate about triples; the DaemonSet overlay
#      (one node: one rng); `autoscale-rng`: the custom metrics API answers
#      and the HPA grows rng from 1 replica; a rolling restart of rng and
#      hasher under ten workers loses no unit of work; `kubectl delete -k`
#      leaves nothing behind;
#   6. stops k3s and everything it started, undoes what it changed, and
#      checks that the machine's state is what step 1 noted.
# Prints one summary line. Environment: E2E_CACHE (as compose-e2e.sh),
# E2E_KEEP=1 keeps the temporary directory for a post-mortem.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SECONDS=0

E2E_NAME=k8s-e2e
. tests/e2e-lib.sh

[ "$(id -u)" = 0 ] || fail "run as root: it starts k3s and its own dockerd"

# ------------------------------------------------------------------ tools --
export DEBIAN_FRONTEND=noninteractive
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v curl >/dev/null || missing+=(curl)
command -v ip >/dev/null || missing+=(iproute2)
command -v iptables >/dev/null || missing+=(iptables)
command -v conntrack >/dev/null || missing+=(conntrack)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi
DOCKER=docker
[ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker
MIRROR=$(debian_mirror)
pgrep -x k3s >/dev/null && fail "a k3s already runs on this machine: this test starts its own"
# kubectl port-forward listens on these, as a trainer's would (webui,
# Prometheus, Jaeger): they must be free, or a check would read another server.
for port in 18000 19090 16686; do
    ! ss -Hltn "sport = :$port" 2>/dev/null | grep -q . ||
        fail "port $port is taken on this host (kubectl port-forward needs it): $(ss -Hltnp "sport = :$port")"
done

# --------------------------------------------------- the machine's state --
# What k3s, kubelet, kube-proxy, containerd and the CNI plugins change, noted
# now; the cleanup puts it back and compares (tests/machine-state.sh).
. tests/machine-state.sh
WORK=$(mktemp -d /tmp/dockercoins-k8s.XXXXXX)
chmod 755 "$WORK"
machine_note "$WORK"
machine_links >"$WORK/links.before"
ls -d /run/netns/cni-* >"$WORK/netns.before" 2>/dev/null || true
MADE_DIRS=()
for dir in /etc/rancher /var/lib/rancher /run/k3s /var/lib/cni /var/log/pods /var/log/containers /run/netns /var/lib/kubelet; do
    [ -e "$dir" ] || MADE_DIRS+=("$dir")
done

DOCKERD_PID=
K3S_PID=
PORT_FORWARDS=()
K3S_BIN=$REPO/target/k8s-tools
export KUBECONFIG=$WORK/kubeconfig

stop_pid() { # PID SECONDS: SIGTERM, then SIGKILL after SECONDS.
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 1 $(($2 * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
# Every process k3s started that outlives it: containerd's shims (they are
# re-parented when k3s stops) and the containers under them. Found by the
# binary they run, which is this run's own.
stop_shims() {
    local pid exe
    for pid in $(pgrep -f "$K3S_BIN/containerd-shim-runc-v2" || true); do
        exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
        [ "$exe" = "$K3S_BIN/containerd-shim-runc-v2" ] || continue
        # The shim's children are the pods' processes: take the tree down.
        pkill -9 -P "$pid" 2>/dev/null || true
        kill -9 "$pid" 2>/dev/null || true
    done
}
undo_machine() {
    # Mounts under this run's directories and the network namespaces of its
    # pods (those that were not there before), deepest first.
    local m ns link
    awk '{print $5}' /proc/self/mountinfo | grep -E "^($WORK|/run/k3s)(/|$)" |
        sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
    for ns in /run/netns/cni-*; do
        [ -e "$ns" ] && ! grep -qxF "$ns" "$WORK/netns.before" || continue
        umount -l "$ns" 2>/dev/null
        rm -f "$ns"
    done
    # The bridge and the pods' veths this run made (cni0 was not there).
    for link in $(machine_links); do
        case "$link" in cni0 | veth*) grep -qxF "$link" "$WORK/links.before" || ip link delete "$link" 2>/dev/null ;; esac
    done
    machine_restore "$WORK"
    local dir
    for dir in "${MADE_DIRS[@]}"; do rm -rf "$dir"; done
    # Connection tracking of the pods' and Services' addresses only.
    for net in 10.42.0.0/24 10.43.0.0/16; do
        conntrack -D -s "$net" >/dev/null 2>&1 || true
        conntrack -D -d "$net" >/dev/null 2>&1 || true
    done
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pid
    for pid in "${PORT_FORWARDS[@]}"; do stop_pid "$pid" 5; done
    if [ "$rc" != 0 ] && [ -n "$K3S_PID" ]; then
        log "pods, events and the last lines of each dockercoins pod (failure: rc=$rc)"
        timeout 20 kubectl get pods -A -o wide
        timeout 20 kubectl -n dockercoins get events --sort-by=.lastTimestamp | tail -20
        for pod in $(timeout 20 kubectl -n dockercoins get pods -o name 2>/dev/null); do
            echo "--- $pod"
            timeout 10 kubectl -n dockercoins logs --tail 8 "$pod" 2>&1
        done
        tail -15 "$WORK/k3s.log"
    fi
    if [ -n "$K3S_PID" ]; then
        log "cleanup: stopping k3s (pid $K3S_PID), its shims and their containers"
        stop_pid "$K3S_PID" 30
    fi
    stop_shims
    if [ -n "$DOCKERD_PID" ]; then stop_pid "$DOCKERD_PID" 30; fi
    undo_machine
    if machine_compare "$WORK"; then
        log "cleanup: the machine is as it was (iptables v4 and v6, ${#MACHINE_SYSCTLS[@]} sysctls, mounts, links)"
        CLEANUP_OK=yes
    else
        log "cleanup: the machine is NOT as it was (the differences above)"
        [ "$rc" = 0 ] && rc=1
    fi
    if [ "${E2E_KEEP:-0}" = 1 ]; then log "cleanup: kept $WORK"; else rm -rf "$WORK"; fi
    if [ "$rc" = 0 ]; then
        log "summary: ${SUMMARY:-} cleanup ${CLEANUP_OK:-no}"
        log "PASS ($SECONDS s)"
    else
        log "FAILED (rc=$rc, $SECONDS s)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------ the tools --
bash tests/build-k3s.sh || fail "tests/build-k3s.sh failed (it needs go, gcc and the Go module proxy)"
bash tests/build-stack-tools.sh >/dev/null || fail "tests/build-stack-tools.sh failed"
export PATH="$K3S_BIN:$PATH"
[ "$(command -v kubectl)" = "$K3S_BIN/kubectl" ] || fail "kubectl is $(command -v kubectl), not $K3S_BIN/kubectl"
log "$(k3s --version | sed -n 1p); runc $(runc --version | sed -n 's/^runc version //p')"

# -------------------------------------------------------------- the images --
# A private dockerd that leaves the machine's network alone: no bridge, no
# iptables rules, no forwarding (what compose-e2e.sh then has to undo).
export DOCKER_HOST="unix://$WORK/docker.sock"
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
dockerd --data-root "$WORK/docker" --exec-root "$WORK/docker-exec" --pidfile "$WORK/dockerd.pid" \
    -H "$DOCKER_HOST" --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 1 120); do "$DOCKER" version >/dev/null 2>&1 && break; kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
"$DOCKER" version >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log" >&2; fail "the private dockerd did not answer within 60 s"; }

image_of() { sed -n "s|^ *image: *\\($1[^ ]*\\).*|\\1|p" "${@:2}" | sed -n 1p; }
REDIS_IMAGE=$(image_of 'redis:' deploy/k8s/base/redis.yaml)
OTELCOL_IMAGE=$(image_of 'otel/opentelemetry-collector' deploy/k8s/base/otel-collector.yaml)
JAEGER_IMAGE=$(image_of 'jaegertracing/jaeger:' deploy/k8s/base/jaeger.yaml)
PROMETHEUS_IMAGE=$(image_of 'prom/prometheus:' deploy/k8s/base/prometheus.yaml)
ADAPTER_IMAGE=$(image_of 'registry.k8s.io/prometheus-adapter/' deploy/k8s/autoscale-rng/adapter/prometheus-adapter.yaml)
DOCKERCOINS_IMAGE=dockercoins:$(sed -n 's/^ *newTag: *//p' deploy/k8s/kustomization.yaml | sed -n 1p)
for image in REDIS_IMAGE OTELCOL_IMAGE JAEGER_IMAGE PROMETHEUS_IMAGE ADAPTER_IMAGE; do
    [ -n "${!image}" ] || fail "no $image found in deploy/k8s"
done
# The images k3s itself runs, tagged as its bundled manifests name them.
PAUSE_IMAGE=docker.io/rancher/mirrored-pause:3.6
COREDNS_IMAGE=docker.io/rancher/mirrored-coredns-coredns:1.14.1

STANDIN=dockercoins-e2e/bookworm-minbase:local
ROOTFS_TAR=$(base_rootfs "$WORK" "${E2E_CACHE-/var/cache/dockercoins-e2e}" "$MIRROR")
"$DOCKER" import "$ROOTFS_TAR" "$STANDIN" >/dev/null || fail "docker import of the base rootfs failed"
"$DOCKER" tag "$STANDIN" "$REDIS_IMAGE"

log "cargo build --release --locked; the dockercoins image (deploy/Dockerfile, target prebuilt)"
cargo build --release --locked
timeout 300 "$DOCKER" build -q -f deploy/Dockerfile --target prebuilt --build-arg RUNTIME_IMAGE="$STANDIN" \
    -t "$DOCKERCOINS_IMAGE" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; fail "docker build of $DOCKERCOINS_IMAGE failed"; }

mkdir -p "$WORK/stand-ins"
cp target/stack-tools/otelcol target/stack-tools/jaeger target/stack-tools/prometheus "$K3S_BIN/adapter" "$WORK/stand-ins/"
for target in otelcol:$OTELCOL_IMAGE jaeger:$JAEGER_IMAGE prometheus:$PROMETHEUS_IMAGE prometheus-adapter:$ADAPTER_IMAGE; do
    timeout 300 "$DOCKER" build -q -f tests/stand-ins.Dockerfile --target "${target%%:*}" \
        --build-arg BASE="$STANDIN" -t "${target#*:}" "$WORK/stand-ins" >"$WORK/build-${target%%:*}.log" 2>&1 ||
        { cat "$WORK/build-${target%%:*}.log" >&2; fail "docker build of the ${target%%:*} stand-in failed"; }
done
# pause and CoreDNS: one static binary each, as their released images are.
tar -C "$K3S_BIN" -c pause | "$DOCKER" import -c 'ENTRYPOINT ["/pause"]' - "$PAUSE_IMAGE" >/dev/null
tar -C "$K3S_BIN" -c coredns | "$DOCKER" import -c 'ENTRYPOINT ["/coredns"]' -c 'USER 65532' - "$COREDNS_IMAGE" >/dev/null
IMAGES=("$DOCKERCOINS_IMAGE" "$REDIS_IMAGE" "$OTELCOL_IMAGE" "$JAEGER_IMAGE" "$PROMETHEUS_IMAGE" "$ADAPTER_IMAGE" "$PAUSE_IMAGE" "$COREDNS_IMAGE")
mkdir -p "$WORK/k3s/agent/images"
"$DOCKER" save -o "$WORK/k3s/agent/images/dockercoins-e2e.tar" "${IMAGES[@]}" || fail "docker save failed"
log "images: ${#IMAGES[@]} saved for k3s ($(du -m "$WORK/k3s/agent/images/dockercoins-e2e.tar" | cut -f1) MiB): ${IMAGES[*]}"
stop_pid "$DOCKERD_PID" 30
DOCKERD_PID=
rm -rf "$WORK/docker" "$WORK/docker-exec" "$WORK/stand-ins"

# -------------------------------------------------------------------- k3s --
# CNI: one bridge on this node, from Debian's plugins, in this run's
# directories (containerd is told where, below): /etc/cni and /opt/cni are
# left alone.
mkdir -p "$WORK/cni/net.d" "$WORK/cni/bin"
for plugin in bridge host-local loopback portmap; do ln -s "/usr/lib/cni/$plugin" "$WORK/cni/bin/$plugin"; done
cat >"$WORK/cni/net.d/10-dockercoins-e2e.conflist" <<'EOF'
{"cniVersion": "1.0.0", "name": "dockercoins-e2e", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.42.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
# containerd's config: k3s's own template (read from its module source, so
# it is the one this k3s was built with) with two changes. root here may not
# lower an OOM score (no CAP_SYS_RESOURCE), and kubelet asks -998 for every
# sandbox: restrict_oom_score_adj lets containerd clamp it instead of
# failing every pod. And the CNI directories above.
K3S_VERSION=$(cut -d' ' -f1 "$K3S_BIN/k3s.version")
K3S_SRC=$(go mod download -json "github.com/k3s-io/k3s@$K3S_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$K3S_SRC" ] || fail "no module source for github.com/k3s-io/k3s@$K3S_VERSION in Go's module cache"
sed -n '/^const ContainerdConfigTemplateV3 = `/,/^`/p' "$K3S_SRC/pkg/agent/templates/templates.go" | sed '1d;$d' |
    sed "s|^\[plugins.'io.containerd.cri.v1.runtime'\]\$|&\n  restrict_oom_score_adj = true|" >"$WORK/containerd.tmpl"
grep -q restrict_oom_score_adj "$WORK/containerd.tmpl" || fail "k3s's containerd template has changed: no runtime section found in $K3S_SRC"
printf "\n[plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [\"%s\"]\n  conf_dir = \"%s\"\n" \
    "$WORK/cni/bin" "$WORK/cni/net.d" >>"$WORK/containerd.tmpl"
mkdir -p "$WORK/k3s/agent/etc/containerd"
cp "$WORK/containerd.tmpl" "$WORK/k3s/agent/etc/containerd/config-v3.toml.tmpl"

# Aggregator routing: the API server reaches prometheus-adapter's pod
# itself, as k3s has it whenever its egress selector is on (off here, as the
# by-hand run had it). Through the Service's ClusterIP, a first call made
# before kube-proxy had written its rules left the node by the default route,
# where this machine's network answers any address, and the custom metrics
# API stayed "unable to handle the request" for minutes (seen once in three
# runs).
# kubelet's containers see mounts made after they start (the API server's
# service-account token, ConfigMap updates): the root mount must be shared.
mount --make-rshared /
sysctl -qw fs.inotify.max_user_instances=512
log "starting k3s (data in $WORK/k3s)"
t0=$SECONDS
k3s server --data-dir "$WORK/k3s" --write-kubeconfig "$KUBECONFIG" --write-kubeconfig-mode 0600 \
    --flannel-backend=none --disable-network-policy --disable-cloud-controller \
    --disable=traefik,servicelb,metrics-server,local-storage --disable-helm-controller \
    --egress-selector-mode=disabled --kube-apiserver-arg=enable-aggregator-routing=true \
    --pause-image "$PAUSE_IMAGE" \
    --kubelet-arg=fail-cgroupv1=false --kubelet-arg=root-dir="$WORK/kubelet" \
    >"$WORK/k3s.log" 2>&1 &
K3S_PID=$!
# bounded: the API server answers within seconds once its certificates exist.
for _ in $(seq 1 120); do
    kubectl get --raw /readyz >/dev/null 2>&1 && break
    kill -0 "$K3S_PID" 2>/dev/null || { tail -30 "$WORK/k3s.log" >&2; fail "k3s exited before its API answered"; }
    sleep 1
done
kubectl get --raw /readyz >/dev/null 2>&1 || { tail -30 "$WORK/k3s.log" >&2; fail "k3s's API did not answer /readyz within 120 s"; }
for _ in $(seq 1 60); do [ -n "$(kubectl get nodes -o name 2>/dev/null)" ] && break; sleep 1; done
kubectl wait --for=condition=Ready node --all --timeout=180s >/dev/null ||
    { tail -30 "$WORK/k3s.log" >&2; fail "the node did not become Ready within 180 s"; }
NODE_READY_S=$((SECONDS - t0))
log "node Ready $NODE_READY_S s after start ($(kubectl get nodes -o jsonpath='{.items[0].status.nodeInfo.kubeletVersion}'))"
# k3s applies its bundled CoreDNS manifest a few seconds after it starts.
for _ in $(seq 1 60); do kubectl -n kube-system get deploy coredns >/dev/null 2>&1 && break; sleep 1; done
kubectl -n kube-system rollout status deploy/coredns --timeout=180s >/dev/null ||
    fail "CoreDNS did not become available within 180 s"

# ---------------------------------------------------------------- the lab --
kc() { kubectl -n dockercoins "$@"; }
# port_forward NAME LOCAL:REMOTE: `kubectl port-forward`, as a trainer runs
# it, in the background until the end; waits (bounded) until it listens.
port_forward() {
    kc port-forward "$1" "$2" >"$WORK/port-forward-${1//\//-}.log" 2>&1 &
    PORT_FORWARDS+=($!)
    local port=${2%%:*}
    for _ in $(seq 1 50); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && return 0; sleep 0.2; done
    cat "$WORK/port-forward-${1//\//-}.log" >&2
    fail "kubectl port-forward $1 $2 did not listen within 10 s"
}
# The workers are Ready: every Deployment of the namespace has its replicas.
wait_rollouts() {
    local deploy
    for deploy in $(kc get deploy -o name); do
        kc rollout status "$deploy" --timeout="${1}s" >/dev/null ||
            fail "$deploy did not roll out within $1 s"
    done
}
WEBUI_URL=http://127.0.0.1:18000
# promql QUERY: the first value of an instant query, or nothing.
promql() {
    curl -s --max-time 5 --get --data-urlencode "query=$1" http://127.0.0.1:19090/api/v1/query |
        sed -n 's/.*"value":\[[^,]*,"\([^"]*\)"\].*/\1/p'
}
# wait_promql LIMIT QUERY LOW HIGH: until QUERY's value is within [LOW, HIGH].
wait_promql() {
    local deadline=$((SECONDS + $1)) value
    while :; do
        value=$(promql "$2")
        [ -n "$value" ] && in_range "$value" "$3" "$4" && { echo "$value"; return 0; }
        [ "$SECONDS" -lt "$deadline" ] || { echo "${value:-none}"; return 1; }
        sleep 3
    done
}
redis_hashes() { kc exec deploy/redis -- redis-cli GET hashes | tr -dc 0-9; }

log "kubectl apply -k deploy/k8s"
t0=$SECONDS
kubectl apply -k deploy/k8s >"$WORK/apply.log" 2>&1 || { cat "$WORK/apply.log" >&2; fail "kubectl apply -k deploy/k8s failed"; }
wait_rollouts 300
kc wait --for=condition=Ready pod --all --timeout=120s >/dev/null || fail "not every pod Ready within 120 s"
PODS=$(kc get pods --no-headers | wc -l)
log "every pod Running and Ready $((SECONDS - t0)) s after apply ($PODS pods)"
[ "$(kubectl get ns dockercoins -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}')" = restricted ] ||
    fail "the namespace does not enforce the restricted Pod Security Standard"
# A pod that breaks the standard is refused (server-side dry run: admission
# runs, nothing is made).
if kc run privileged --image="$DOCKERCOINS_IMAGE" --privileged --restart=Never --dry-run=server -- --version \
    >"$WORK/privileged.log" 2>&1; then
    fail "a privileged pod was admitted into the restricted namespace"
fi
grep -q "violates PodSecurity" "$WORK/privileged.log" || { cat "$WORK/privileged.log" >&2; fail "the privileged pod was refused, but not by PodSecurity"; }
log "restricted: every pod admitted, a privileged one refused ($(grep -o 'violates PodSecurity "[^"]*"' "$WORK/privileged.log"))"

# Any start order works: the order that once broke by hand, the Collector
# up and exporting before Jaeger, then Jaeger (its Service is headless,
# deploy/k8s/base/jaeger.yaml says why).
log "the Collector before Jaeger: jaeger scaled to 0, the Collector restarted and exporting, then jaeger back"
kc scale deployment jaeger --replicas 0 >/dev/null
kc wait --for=delete pod -l app.kubernetes.io/name=jaeger --timeout=60s >/dev/null || fail "jaeger's pod did not go within 60 s"
kc rollout restart deployment/otel-collector >/dev/null
kc rollout status deployment/otel-collector --timeout=120s >/dev/null || fail "the Collector did not restart within 120 s"
sleep 10  # the services send their spans; the Collector has no Jaeger to export to
kc scale deployment jaeger --replicas 1 >/dev/null
kc rollout status deployment/jaeger --timeout=120s >/dev/null || fail "jaeger did not come back within 120 s"
port_forward svc/webui 18000:8000
port_forward svc/prometheus 19090:9090
port_forward svc/jaeger 16686:16686
jaeger_services() {
    curl -s --max-time 3 http://127.0.0.1:16686/api/v3/services | tr -d ' \n' |
        sed -n 's/.*"services":\[\([^]]*\)\].*/\1/p' | tr -d '"' | tr ',' ' '
}
t0=$SECONDS
for _ in $(seq 1 60); do
    JAEGER_HAS=$(jaeger_services)
    [[ " $JAEGER_HAS " == *" worker "* && " $JAEGER_HAS " == *" rng "* && " $JAEGER_HAS " == *" hasher "* ]] && break
    sleep 1
done
[[ " $JAEGER_HAS " == *" worker "* && " $JAEGER_HAS " == *" rng "* && " $JAEGER_HAS " == *" hasher "* ]] ||
    fail "Jaeger started after the Collector lists [$JAEGER_HAS] after 60 s, not worker, rng and hasher: the Collector does not reach it"
JAEGER_AFTER_S=$((SECONDS - t0))
log "Jaeger, started after the Collector, has traces of worker, rng and hasher within $JAEGER_AFTER_S s"
sleep 3
RATE1=$(rate 10)
log "1 worker: $RATE1 hashes/s (classroom: about 3.3)"
in_range "$RATE1" 2.5 4.0 || fail "1 worker should do about 3.3 hashes/s, measured $RATE1"

log "kubectl scale deployment worker --replicas 10"
kc scale deployment worker --replicas 10 >/dev/null
wait_rollouts 180
sleep 5
RATE10=$(rate 20)
log "10 workers: $RATE10 hashes/s (rng's one lane caps it near 10)"
in_range "$RATE10" 7 11 || fail "10 workers should be capped near 10 hashes/s, measured $RATE10"
LANE_WAIT='sum(rate(rng_lane_wait_seconds_sum[1m])) / sum(rate(rng_lane_wait_seconds_count[1m]))'
PROM_WAIT10=$(wait_promql 120 "$LANE_WAIT" 0.5 100) ||
    fail "Prometheus: rng's mean lane wait with 10 workers should pass 0.5 s, is $PROM_WAIT10 (every target up? $(promql 'count(up == 1)'))"
log "Prometheus (pods found through the API): rng's mean lane wait $PROM_WAIT10 s"
TRACES_OUT=$(target/release/dockercoins traces --jaeger http://127.0.0.1:16686 --since 20s 2>&1) ||
    { echo "$TRACES_OUT" >&2; fail "dockercoins traces against the cluster's Jaeger failed"; }
WAIT10=$(awk '/^ *rng lane wait / { v = $5; u = $6; if (u == "s") v *= 1000; else if (u == "µs") v /= 1000; printf "%.0f", v; found = 1 } END { if (!found) exit 1 }' <<<"$TRACES_OUT") ||
    { echo "$TRACES_OUT" >&2; fail "dockercoins traces printed no rng lane wait"; }
log "dockercoins traces (the cluster's Jaeger): rng lane wait p50 $WAIT10 ms"
[ "$WAIT10" -gt 500 ] || { echo "$TRACES_OUT" >&2; fail "with 10 workers rng's lane wait p50 should pass 500 ms, is $WAIT10 ms"; }

# The lab's fix on Kubernetes: more rng pods behind a headless Service.
log "kubectl scale deployment rng --replicas 3"
kc scale deployment rng --replicas 3 >/dev/null
wait_rollouts 180
ENDPOINTS=$(kc get endpointslices -l kubernetes.io/service-name=rng -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{" "}{end}')
[ "$(wc -w <<<"$ENDPOINTS")" = 3 ] || fail "rng's Service should name 3 ready pods, names: $ENDPOINTS"
[ "$(kc get svc rng -o jsonpath='{.spec.clusterIP}')" = None ] || fail "rng's Service is not headless"
# Each worker re-resolves rng's name (5 s) and then calls every pod: in
# Prometheus, every worker pod has calls to 3 rng addresses.
REACH='min(count by (pod) (sum by (pod, server_address) (rate(rpc_client_call_duration_seconds_count{rpc_method=~".*Rng/Generate"}[30s])) > 0))'
REACHED=$(wait_promql 120 "$REACH" 3 3) || fail "every worker should call all 3 rng pods; the fewest any worker reaches is $REACHED"
sleep 5
RATE3=$(rate 20)
RATIO=$(awk -v a="$RATE3" -v b="$RATE10" 'BEGIN { printf "%.2f", a / b }')
log "3 rng pods, headless: every worker reaches all 3; 10 workers $RATE3 hashes/s (${RATIO}x)"
in_range "$RATIO" 2.4 3.6 || fail "3 rng pods should about triple the rate: $RATE10 -> $RATE3 (${RATIO}x)"

# The DaemonSet overlay, as the docs write it (one node: one rng pod).
log "kubectl apply -k deploy/k8s/lab-rng-daemonset; kubectl delete deployment rng"
kubectl apply -k deploy/k8s/lab-rng-daemonset >"$WORK/apply-ds.log" 2>&1 || { cat "$WORK/apply-ds.log" >&2; fail "apply -k deploy/k8s/lab-rng-daemonset failed"; }
kc delete deployment rng --wait=true >/dev/null
kc rollout status daemonset/rng --timeout=120s >/dev/null || fail "the rng DaemonSet did not roll out within 120 s"
DS_PODS=$(kc get daemonset rng -o jsonpath='{.status.numberReady}')
[ "$DS_PODS" = 1 ] || fail "one node should run one rng pod, runs $DS_PODS"
sleep 8
RATE_DS=$(rate 15)
log "DaemonSet: $DS_PODS rng pod on 1 node, 10 workers $RATE_DS hashes/s"
in_range "$RATE_DS" 7 11 || fail "one rng pod per node on one node should cap 10 workers near 10 hashes/s, measured $RATE_DS"
kc delete daemonset rng --wait=true >/dev/null

# Autoscaling on rng's lane wait: prometheus-adapter and an HPA.
log "kubectl apply -k deploy/k8s/autoscale-rng"
kubectl apply -k deploy/k8s/autoscale-rng >"$WORK/apply-hpa.log" 2>&1 || { cat "$WORK/apply-hpa.log" >&2; fail "apply -k deploy/k8s/autoscale-rng failed"; }
HPA_BEFORE=$(kc get deploy rng -o jsonpath='{.spec.replicas}')
kc scale deployment worker --replicas 10 >/dev/null
wait_rollouts 180
t0=$SECONDS
METRIC_API="/apis/custom.metrics.k8s.io/v1beta1/namespaces/dockercoins/pods/*/rng_lane_wait_seconds"
for _ in $(seq 1 60); do
    kubectl get --raw "$METRIC_API" >"$WORK/custom-metric.json" 2>&1 && grep -q '"value"' "$WORK/custom-metric.json" && break
    sleep 3
done
grep -q '"value"' "$WORK/custom-metric.json" || { cat "$WORK/custom-metric.json" >&2; fail "the custom metrics API did not serve rng_lane_wait_seconds within 180 s"; }
log "custom metrics API: rng_lane_wait_seconds per rng pod ($(grep -o '"value":"[^"]*"' "$WORK/custom-metric.json" | head -3 | tr '\n' ' '))"
HPA_AFTER=$HPA_BEFORE
for _ in $(seq 1 60); do
    HPA_AFTER=$(kc get deploy rng -o jsonpath='{.status.readyReplicas}')
    [ "${HPA_AFTER:-0}" -gt "${HPA_BEFORE:-1}" ] && break
    sleep 5
done
[ "${HPA_AFTER:-0}" -gt "${HPA_BEFORE:-1}" ] || fail "the HPA did not grow rng from $HPA_BEFORE replica(s) within 300 s: $(kc get hpa rng --no-headers)"
log "HPA: rng $HPA_BEFORE -> $HPA_AFTER ready replicas $((SECONDS - t0)) s after ten workers queued ($(kc get hpa rng --no-headers | awk '{print $3}'))"
wait_rollouts 180
sleep 10
RATE_HPA=$(rate 15)
log "after the HPA: 10 workers $RATE_HPA hashes/s"
awk -v a="$RATE_HPA" -v b="$RATE10" 'BEGIN { exit !(a > b * 1.5) }' || fail "the rate after the HPA ($RATE_HPA) should be well above one rng's ($RATE10)"

# A rolling restart of rng and hasher loses no unit of work (the HPA still
# at work on rng): with ten fresh
# workers, what Redis counted equals what they say they did once stopped.
log "rolling restart of rng and hasher under ten workers"
kc scale deployment worker --replicas 0 >/dev/null
kc wait --for=delete pod -l app.kubernetes.io/name=worker --timeout=60s >/dev/null 2>&1 || true
H0=$(redis_hashes)
kc scale deployment worker --replicas 10 >/dev/null
wait_rollouts 180
kc logs -f --prefix --max-log-requests 20 -l app.kubernetes.io/name=worker >"$WORK/workers.log" 2>&1 &
LOGS_PID=$!
sleep 5
kc rollout restart deployment/rng deployment/hasher >/dev/null
kc rollout status deployment/rng --timeout=180s >/dev/null || fail "rng's rolling restart did not finish within 180 s"
kc rollout status deployment/hasher --timeout=180s >/dev/null || fail "hasher's rolling restart did not finish within 180 s"
sleep 5
kc scale deployment worker --replicas 0 >/dev/null
kc wait --for=delete pod -l app.kubernetes.io/name=worker --timeout=90s >/dev/null ||
    fail "the workers did not stop within 90 s of being scaled to 0"
for _ in $(seq 1 50); do kill -0 "$LOGS_PID" 2>/dev/null || break; sleep 0.2; done
stop_pid "$LOGS_PID" 2
H1=$(redis_hashes)
STOPPED=$(grep -c "worker stopped" "$WORK/workers.log" || true)
DONE=$(grep "worker stopped" "$WORK/workers.log" | grep -o 'hashes_done=[0-9]*' | awk -F= '{ n += $2 } END { print n + 0 }')
[ "$STOPPED" = 10 ] || { tail -20 "$WORK/workers.log" >&2; fail "10 workers should each log their last line, $STOPPED did"; }
LOST=$((DONE - (H1 - H0)))
log "rolling restart: the workers did $DONE hashes, Redis counted $((H1 - H0)) ($((H1 - H0)) of them after $H0): $LOST lost"
[ "$LOST" = 0 ] || fail "a rolling restart lost or doubled $LOST units of work"

# kubectl delete -k leaves nothing of the stack behind.
for pid in "${PORT_FORWARDS[@]}"; do stop_pid "$pid" 5; done
PORT_FORWARDS=()
log "kubectl delete -k deploy/k8s/autoscale-rng"
kubectl delete -k deploy/k8s/autoscale-rng --wait=true --timeout=180s >"$WORK/delete.log" 2>&1 ||
    { cat "$WORK/delete.log" >&2; fail "kubectl delete -k failed"; }
LEFT=$( (kubectl get -k deploy/k8s/autoscale-rng --ignore-not-found -o name; kubectl get -k deploy/k8s --ignore-not-found -o name) 2>&1 | sort -u)
[ -z "$LEFT" ] || fail "left after delete -k: $(tr '\n' ' ' <<<"$LEFT")"
kubectl get ns dockercoins >/dev/null 2>&1 && fail "the dockercoins namespace is still there after delete -k"
log "delete -k: nothing of deploy/k8s or autoscale-rng left (namespace, APIService, cluster roles)"

SUMMARY="node Ready ${NODE_READY_S}s, Jaeger after the Collector ${JAEGER_AFTER_S}s, 1 worker ${RATE1}/s, 10 workers ${RATE10}/s (lane wait: Prometheus ${PROM_WAIT10} s, traces p50 ${WAIT10} ms), 3 rng ${RATE3}/s (${RATIO}x), DaemonSet ${RATE_DS}/s, HPA rng ${HPA_BEFORE}->${HPA_AFTER} then ${RATE_HPA}/s, rolling restart lost ${LOST},"
