#!/usr/bin/env bash
# Benchmark of the PKCS#11 backend against SoftHSM2 (the token and key that
# scripts/test.d/50-pkcs11.sh makes), from the Go benchmarks in
# backends/pkcs11/bench_test.go, run ROUNDS times interleaved (all
# benchmarks once per round) so that the machine's noise falls on each
# alike; medians are reported. Figures:
#   - gateway overhead per signature over a direct C_SignInit + C_Sign
#     through the same library on the same token: Keyring.SignJWT minus the
#     direct sign minus one P-256 verify (target: at most 25 µs), in wall
#     time and in process CPU time;
#   - 64 concurrent signers through the keyring against one signer (target:
#     at least 1.5x), beside the same ratio for direct C_Sign with 64
#     sessions, which is what the machine allows. "cores used" (CPU time
#     over wall time) shows how much of the machine the run got: on a
#     shared machine far below 2, the wall-time ratios say little and the
#     CPU time per operation is the steadier figure.
# Usage: scripts/bench-pkcs11.sh [rounds, default 5] [benchtime, default 1s]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${1:-5}
BENCHTIME=${2:-1s}
source scripts/lib.sh
export KMSGATE_TEST_WORK=$(mktemp -d "${TMPDIR:-/tmp}/kmsgate-bench-pkcs11.XXXXXX")
trap 'run_cleanups; rm -rf "$KMSGATE_TEST_WORK"' EXIT
add_test() { :; }
add_module() { :; }
source scripts/test.d/50-pkcs11.sh
BIN=$KMSGATE_TEST_WORK/pkcs11.test
go test -c -tags pkcs11 -o "$BIN" ./backends/pkcs11
OUT=$KMSGATE_TEST_WORK/bench.txt
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r of $ROUNDS" >&2
  "$BIN" -test.run '^$' -test.bench . -test.benchtime "$BENCHTIME" | grep '^Benchmark' | tee -a "$OUT" >&2
done
python3 - "$OUT" "$(nproc)" "$ROUNDS" <<'PY'
import re, statistics, sys
wall, cpu = {}, {}
for line in open(sys.argv[1]):
    f = line.split()
    name = re.sub(r'-\d+$', '', f[0])[len('Benchmark'):]
    for i in range(2, len(f) - 1):
        if f[i + 1] == 'ns/op':
            wall.setdefault(name, []).append(float(f[i]))
        if f[i + 1] == 'cpu-ns/op':
            cpu.setdefault(name, []).append(float(f[i]))
w = {k: statistics.median(v) / 1000 for k, v in wall.items()}
c = {k: statistics.median(v) / 1000 for k, v in cpu.items()}
print(f"\nPKCS#11 (SoftHSM2) signing, {sys.argv[2]} cores, median of {sys.argv[3]} interleaved rounds")
print(f"{'benchmark':34} {'wall µs/op':>11} {'CPU µs/op':>10} {'cores used':>11}")
for k in w:
    print(f"{k:34} {w[k]:11.1f} {c.get(k, 0):10.1f} {c.get(k, 0) / w[k]:11.2f}")
ow = w['KeyringSignJWT'] - w['DirectCSign'] - w['P256Verify']
oc = c['KeyringSignJWT'] - c['DirectCSign'] - c['P256Verify']
ob = w['BackendSign'] - w['DirectCSign']
print(f"overhead  SignJWT - C_Sign - verify  : {ow:.1f} µs wall, {oc:.1f} µs CPU   (target <= 25 µs)")
print(f"overhead  Backend.Sign - C_Sign      : {ob:.1f} µs wall")
print(f"parallel  keyring 64 / 1 signer      : {w['KeyringSignJWT'] / w['KeyringSignJWTParallel64']:.2f}x   (target >= 1.5x)")
print(f"parallel  Backend.Sign 64 / 1        : {w['BackendSign'] / w['BackendSignParallel64']:.2f}x")
print(f"parallel  direct C_Sign 64 / 1       : {w['DirectCSign'] / w['DirectCSignParallel64']:.2f}x   (the machine's ceiling)")
PY
