package gateway_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/gateway"
	"github.com/kmsgate/kmsgate/gateway/audit"
	"github.com/kmsgate/kmsgate/jwks"
)

// TestAuditTrail: every token the sign API, the proxy and forward-auth
// sign leaves exactly one record, matched here to the tokens by jti, with
// kid, sub, aud, exp, the client or route and the client address, and no
// record holds a token. A cached assertion reused is no new token and
// leaves no record.
func TestAuditTrail(t *testing.T) {
	up := newUpstream(t, nil)
	f := &backendtest.Fake{}
	f.Add("v1", time.Now().Add(-24*time.Hour))
	kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{})
	if err := kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	trail := &backendtest.SyncBuffer{}
	srv, err := gateway.New(context.Background(), gateway.Config{
		Issuer: issuer, Prepublish: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Audit: audit.New(trail, func(err error) { t.Error(err) }),
		Clients: []gateway.Client{{Name: "billing-svc", TokenSHA256: tokenHash(clientToken), Audiences: []string{"billing"}, Subjects: []string{"*"}, MaxTTL: time.Hour}},
		Proxy:   gateway.ProxyConfig{Policy: anyone, Upstream: up.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")},
	}, kr, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + serve(t, srv, nil)
	issued := map[string]string{} // jti -> how it was issued
	claimsOf := func(tok string) map[string]any {
		parts := strings.Split(tok, ".")
		b, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var c map[string]any
		_ = json.Unmarshal(b, &c)
		return c
	}
	do := func(method, path, body string, hdr map[string]string) *http.Response {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	for i := 0; i < 3; i++ {
		resp := do("POST", "/v1/sign", `{"claims":{"sub":"svc-1","aud":"billing"}}`, map[string]string{"Authorization": "Bearer " + clientToken})
		var out struct{ Token string }
		_ = json.NewDecoder(resp.Body).Decode(&out)
		issued[claimsOf(out.Token)["jti"].(string)] = "sign"
	}
	for _, user := range []string{"alice", "bob", "alice"} { // alice's second is cached: no new token
		do("GET", "/app", "", map[string]string{"X-Forwarded-User": user})
		tok := up.last(t).Header.Get(gateway.DefaultAssertionHeader)
		issued[claimsOf(tok)["jti"].(string)] = "assertion"
	}
	resp := do("GET", "/v1/auth", "", map[string]string{"X-Forwarded-User": "carol", "X-Forwarded-Host": "wiki.example"})
	issued[claimsOf(resp.Header.Get(gateway.DefaultAssertionHeader))["jti"].(string)] = "forward-auth"
	if len(issued) != 6 {
		t.Fatalf("%d distinct tokens, want 6", len(issued))
	}

	kid := kr.ActiveKID()
	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(trail.String()))
	for sc.Scan() {
		line := sc.Text()
		if hasToken(line) {
			t.Fatalf("a token reached the audit trail: %s", line)
		}
		var r audit.Record
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("record %q: %v", line, err)
		}
		how, ok := issued[r.JTI]
		if !ok || seen[r.JTI] {
			t.Fatalf("record for an unknown or repeated jti: %s", line)
		}
		seen[r.JTI] = true
		if r.KID != kid || r.Remote != "127.0.0.1" || r.Exp <= time.Now().Unix() || r.Time.IsZero() {
			t.Errorf("record %s", line)
		}
		switch how {
		case "sign":
			if r.Kind != "sign" || r.Client != "billing-svc" || r.Sub != "svc-1" || len(r.Aud) != 1 || r.Aud[0] != "billing" {
				t.Errorf("sign record %s", line)
			}
		case "assertion":
			if r.Kind != "assertion" || r.Route != "--upstream" || (r.Sub != "alice" && r.Sub != "bob") {
				t.Errorf("assertion record %s", line)
			}
		case "forward-auth":
			if r.Kind != "assertion" || r.Route != "forward-auth --upstream" || r.Sub != "carol" || r.Aud[0] != "wiki.example" {
				t.Errorf("forward-auth record %s", line)
			}
		}
	}
	if len(seen) != len(issued) {
		t.Fatalf("%d records for %d tokens:\n%s", len(seen), len(issued), trail.String())
	}
}
