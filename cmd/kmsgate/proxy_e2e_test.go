package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/jwks/verify"
)

// TestProxyEndToEnd runs `kmsgate serve --upstream` in front of an app that
// checks every assertion with verify.Verifier and with an independent library,
// then rotates the PEM key (add a new key first, Pomerium's swap step) and
// checks that the app accepts the new kid without a restart.
func TestProxyEndToEnd(t *testing.T) {
	keyFile := writeFile(t, "keys.pem", genkey(t))
	var (
		mu      sync.Mutex
		kids    = map[string]bool{}
		checked int
		g       *backendtest.Gateway
		app     http.Handler
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { app.ServeHTTP(w, r) }))
	defer srv.Close()
	g = backendtest.StartGateway(t, "", "--key", "file://"+keyFile, "--upstream", srv.URL,
		"--identity", "headers", "--trusted-proxy", "127.0.0.1", "--allow", "any-authenticated", "--refresh", "200ms", "--prepublish", "0s")

	v, err := verify.NewVerifier(context.Background(), verify.VerifierConfig{
		JWKSURL: g.URL + "/.well-known/jwks.json", Issuer: g.URL, Audience: "127.0.0.1",
		MinRefresh: time.Hour, MaxRefresh: time.Hour, // only the unknown-kid refresh may pick up the rotation
		UnknownKIDInterval: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	app = v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := verify.ClaimsFromContext(r.Context())
		if !ok {
			t.Error("no claims in the context")
		}
		// The independent check, against the gateway's current JWKS.
		raw := r.Header.Get("X-Kmsgate-Jwt-Assertion")
		ind := backendtest.VerifyIndependently(t, raw, g.JWKS(t))
		if ind["sub"] != c.Subject || c.Subject == "" {
			t.Errorf("verifiers disagree: %v vs %+v", ind, c)
		}
		mu.Lock()
		checked++
		kids[kidOf(t, raw)] = true
		mu.Unlock()
		fmt.Fprintf(w, "hello %s", c.Subject)
	}))

	get := func(user string) (int, string) {
		req, _ := http.NewRequest("GET", g.URL+"/hello", nil)
		req.Header.Set("X-Forwarded-User", user)
		req.Header.Set("X-Forwarded-Email", user+"@example.com")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if s, body := get("alice"); s != 200 || body != "hello alice" {
		t.Fatalf("through the gateway: %d %q", s, body)
	}
	// Rotation: a new key first in the file signs from the next refresh on.
	if err := os.WriteFile(keyFile, []byte(genkey(t)+readFile(t, keyFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		s, body := get(fmt.Sprintf("user-%d", i)) // a new identity: a fresh assertion
		if s != 200 {
			t.Fatalf("after rotation: %d %q", s, body)
		}
		mu.Lock()
		n := len(kids)
		mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the app never saw the new kid")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Without the gateway, the app refuses.
	resp, err := http.Get(srv.URL + "/hello")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("direct request without an assertion: %d", resp.StatusCode)
	}
	if checked < 2 {
		t.Fatalf("app checked %d assertions", checked)
	}
}

func readFile(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func kidOf(t *testing.T, tok string) string {
	seg, _, _ := strings.Cut(tok, ".")
	var h struct{ Kid string }
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return h.Kid
}
