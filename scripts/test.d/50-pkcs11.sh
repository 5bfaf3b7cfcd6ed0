# SoftHSM2 and pkcs11-tool (Debian softhsm2 and opensc) for the PKCS#11
# backend (backends/pkcs11, compiled only with cgo and the build tag
# pkcs11). A token is initialised in the test work directory (SOFTHSM2_CONF
# points SoftHSM there, never at the machine's own tokens), its user PIN is
# written to a file, and one P-256 key is generated with pkcs11-tool the way
# the README does. The tests create and delete further keys with pkcs11-tool
# themselves. They run with the tag, as an extra step after the main
# module's tests (the main run builds without the tag and tests the
# "built without PKCS#11 support" answer instead).
need_pkg softhsm2 opensc
PKCS11_DIR=$KMSGATE_TEST_WORK/softhsm
mkdir -p "$PKCS11_DIR/tokens"
cat > "$PKCS11_DIR/softhsm2.conf" <<CONF
directories.tokendir = $PKCS11_DIR/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF=$PKCS11_DIR/softhsm2.conf
export KMSGATE_TEST_PKCS11_MODULE=/usr/lib/softhsm/libsofthsm2.so
export KMSGATE_TEST_PKCS11_TOKEN=kmsgate-test
export KMSGATE_TEST_PKCS11_KEY=kmsgate-test-key
export KMSGATE_TEST_PKCS11_TOOL=$(command -v pkcs11-tool || echo /usr/bin/pkcs11-tool)
export KMSGATE_TEST_PKCS11_PIN_FILE=$PKCS11_DIR/pin
(umask 077 && od -An -N8 -tx1 /dev/urandom | tr -d ' \n' > "$KMSGATE_TEST_PKCS11_PIN_FILE")
softhsm2-util --init-token --free --label "$KMSGATE_TEST_PKCS11_TOKEN" \
  --so-pin "$(od -An -N4 -tu4 /dev/urandom | tr -d ' \n')" --pin "$(cat "$KMSGATE_TEST_PKCS11_PIN_FILE")" >/dev/null
"$KMSGATE_TEST_PKCS11_TOOL" --module "$KMSGATE_TEST_PKCS11_MODULE" --token-label "$KMSGATE_TEST_PKCS11_TOKEN" \
  --login --pin "$(cat "$KMSGATE_TEST_PKCS11_PIN_FILE")" \
  --keypairgen --key-type EC:prime256v1 --label "$KMSGATE_TEST_PKCS11_KEY" --id 01 >/dev/null
echo "SoftHSM token $KMSGATE_TEST_PKCS11_TOKEN in $PKCS11_DIR with key $KMSGATE_TEST_PKCS11_KEY" >&2
add_test "go vet -tags pkcs11 ./backends/pkcs11/ ./cmd/kmsgate/ && go test -race -count=1 -timeout 20m -tags pkcs11 ./backends/pkcs11/"
