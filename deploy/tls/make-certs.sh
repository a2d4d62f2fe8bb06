#!/usr/bin/env bash
# Makes the certificates for TLS and mutual TLS between the dockercoins
# services (docker-compose.tls.yaml, or `dockercoins rng --tls-cert ...` by
# hand), with openssl, into this directory or the one given:
#
#   deploy/tls/make-certs.sh [DIR]
#
#   ca.crt                 a private CA, made for this run (its key is thrown
#                          away once the certificates below are signed: run
#                          the script again for a new set)
#   rng.crt, rng.key       rng's certificate: names rng, localhost, 127.0.0.1
#   hasher.crt, hasher.key hasher's: names hasher, localhost, 127.0.0.1
#   client.crt, client.key the client certificate that worker, webui and the
#                          healthchecks present (mutual TLS)
#
# localhost and 127.0.0.1 are there for the healthchecks (which probe their
# own container) and for clients on the host through edge's ports 8001/8002.
# Keys are P-256, unencrypted PKCS#8; certificates last DAYS days (365).
#
# Keys are secrets: git ignores this directory's *.key, *.crt and *.pem, and
# .dockerignore keeps the whole directory out of image builds; compose mounts
# it read-only at run time. The containers run as uid 65532: as root this
# script gives the keys to that uid (mode 0400); otherwise the keys are left
# readable by all (0644) so the containers can read them, and it says so.
set -euo pipefail

dir="${1:-$(cd "$(dirname "$0")" && pwd)}"
days="${DAYS:-365}"
mkdir -p "$dir"
command -v openssl >/dev/null || { echo "openssl is needed (apt-get install openssl)" >&2; exit 1; }

umask 077
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat >"$work/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
CN = dockercoins demo CA
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF

# openssl, quiet: its messages only when it fails.
ossl() {
    if ! openssl "$@" 2>"$work/stderr"; then
        cat "$work/stderr" >&2
        echo "make-certs.sh: openssl $1 failed" >&2
        exit 1
    fi
}

newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)

ossl req -x509 -new "${newkey[@]}" -config "$work/openssl.cnf" \
    -keyout "$work/ca.key" -out "$dir/ca.crt" -days "$days"

# leaf NAME CN USAGE SANS: NAME.key and NAME.crt, signed by the CA.
leaf() {
    local name="$1" cn="$2" usage="$3" sans="$4"
    ossl req -new "${newkey[@]}" -config "$work/openssl.cnf" -subj "/CN=$cn" \
        -keyout "$dir/$name.key" -out "$work/$name.csr"
    cat >"$work/$name.ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = $usage
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
${sans:+subjectAltName = $sans}
EXT
    ossl x509 -req -in "$work/$name.csr" -CA "$dir/ca.crt" -CAkey "$work/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" \
        -extfile "$work/$name.ext" -out "$dir/$name.crt"
}

leaf rng rng serverAuth "DNS:rng, DNS:localhost, IP:127.0.0.1"
leaf hasher hasher serverAuth "DNS:hasher, DNS:localhost, IP:127.0.0.1"
leaf client dockercoins-client clientAuth ""

chmod 0644 "$dir"/ca.crt "$dir"/rng.crt "$dir"/hasher.crt "$dir"/client.crt
keys=("$dir"/rng.key "$dir"/hasher.key "$dir"/client.key)
if [ "$(id -u)" = 0 ]; then
    chown 65532:65532 "${keys[@]}"
    chmod 0400 "${keys[@]}"
else
    chmod 0644 "${keys[@]}"
    echo "note: the keys are readable by all users of this machine, so that the containers (uid 65532) can read them" >&2
fi
for cert in rng hasher client; do
    ossl verify -CAfile "$dir/ca.crt" "$dir/$cert.crt" >/dev/null
done
echo "made ca.crt, rng.crt/.key, hasher.crt/.key, client.crt/.key in $dir (valid $days days)"
