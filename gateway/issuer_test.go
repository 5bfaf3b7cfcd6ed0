package gateway_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/gateway"
	"github.com/kmsgate/kmsgate/jwks"
)

// TestIssuerAsConfigured: the issuer is used exactly as written (a final
// slash kept) in tokens and discovery, an issuer with a path serves its
// discovery document and key set under that path (and at the root), and
// go-oidc and jwx, configured with the issuer as written, accept the
// tokens.
func TestIssuerAsConfigured(t *testing.T) {
	for _, suffix := range []string{"", "/", "/tenant", "/tenant/", "/realms/a.b"} {
		t.Run("issuer"+suffix, func(t *testing.T) {
			ln, err := listen()
			if err != nil {
				t.Fatal(err)
			}
			base := "http://" + ln.Addr().String()
			iss := base + suffix
			f := &backendtest.Fake{}
			f.Add("v1", time.Now().Add(-24*time.Hour))
			kr, err := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{})
			if err != nil {
				t.Fatal(err)
			}
			if err := kr.Refresh(context.Background()); err != nil {
				t.Fatal(err)
			}
			srv, err := gateway.New(context.Background(), gateway.Config{Issuer: iss, Prepublish: time.Hour, Clients: []gateway.Client{{
				Name: "app", TokenSHA256: tokenHash(clientToken), Audiences: []string{"billing"}, Subjects: []string{"*"}, MaxTTL: time.Hour,
			}}}, kr, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { _ = srv.Serve(ctx, ln, nil, time.Second); close(done) }()
			t.Cleanup(func() { cancel(); <-done })

			// go-oidc fetches ISSUER/.well-known/openid-configuration and
			// requires its issuer to be ISSUER byte for byte.
			provider, err := oidc.NewProvider(ctx, iss)
			if err != nil {
				t.Fatalf("go-oidc: %v", err)
			}
			req, _ := http.NewRequest("POST", base+"/v1/sign", strings.NewReader(`{"claims":{"sub":"svc-1","aud":"billing"}}`))
			req.Header.Set("Authorization", "Bearer "+clientToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var out struct{ Token string }
			_ = json.NewDecoder(resp.Body).Decode(&out)
			resp.Body.Close()
			idt, err := provider.Verifier(&oidc.Config{ClientID: "billing", SupportedSigningAlgs: []string{oidc.ES256}}).Verify(ctx, out.Token)
			if err != nil {
				t.Fatalf("go-oidc refused the token: %v", err)
			}
			if idt.Issuer != iss {
				t.Errorf("iss %q, want %q", idt.Issuer, iss)
			}
			// jwx, with the jwks_uri the discovery document advertises.
			var doc struct {
				Issuer  string `json:"issuer"`
				JWKSURI string `json:"jwks_uri"`
			}
			if err := provider.Claims(&doc); err != nil {
				t.Fatal(err)
			}
			if want := strings.TrimSuffix(iss, "/") + "/.well-known/jwks.json"; doc.JWKSURI != want {
				t.Errorf("jwks_uri %q, want %q", doc.JWKSURI, want)
			}
			set, err := jwk.Fetch(ctx, doc.JWKSURI)
			if err != nil {
				t.Fatalf("jwx fetching %s: %v", doc.JWKSURI, err)
			}
			if _, err := jwt.Parse([]byte(out.Token), jwt.WithKeySet(set), jwt.WithIssuer(iss), jwt.WithAudience("billing"), jwt.WithValidate(true)); err != nil {
				t.Errorf("jwx refused the token: %v", err)
			}
			// The root aliases answer too.
			for _, p := range []string{"/.well-known/jwks.json", "/.well-known/openid-configuration"} {
				r, err := http.Get(base + p)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, r.Body)
				r.Body.Close()
				if r.StatusCode != 200 {
					t.Errorf("%s: %d", p, r.StatusCode)
				}
			}
		})
	}
	kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: &backendtest.Fake{}}}, jwks.Config{})
	for _, bad := range []string{"https://h/a/../b", "https://h//b", "https://h?x=1", "https://h/#f", "ftp://h", "https://", "https://u:p@h"} {
		if _, err := gateway.New(context.Background(), gateway.Config{Issuer: bad, Prepublish: time.Hour}, kr, nil); err == nil || !strings.Contains(err.Error(), "issuer") {
			t.Errorf("issuer %q: %v", bad, err)
		}
	}
}
