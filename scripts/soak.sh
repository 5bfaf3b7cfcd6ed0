#!/usr/bin/env bash
# The soak (gateway/chaos TestSoak), long form: kmsgate with a local PEM key
# under a steady mixed load (proxied requests for 100,000 distinct users in
# turn, sign API, JWKS) for a while, its RSS, live heap and goroutines
# sampled every 10 s and printed as a table; fails when memory or
# goroutines do not plateau.
# Usage: scripts/soak.sh [duration, default 10m]
#   KMSGATE_SOAK_RATE=400 (requests/s in all)  KMSGATE_SOAK_SAMPLE=10s
set -euo pipefail
cd "$(dirname "$0")/../gateway/chaos"
export KMSGATE_SOAK=${1:-10m}
exec go test -count=1 -v -timeout 2h -run '^TestSoak$' .
