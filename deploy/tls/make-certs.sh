#!/bin/sh
# Certificates for the agent's metrics port (TLS + client certificates), with
# openssl alone: a CA, the agent's server certificate and Prometheus' client
# certificate, all ECDSA P-256.
#
#   deploy/tls/make-certs.sh OUT_DIR [DAYS] [SAN...]
#
# SANs of the server certificate default to the name the ServiceMonitor and
# PodMonitor verify (tlsConfig.serverName: egress-agent.egress-observer.svc);
# pass more (DNS:… or IP:…) for other clients, e.g. IP:10.128.2.100 for the
# VM. Writes OUT_DIR/{ca.crt,ca.key,tls.crt,tls.key,client.crt,client.key}.
# tests/tests/metrics_exposure.rs runs this script, so what it makes is what
# the agent is tested with. cert-manager can make the same (deploy/README.md).
set -eu
out=${1:?usage: make-certs.sh OUT_DIR [DAYS] [SAN...]}
days=${2:-825}
[ $# -ge 2 ] && shift 2 || shift $#
sans="DNS:egress-agent.egress-observer.svc"
for s in "$@"; do sans="$sans,$s"; done
mkdir -p "$out"
cd "$out"
umask 077
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=egress-observer metrics CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt
leaf() { # name CN extendedKeyUsage [SANs]
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$3"
    [ -n "${4:-}" ] && echo "subjectAltName=$4"
  } >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
    -days "$days" -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
leaf tls egress-agent serverAuth "$sans"
leaf client prometheus clientAuth
rm -f ca.srl
chmod 0644 ca.crt tls.crt client.crt
echo "wrote $out: ca.crt ca.key tls.crt tls.key client.crt client.key (server SANs $sans)"
