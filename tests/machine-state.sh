# Sourced by tests/compose-e2e.sh and tests/k8s-e2e.sh: the state of this
# machine that a private dockerd, a Swarm or a k3s changes (iptables, v4 and
# v6, every table; the sysctls they set; the mounts and their propagation;
# the network links), noted before a run, put back after it, and compared.
#
#   machine_note DIR        notes the state in DIR (before anything starts)
#   machine_restore DIR     puts iptables, the sysctls and the mounts'
#                           propagation back as noted (call once every
#                           engine, k3s and shim this run started is gone)
#   machine_compare DIR     0 when the state is as noted; else prints the
#                           differences and returns 1

# The sysctls dockerd, k3s, kubelet and kube-proxy set.
MACHINE_SYSCTLS=(net.ipv4.ip_forward net.ipv6.conf.all.forwarding net.ipv4.conf.all.route_localnet
    net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
    net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
    net.netfilter.nf_conntrack_tcp_timeout_close_wait vm.overcommit_memory vm.panic_on_oom
    kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes
    fs.inotify.max_user_instances fs.inotify.max_user_watches)

machine_sysctls() {
    local name
    for name in "${MACHINE_SYSCTLS[@]}"; do
        printf '%s=%s\n' "$name" "$(sysctl -n "$name" 2>/dev/null || echo absent)"
    done
}
# The rules without their counters, so two reads of unchanged tables agree.
machine_rules() {
    local save
    for save in iptables-save ip6tables-save; do
        command -v "$save" >/dev/null || continue
        echo "# $save"
        "$save" 2>/dev/null | sed -e 's/\[[0-9]*:[0-9]*\]//' -e '/^#/d'
    done
}
# Each mount point and its propagation (shared, master or private).
machine_mounts() {
    awk '{ tag = "private"
           for (i = 7; $i != "-"; i++) if ($i ~ /^(shared|master):/) tag = $i
           sub(/:[0-9]+$/, "", tag); print $5, tag }' /proc/self/mountinfo | sort -u
}
machine_links() { ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | sort; }
machine_state() {
    echo "## sysctls"
    machine_sysctls
    echo "## rules"
    machine_rules
    echo "## mounts"
    machine_mounts
    echo "## links"
    machine_links
}

machine_note() {
    machine_state >"$1/machine.before"
    if command -v iptables-save >/dev/null; then
        iptables-save >"$1/iptables.before" 2>/dev/null || true
        ip6tables-save >"$1/ip6tables.before" 2>/dev/null || true
    fi
}

machine_restore() {
    local dir=$1 line target tag
    # Whole tables back as they were: what an engine or kube-proxy adds is
    # spread over many chains, and a rule left behind forwards or drops
    # traffic long after the test.
    [ -s "$dir/iptables.before" ] && iptables-restore <"$dir/iptables.before"
    [ -s "$dir/ip6tables.before" ] && ip6tables-restore <"$dir/ip6tables.before"
    # A table made since (kube-proxy's first ip6tables rule makes `nat` for
    # IPv6) is not in the notes to restore: with iptables' nf_tables
    # backend, it goes as a whole.
    local family save table
    for family in ip:iptables ip6:ip6tables; do
        save=${family#*:}-save
        command -v "$save" >/dev/null && command -v nft >/dev/null || continue
        for table in $("$save" 2>/dev/null | sed -n 's/^\*//p'); do
            grep -qx "\*$table" "$dir/${family#*:}.before" 2>/dev/null ||
                nft delete table "${family%%:*}" "$table" 2>/dev/null || true
        done
    done
    sed -n '/^## sysctls$/,/^## /p' "$dir/machine.before" | grep -v '^## ' | while IFS= read -r line; do
        [ "${line#*=}" = absent ] || sysctl -qw "$line" 2>/dev/null || true
    done
    # `mount --make-rshared /` changes every mount's propagation: each gets
    # its own back. A path reaches only the top of mounts stacked on one
    # target (/dev/pts, /dev/shm here), so first the whole tree goes private
    # (what it was here, usually), then the shared and slave ones are made
    # so again.
    mount --make-rprivate / 2>/dev/null
    sed -n '/^## mounts$/,/^## /p' "$dir/machine.before" | grep -v '^## ' | while read -r target tag; do
        case "$tag" in
            shared) mount --make-shared "$target" 2>/dev/null ;;
            master) mount --make-slave "$target" 2>/dev/null ;;
            *) ;;
        esac
    done
    return 0
}

machine_compare() {
    machine_state >"$1/machine.after"
    diff -u "$1/machine.before" "$1/machine.after" >"$1/machine.diff" && return 0
    cat "$1/machine.diff" >&2
    return 1
}
