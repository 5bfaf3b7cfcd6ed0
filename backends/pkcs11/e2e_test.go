//go:build pkcs11 && cgo

package pkcs11_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends/backendtest"
)

// waitFor polls cond every 50 ms for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// jwksKIDs returns the kids of a JWKS document, in order.
func jwksKIDs(t *testing.T, doc []byte) []string {
	t.Helper()
	var set struct {
		Keys []struct {
			KID string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range set.Keys {
		kids = append(kids, k.KID)
	}
	return kids
}

// signAndVerify signs through the sign API and verifies the token against
// the served JWKS with two independent libraries; it returns the kid.
func signAndVerify(t *testing.T, g *backendtest.Gateway, sub string) string {
	t.Helper()
	status, out := g.Sign(t, fmt.Sprintf(`{"sub":%q,"aud":"app"}`, sub))
	if status != http.StatusOK {
		t.Fatalf("sign: %d %v\n%s", status, out, g.Logs())
	}
	tok, _ := out["token"].(string)
	doc := g.JWKS(t)
	if claims := backendtest.VerifyIndependently(t, tok, doc); claims["sub"] != sub {
		t.Fatalf("claims %v", claims)
	}
	claims, kid := verifyGoJose(t, tok, doc)
	if claims["sub"] != sub || kid != out["kid"] {
		t.Fatalf("go-jose: claims %v kid %s, answer %v", claims, kid, out)
	}
	return kid
}

// TestServeEndToEnd runs `kmsgate serve --key pkcs11:…` (built with the
// tag) against the SoftHSM token, signs through the sign API and verifies
// every token against the served JWKS with independent libraries, through
// the README's rotation done with pkcs11-tool: add, swap, remove.
func TestServeEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the kmsgate binary")
	}
	h := newHSM(t)
	l := label(t)
	h.genKey(t, "EC:prime256v1", l, "01")
	g := backendtest.StartGateway(t, "", "--key", h.uri(l), "--request-timeout", "5s", "--refresh", "200ms")
	first := signAndVerify(t, g, "alice")
	if kids := jwksKIDs(t, g.JWKS(t)); !slices.Equal(kids, []string{first}) {
		t.Fatalf("JWKS kids %v, want [%s]", kids, first)
	}

	// add: published at the next refresh; the first key keeps signing.
	h.genKey(t, "EC:prime256v1", l, "02")
	waitFor(t, "the new key in the JWKS", func() bool { return len(jwksKIDs(t, g.JWKS(t))) == 2 })
	if kid := signAndVerify(t, g, "bob"); kid != first {
		t.Fatalf("after add: signed by %s, want %s", kid, first)
	}
	second := jwksKIDs(t, g.JWKS(t))[1]

	// swap: the old key moves behind the new one and the new one signs.
	h.setID(t, l, "01", "03")
	var kid string
	waitFor(t, "the new key to sign", func() bool { kid = signAndVerify(t, g, "carol"); return kid == second })
	if kids := jwksKIDs(t, g.JWKS(t)); !slices.Equal(kids, []string{second, first}) {
		t.Fatalf("after swap: JWKS kids %v, want [%s %s]", kids, second, first)
	}

	// remove: the old key leaves the JWKS.
	h.deleteKey(t, l, "03")
	waitFor(t, "the old key to leave the JWKS", func() bool { return len(jwksKIDs(t, g.JWKS(t))) == 1 })
	if kid := signAndVerify(t, g, "dave"); kid != second {
		t.Fatalf("after remove: signed by %s, want %s", kid, second)
	}

	if err := g.Stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, g.Logs())
	}
	if logs := g.Logs(); strings.Contains(logs, h.pin) || strings.Contains(logs, g.Token) {
		t.Fatalf("the PIN or a token reached the logs:\n%s", logs)
	}
}

// serveExit runs `kmsgate serve` with args and returns its output and exit
// code; it fails the test if serve starts serving.
func serveExit(t *testing.T, args ...string) (string, int) {
	t.Helper()
	port := backendtest.FreePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"serve", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--admin-listen", "",
		"--issuer", fmt.Sprintf("http://127.0.0.1:%d", port)}, args...)
	out, err := exec.CommandContext(ctx, backendtest.Binary(t), full...).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("serve %v: %v (want an exit at start)\n%s", args, err, out)
	}
	return string(out), exit.ExitCode()
}

// TestServeRefuses: serve exits at start with an error naming the problem
// for an RSA key, a wrong PIN, and a PIN in the URI without --dev.
func TestServeRefuses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the kmsgate binary")
	}
	h := newHSM(t)
	l := label(t)
	h.genKey(t, "rsa:2048", l, "01")
	out, code := serveExit(t, "--key", h.uri(l))
	if code != 1 || !strings.Contains(out, "key object="+l+";id=01: wrong key type: RSA key, want EC P-256") {
		t.Errorf("RSA key: exit %d\n%s", code, out)
	}

	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte("wrong-pin-53127\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	uri := strings.Replace(h.uri(h.key), "pin-source=file:"+h.pinFile, "pin-source=file:"+pinFile, 1)
	out, code = serveExit(t, "--key", uri)
	if code != 1 || !strings.Contains(out, "the PIN is wrong (CKR_PIN_INCORRECT)") || strings.Contains(out, "wrong-pin-53127") {
		t.Errorf("wrong PIN: exit %d\n%s", code, out)
	}

	withPIN := strings.Replace(h.uri(h.key), "pin-source=file:"+h.pinFile, "pin-value="+h.pin, 1)
	out, code = serveExit(t, "--key", withPIN)
	if code == 0 || !strings.Contains(out, "pin-value puts the PIN in the key URI") || strings.Contains(out, h.pin) {
		t.Errorf("pin-value without --dev: exit %d\n%s", code, out)
	}
}

// TestServeDevPINValue: `serve --dev` accepts a PIN in the URI.
func TestServeDevPINValue(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the kmsgate binary")
	}
	h := newHSM(t)
	withPIN := strings.Replace(h.uri(h.key), "pin-source=file:"+h.pinFile, "pin-value="+h.pin, 1)
	g := backendtest.StartGateway(t, "", "--dev", "--key", withPIN)
	signAndVerify(t, g, "erin")
}
