# Vault v1.4.0 test server for the Vault Transit backend (backends/vault).
# backends/vault/testvault is its own Go module (Vault never enters the main
# go.mod); it is built here (the Go build cache makes later builds a link
# only), vetted, and started on a free 127.0.0.1 port with a fixed root token
# and an in-memory storage. Tests that stop and restart a Vault start their
# own instance of the same binary ($KMSGATE_TEST_VAULT_BIN).
echo "building the Vault test server (backends/vault/testvault)" >&2
(cd "$ROOT/backends/vault/testvault" && go build -o "$KMSGATE_TEST_WORK/testvault" . && go vet ./...)
export KMSGATE_TEST_VAULT_BIN=$KMSGATE_TEST_WORK/testvault
export VAULT_TOKEN=kmsgate-test-root
"$KMSGATE_TEST_VAULT_BIN" -listen 127.0.0.1:0 -root-token "$VAULT_TOKEN" \
  -addr-file "$KMSGATE_TEST_WORK/vault.addr" >"$KMSGATE_TEST_WORK/vault.log" 2>&1 &
VAULT_TEST_PID=$!
add_cleanup "kill $VAULT_TEST_PID"
if ! wait_for_file "$KMSGATE_TEST_WORK/vault.addr"; then
  cat "$KMSGATE_TEST_WORK/vault.log" >&2
  exit 1
fi
export VAULT_ADDR=$(cat "$KMSGATE_TEST_WORK/vault.addr")
# The tests talk to this Vault only; nothing from the caller's Vault
# environment may leak in.
unset VAULT_NAMESPACE VAULT_CACERT VAULT_CAPATH VAULT_CLIENT_CERT VAULT_CLIENT_KEY VAULT_AGENT_ADDR VAULT_WRAP_TTL
unset KMSGATE_VAULT_AUTH KMSGATE_VAULT_AUTH_MOUNT KMSGATE_VAULT_ROLE
echo "Vault test server at $VAULT_ADDR (pid $VAULT_TEST_PID)" >&2
