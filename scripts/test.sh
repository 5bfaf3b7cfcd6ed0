#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: installs the Debian packages
# the tests need, builds and starts the test servers (each described by one
# file in scripts/test.d/), runs go vet and the race-enabled tests of the main
# module and of every nested test module, then every fuzz target for
# FUZZTIME (default 5s; scripts/fuzz.sh), and stops the servers on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export KMSGATE_TEST_WORK=$(mktemp -d "${TMPDIR:-/tmp}/kmsgate-test.XXXXXX")
# Every test server below is started by this script, so a test that would skip
# for lack of one fails instead (see backends/backendtest.Require).
export KMSGATE_REQUIRE_SERVERS=1

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
cleanup() { run_cleanups; rm -rf "$KMSGATE_TEST_WORK"; }
trap cleanup EXIT

# Nested modules (test servers, deployment checks) whose own tests run too.
NESTED_MODULES=()
add_module() { NESTED_MODULES+=("$1"); }
# Extra test commands (packages behind a build tag), run after the main
# module's tests.
EXTRA_TESTS=()
add_test() { EXTRA_TESTS+=("$1"); }

for f in scripts/test.d/*.sh; do
  [ -e "$f" ] || continue
  echo "== setup: $f" >&2
  # shellcheck source=/dev/null
  source "$f"
done

echo "== gofmt / go vet" >&2
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt would change: $unformatted" >&2; exit 1; fi
go vet ./...

echo "== go test -race ./..." >&2
go test -race -count=1 -timeout 20m ./...

for c in "${EXTRA_TESTS[@]}"; do
  echo "== $c" >&2
  eval "$c"
done

for m in "${NESTED_MODULES[@]}"; do
  echo "== go test -race in $m" >&2
  (cd "$ROOT/$m" && go vet ./... && go test -race -count=1 -timeout 20m ./...)
done

# A short run of every fuzz target (make fuzz runs them longer).
echo "== fuzz targets, ${FUZZTIME:-5s} each" >&2
FUZZTIME=${FUZZTIME:-5s} ./scripts/fuzz.sh
