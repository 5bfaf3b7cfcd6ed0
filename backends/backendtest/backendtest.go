// Package backendtest holds helpers for tests of the backends and the
// gateway: finding the test servers scripts/test.sh starts, and checking
// tokens with an independent JWT library.
package backendtest

import (
	"os"
	"testing"
)

// Require returns the value of the environment variable that points a test at
// a test server (VAULT_ADDR, …). When it is unset the test is skipped, unless
// KMSGATE_REQUIRE_SERVERS is set (scripts/test.sh sets it), in which case the
// test fails: in CI a missing server must not pass as a skip.
func Require(t testing.TB, env string) string {
	t.Helper()
	v := os.Getenv(env)
	if v != "" {
		return v
	}
	if os.Getenv("KMSGATE_REQUIRE_SERVERS") != "" {
		t.Fatalf("%s is unset but KMSGATE_REQUIRE_SERVERS is set: the test server was not started", env)
	}
	t.Skipf("%s is unset: run through scripts/test.sh (make test) to start the test server", env)
	return ""
}
