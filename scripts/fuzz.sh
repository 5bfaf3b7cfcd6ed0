#!/usr/bin/env bash
# Runs every Go fuzz target of the repository (func FuzzXxx(f *testing.F) in
# any module) for FUZZTIME each (default 1m; `make test` passes 5s), one
# after the other, and prints a summary: executions and new corpus entries
# per target. Targets are found, not listed: each package whose tests
# define one is compiled once with fuzzing instrumentation (go test -c
# -fuzz) and asked for its targets (-test.list '^Fuzz'). The corpus grows
# in the Go build cache ($(go env GOCACHE)/fuzz, as `go test -fuzz` keeps
# it). A failing input is written to the package's testdata/fuzz/FuzzXxx/,
# where it stays a regression test once committed; the script then fails.
# Fuzzing instrumentation recompiles every dependency (the standard library
# and the cloud SDKs included) the first time: about 3 minutes on 2 cores.
# FUZZ_GUIDED=0 skips it: the targets then run on plain test binaries, whose
# mutations are not guided by coverage.
# Usage: FUZZTIME=10m scripts/fuzz.sh [package directory ...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZTIME=${FUZZTIME:-1m}
instrument=(-fuzz=.)
guided="coverage-guided"
if [ "${FUZZ_GUIDED:-1}" = 0 ]; then instrument=(); guided="not coverage-guided (FUZZ_GUIDED=0)"; fi
W=$(mktemp -d "${TMPDIR:-/tmp}/kmsgate-fuzz.XXXXXX")
trap 'rm -rf "$W"' EXIT
CACHE=$(go env GOCACHE)/fuzz

if [ $# -gt 0 ]; then
  dirs=("$@")
else
  mapfile -t dirs < <(grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . |
    grep -v '/testdata/' | xargs -n1 dirname | sort -u)
fi
[ ${#dirs[@]} -gt 0 ] || { echo "fuzz: no fuzz targets found" >&2; exit 1; }

# fuzz_one runs one target from its package directory, as go test runs
# it, so that testdata/fuzz is read and a failing input written there.
fuzz_one() {
  local dir=$1 bin=$2 pkg=$3 target=$4 log=$5
  (cd "$ROOT/$dir" && "$bin" -test.run='^$' -test.fuzz="^$target\$" -test.fuzztime="$FUZZTIME" \
    -test.fuzzcachedir="$CACHE/$pkg" -test.timeout=0 -test.paniconexit0) >"$log" 2>&1
}

start=$SECONDS
compile=0
results=()
failed=0
n=0
for d in "${dirs[@]}"; do
  d=${d#./}
  bin="$W/$n.test"
  n=$((n + 1))
  echo "== fuzz: compiling $d" >&2
  c0=$SECONDS
  pkg=$(cd "$ROOT/$d" && go list .)
  (cd "$ROOT/$d" && go test -c "${instrument[@]}" -o "$bin" .)
  mapfile -t targets < <(cd "$ROOT/$d" && "$bin" -test.list '^Fuzz' | grep '^Fuzz' || true)
  compile=$((compile + SECONDS - c0))
  for t in "${targets[@]}"; do
    echo "== fuzz: $pkg $t for $FUZZTIME" >&2
    log="$W/$n-$t.log"
    t0=$SECONDS
    status=ok
    if ! fuzz_one "$d" "$bin" "$pkg" "$t" "$log"; then
      if grep -q 'Failing input written to' "$log" || ! grep -qx '[[:space:]]*context deadline exceeded' "$log"; then
        status=FAIL
      else
        # A bare "context deadline exceeded" with no failing input is how
        # Go 1.26's fuzz coordinator can end a run on time under load
        # (go.dev/issue/75804), or how it ends one whose crasher it was
        # still minimizing: a second run tells them apart.
        echo "fuzz: $t ended with a bare 'context deadline exceeded'; running it again" >&2
        cp "$log" "$log.first"
        if fuzz_one "$d" "$bin" "$pkg" "$t" "$log"; then status=ok-2; else status=FAIL; fi
      fi
      if [ "$status" = FAIL ]; then
        failed=$((failed + 1))
        cat "$log" >&2
      fi
    fi
    # The last progress line holds the totals: "execs: N (R/sec), new interesting: M (total: T)".
    last=$(grep -E 'execs: [0-9]+' "$log" | tail -1 || true)
    execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
    if [ -z "$execs" ]; then
      # The time went on replaying the corpus (baseline coverage).
      execs=$(grep -oE 'baseline coverage: [0-9]+/[0-9]+' "$log" | tail -1 | sed 's/baseline coverage: /baseline /' || true)
    fi
    newc=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
    results+=("$(printf '%-4s %-44s %-24s %12s %6s %5ss' "$status" "${pkg#github.com/kmsgate/kmsgate/}" "$t" "${execs:-?}" "${newc:-?}" $((SECONDS - t0)))")
  done
done

echo "== fuzz summary (FUZZTIME=$FUZZTIME per target, $guided, $((SECONDS - start))s in all with ${compile}s compiling; ok-2: passed on a second run, see above)"
printf '%-4s %-44s %-24s %12s %6s %6s\n' "" package target execs new time
printf '%s\n' "${results[@]}"
if [ "$failed" -gt 0 ]; then
  echo "fuzz: $failed target(s) failed; the failing inputs are in testdata/fuzz/ of their packages (see above)" >&2
  exit 1
fi
