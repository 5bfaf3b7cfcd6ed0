#!/usr/bin/env bash
# The fault-injection run (gateway/chaos TestChaos), long form: kmsgate,
# built with the race detector, under a steady load of JWKS, sign API and
# proxied requests while each remote backend (local-kms, a Vault test
# server, the Cloud KMS fake) is taken away behind toxiproxy: latency
# spikes, resets, a black hole, SIGSTOP, kill and restart. Prints the figure
# table. The test servers are built from their nested modules (the first
# Vault build takes a few minutes; later ones come from the build cache).
# Usage: scripts/chaos.sh [seconds per fault, default 8s]
#   KMSGATE_CHAOS_BACKENDS=awskms,vault,gcpkms  KMSGATE_CHAOS_RATE=20 (per kind)
set -euo pipefail
cd "$(dirname "$0")/../gateway/chaos"
export KMSGATE_CHAOS_FAULT=${1:-8s}
exec go test -race -count=1 -v -timeout 30m -run '^TestChaos$' .
