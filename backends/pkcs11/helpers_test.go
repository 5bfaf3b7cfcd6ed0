//go:build pkcs11 && cgo

package pkcs11_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/backends/pkcs11"
)

// The variables scripts/test.d/50-pkcs11.sh sets (besides SOFTHSM2_CONF).
const (
	moduleEnv  = "KMSGATE_TEST_PKCS11_MODULE"   // the SoftHSM library
	tokenEnv   = "KMSGATE_TEST_PKCS11_TOKEN"    // the initialised token's label
	keyEnv     = "KMSGATE_TEST_PKCS11_KEY"      // label of the P-256 key made by the script (id 01)
	pinFileEnv = "KMSGATE_TEST_PKCS11_PIN_FILE" // file holding the user PIN
	toolEnv    = "KMSGATE_TEST_PKCS11_TOOL"     // pkcs11-tool
)

func TestMain(m *testing.M) {
	// The end-to-end tests run a kmsgate built with the PKCS#11 backend.
	backendtest.BuildTags = []string{"pkcs11"}
	os.Exit(m.Run())
}

// hsm is the SoftHSM token of the test run.
type hsm struct {
	module, token, key, pinFile, pin, tool string
}

// newHSM returns the test token; the test fails (in make test) or is
// skipped (elsewhere) when scripts/test.d/50-pkcs11.sh has not set it up.
func newHSM(t testing.TB) *hsm {
	t.Helper()
	h := &hsm{
		module:  backendtest.Require(t, moduleEnv),
		token:   backendtest.Require(t, tokenEnv),
		key:     backendtest.Require(t, keyEnv),
		pinFile: backendtest.Require(t, pinFileEnv),
		tool:    backendtest.Require(t, toolEnv),
	}
	backendtest.Require(t, "SOFTHSM2_CONF")
	pin, err := os.ReadFile(h.pinFile)
	if err != nil {
		t.Fatal(err)
	}
	h.pin = strings.TrimSpace(string(pin))
	return h
}

// uri returns the key URI of object (path attributes after it may follow,
// as ";id=01") with the test module and PIN file, and extra query
// attributes.
func (h *hsm) uri(object string, extra ...string) string {
	q := append([]string{"module-path=" + h.module, "pin-source=file:" + h.pinFile}, extra...)
	return "pkcs11:token=" + url.PathEscape(h.token) + ";object=" + object + "?" + strings.Join(q, "&")
}

// run runs pkcs11-tool on the test token, logged in, and returns its output.
func (h *hsm) run(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	full := append([]string{"--module", h.module, "--token-label", h.token, "--login", "--pin", h.pin}, args...)
	out, err := exec.CommandContext(ctx, h.tool, full...).CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// genKey generates a key pair (keyType as pkcs11-tool takes it, e.g.
// EC:prime256v1 or rsa:2048) labelled label with CKA_ID id (hex).
func (h *hsm) genKey(t testing.TB, keyType, label, id string, more ...string) {
	t.Helper()
	h.run(t, append([]string{"--keypairgen", "--key-type", keyType, "--label", label, "--id", id}, more...)...)
}

// setID changes the CKA_ID of both objects of a key pair.
func (h *hsm) setID(t testing.TB, label, id, newID string) {
	t.Helper()
	for _, typ := range []string{"privkey", "pubkey"} {
		h.run(t, "--set-id", newID, "--id", id, "--label", label, "--type", typ)
	}
}

// deleteKey deletes both objects of a key pair.
func (h *hsm) deleteKey(t testing.TB, label, id string) {
	t.Helper()
	for _, typ := range []string{"privkey", "pubkey"} {
		h.run(t, "--delete-object", "--type", typ, "--id", id, "--label", label)
	}
}

var labelSeq atomic.Int64

// label returns a label no other test uses.
func label(t testing.TB) string {
	name := regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(t.Name(), "-")
	return fmt.Sprintf("%s-%d-%d", name, time.Now().UnixNano()%1e9, labelSeq.Add(1))
}

// open opens uri with the backends registry (as a test: pin-value allowed)
// and closes it when the test ends.
func open(t testing.TB, uri string) *pkcs11.Backend {
	t.Helper()
	b, err := backends.Open(context.Background(), uri, backends.Options{Dev: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b.(*pkcs11.Backend)
}

// ctx returns a context that ends after 30 s.
func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}
