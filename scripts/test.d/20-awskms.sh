# local-kms (github.com/nsmithuk/local-kms, an implementation of the AWS KMS
# API) for the awskms backend's tests. It is built from the nested module
# backends/awskms/localkms, so it never enters the main go.mod; the command
# there listens on 127.0.0.1 only, on a free port, and writes its base URL to
# a file. Its tests run as a nested module.
LOCALKMS_DIR=$KMSGATE_TEST_WORK/localkms
mkdir -p "$LOCALKMS_DIR/data"
(cd "$ROOT/backends/awskms/localkms" && go build -o "$LOCALKMS_DIR/localkms" .)
"$LOCALKMS_DIR/localkms" -addr-file "$LOCALKMS_DIR/addr" -data "$LOCALKMS_DIR/data" 2> "$LOCALKMS_DIR/log" &
LOCALKMS_PID=$!
add_cleanup "kill $LOCALKMS_PID"
wait_for_file "$LOCALKMS_DIR/addr" || { cat "$LOCALKMS_DIR/log" >&2; return 1; }
KMSGATE_TEST_LOCALKMS=$(cat "$LOCALKMS_DIR/addr")
export KMSGATE_TEST_LOCALKMS
# The binary itself, for tests that run a local-kms of their own (gateway/chaos).
export KMSGATE_TEST_LOCALKMS_BIN=$LOCALKMS_DIR/localkms
add_module backends/awskms/localkms
