# The test OpenID Provider for browser sign-in (the oidc-login identity
# source): gateway/signin/testop, its own Go module built on
# github.com/zitadel/oidc/v3/pkg/op (never in the main go.mod). It is built
# here, started on a free 127.0.0.1 port (users alice/alice-pw and
# bob/bob-pw, client kmsgate/kmsgate-test-secret) and its issuer URL is
# exported as KMSGATE_TEST_OP. Tests that need a provider of their own (short
# token lifetimes, failure knobs, -control) start $KMSGATE_TEST_OP_BIN.
echo "building the test OpenID provider (gateway/signin/testop)" >&2
(cd "$ROOT/gateway/signin/testop" && go build -o "$KMSGATE_TEST_WORK/testop" .)
export KMSGATE_TEST_OP_BIN=$KMSGATE_TEST_WORK/testop
"$KMSGATE_TEST_OP_BIN" -listen 127.0.0.1:0 -addr-file "$KMSGATE_TEST_WORK/testop.addr" \
  >"$KMSGATE_TEST_WORK/testop.log" 2>&1 &
TESTOP_PID=$!
add_cleanup "kill $TESTOP_PID"
if ! wait_for_file "$KMSGATE_TEST_WORK/testop.addr"; then
  cat "$KMSGATE_TEST_WORK/testop.log" >&2
  exit 1
fi
export KMSGATE_TEST_OP=$(cat "$KMSGATE_TEST_WORK/testop.addr")
echo "test OpenID provider at $KMSGATE_TEST_OP (pid $TESTOP_PID)" >&2
add_module gateway/signin/testop
