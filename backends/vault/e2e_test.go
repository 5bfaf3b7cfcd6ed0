package vault_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/jwks"
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

// kidsByVersion returns the thumbprint kid of each version Vault lists.
func kidsByVersion(t *testing.T, e *env, name string) map[int]string {
	t.Helper()
	out := map[int]string{}
	for n, v := range e.keyVersions("transit", name) {
		kid, err := jwks.KID(v.pub, jwks.KIDThumbprint)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = kid
	}
	return out
}

func sortedKIDs(t *testing.T, doc []byte) []string {
	k := jwksKIDs(t, doc)
	slices.Sort(k)
	return k
}

func sorted(s ...string) []string { slices.Sort(s); return s }

// TestServeEndToEnd runs `kmsgate serve --key hashivault://NAME` against the
// test Vault, signs through the sign API and verifies each token against
// the served JWKS with an independent library. It follows a rotation
// (the new version is published on refresh, the old one keeps signing) and
// min_decryption_version removing the oldest version from the JWKS.
func TestServeEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the kmsgate binary")
	}
	e := newEnv(t)
	name := keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	e.rotate("transit", name)
	kids := kidsByVersion(t, e, name)

	g := backendtest.StartGateway(t, "", "--key", "hashivault://"+name, "--request-timeout", "2s", "--refresh", "200ms")
	status, out := g.Sign(t, `{"sub":"alice","aud":"app"}`)
	if status != http.StatusOK {
		t.Fatalf("sign: %d %v\n%s", status, out, g.Logs())
	}
	tok, _ := out["token"].(string)
	claims := backendtest.VerifyIndependently(t, tok, g.JWKS(t))
	if claims["sub"] != "alice" || out["kid"] != kids[1] {
		t.Fatalf("claims %v, kid %v (want v1 %s)", claims, out["kid"], kids[1])
	}
	if got := sortedKIDs(t, g.JWKS(t)); !slices.Equal(got, sorted(kids[1], kids[2])) {
		t.Fatalf("JWKS kids %v, want v1 and v2 (v2 pending)", got)
	}

	// Rotate: v3 is published on the next refresh; v1 keeps signing.
	e.rotate("transit", name)
	kids = kidsByVersion(t, e, name)
	waitFor(t, "v3 in the JWKS", func() bool { return len(jwksKIDs(t, g.JWKS(t))) == 3 })
	status, out = g.Sign(t, `{"sub":"bob","aud":"app"}`)
	if status != http.StatusOK || out["kid"] != kids[1] {
		t.Fatalf("after rotation: %d %v", status, out)
	}
	backendtest.VerifyIndependently(t, out["token"].(string), g.JWKS(t))

	// min_decryption_version=2: v1 leaves the JWKS, and the oldest version
	// that can sign (v2) takes over.
	e.configure("transit", name, map[string]any{"min_decryption_version": 2})
	waitFor(t, "v1 to leave the JWKS", func() bool { return !slices.Contains(jwksKIDs(t, g.JWKS(t)), kids[1]) })
	if got := sortedKIDs(t, g.JWKS(t)); !slices.Equal(got, sorted(kids[2], kids[3])) {
		t.Fatalf("JWKS kids %v, want v2 and v3", got)
	}
	status, out = g.Sign(t, `{"sub":"carol","aud":"app"}`)
	if status != http.StatusOK || out["kid"] != kids[2] {
		t.Fatalf("after min_decryption_version: %d %v", status, out)
	}
	backendtest.VerifyIndependently(t, out["token"].(string), g.JWKS(t))

	if err := g.Stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, g.Logs())
	}
	if logs := g.Logs(); strings.Contains(logs, tok[:40]) || strings.Contains(logs, g.Token) || strings.Contains(logs, e.admin.Token()) {
		t.Fatalf("a token reached the logs:\n%s", logs)
	}
}

// TestServeRefusesWrongKeyType: `kmsgate serve` with a Transit key that is
// not ecdsa-p256 exits at start with an error naming the key and its type.
func TestServeRefusesWrongKeyType(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the kmsgate binary")
	}
	e := newEnv(t)
	name := keyName(t)
	e.createKey("transit", name, "rsa-2048")
	port := backendtest.FreePort(t)
	bin := backendtest.Binary(t) // built before the clock starts: the first test to ask builds it
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--issuer", fmt.Sprintf("http://127.0.0.1:%d", port), "--key", "hashivault://"+name)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("serve with an rsa-2048 key: %v (want exit status 1)\n%s", err, out)
	}
	if !strings.Contains(string(out), name) || !strings.Contains(string(out), "rsa-2048") {
		t.Fatalf("the error does not name the key and its type:\n%s", out)
	}
}

// TestServeVaultDown runs `kmsgate serve` against a Vault of its own and
// kills that Vault: the sign API answers 503 with Retry-After within the
// request deadline while the JWKS keeps being served, and signing recovers
// when Vault is started again on the same storage.
func TestServeVaultDown(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the kmsgate binary")
	}
	p := startOwnVault(t)
	e := envAt(t, p.addr, p.token)
	name := keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	t.Setenv("VAULT_ADDR", p.addr)
	t.Setenv("VAULT_TOKEN", p.token)
	g := backendtest.StartGateway(t, "", "--key", "hashivault://"+name, "--request-timeout", "1s", "--refresh", "200ms")
	status, out := g.Sign(t, `{"sub":"alice","aud":"app"}`)
	if status != http.StatusOK {
		t.Fatalf("sign: %d %v\n%s", status, out, g.Logs())
	}
	served := g.JWKS(t)
	backendtest.VerifyIndependently(t, out["token"].(string), served)

	p.kill()
	req, _ := http.NewRequest("POST", g.URL+"/v1/sign", strings.NewReader(`{"claims":{"sub":"bob","aud":"app"}}`))
	req.Header.Set("Authorization", "Bearer "+g.Token)
	start := time.Now()
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var apiErr struct{ Error, Code string }
	_ = json.Unmarshal(body, &apiErr)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || apiErr.Code != "backend_unavailable" {
		t.Fatalf("Vault down: %d %s Retry-After %q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if took > 2*time.Second {
		t.Fatalf("503 after %s with --request-timeout 1s", took)
	}
	waitFor(t, "two failed refreshes logged", func() bool {
		return strings.Count(g.Logs(), "key refresh failed; serving the last good versions") >= 2
	})
	if doc := g.JWKS(t); string(doc) != string(served) {
		t.Fatalf("the JWKS changed while Vault was down: %s", doc)
	}

	p.start()
	var ok bool
	waitFor(t, "signing to recover", func() bool {
		status, out = g.Sign(t, `{"sub":"carol","aud":"app"}`)
		ok = status == http.StatusOK
		return ok
	})
	backendtest.VerifyIndependently(t, out["token"].(string), g.JWKS(t))
}
