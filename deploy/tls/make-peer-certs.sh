#!/bin/sh
# Certificates for the agents' peer API (`egress-agent run --peer-addr`, read
# by `egress-agent explain --assemble` on another machine), with openssl
# alone, ECDSA P-256: the agents' own CA, and one agent certificate that every
# agent serves and presents as a client (extendedKeyUsage serverAuth and
# clientAuth, DNS name egress-agent-peer, which the client verifies:
# `--peer-server-name`). Not the metrics CA: Prometheus' client certificate
# must not read records.
#
#   deploy/tls/make-peer-certs.sh OUT_DIR [DAYS]
#
# Writes OUT_DIR/{ca.crt,ca.key,peer.crt,peer.key}. Keep ca.key off the
# machines. In the cluster: a Secret with ca.crt, peer.crt and peer.key
# mounted into the agent pods (deploy/README.md); on the VM: the same three
# files under /etc/egress-agent/peer/. The lab (`cargo xtask lab --multinode`)
# runs this script, and the agent's tests use certificates it made
# (egress-agent/src/api/peer/testdata).
set -eu
out=${1:?usage: make-peer-certs.sh OUT_DIR [DAYS]}
days=${2:-825}
mkdir -p "$out"
cd "$out"
umask 077
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=egress-observer peer CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt
key peer.key
openssl req -new -key peer.key -subj "/CN=egress-agent-peer" -out peer.csr
{
  echo "basicConstraints=critical,CA:FALSE"
  echo "keyUsage=critical,digitalSignature"
  echo "extendedKeyUsage=serverAuth,clientAuth"
  echo "subjectAltName=DNS:egress-agent-peer"
} >peer.ext
openssl x509 -req -in peer.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
  -days "$days" -extfile peer.ext -out peer.crt 2>/dev/null
rm -f peer.csr peer.ext ca.srl
chmod 0644 ca.crt peer.crt
echo "wrote $out: ca.crt ca.key peer.crt peer.key (agent name egress-agent-peer)"
