# The fault-injection run and the soak (gateway/chaos, a nested module, so
# that toxiproxy never enters the main go.mod): their short forms run with
# the other nested modules (about 2 min and 70 s); `make chaos` and
# `make soak` run the long forms. They start their own local-kms, Vault and
# Cloud KMS fake processes from the binaries built above (the fake is built
# from the module). Their figure tables are printed at the end of the run.
add_module gateway/chaos
add_cleanup 'cat "$KMSGATE_TEST_WORK"/figures-chaos.txt "$KMSGATE_TEST_WORK"/figures-soak.txt 2>/dev/null >&2'
