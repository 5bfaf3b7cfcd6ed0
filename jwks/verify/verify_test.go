package verify_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/kmsgate/kmsgate/jwks/verify"
)

// signer is a stand-in for the gateway: one ES256 key and its JWKS.
type signer struct {
	key *ecdsa.PrivateKey
	kid string
	set []byte
}

func newSigner(t *testing.T) *signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s := &signer{key: k, kid: "k1"}
	s.set, _ = json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: s.kid, Algorithm: "ES256", Use: "sig"}}})
	return s
}

func (s *signer) sign(t *testing.T, claims map[string]any) string {
	t.Helper()
	sg, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: s.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", s.kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(sg).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func claims(iss, aud string) map[string]any {
	now := time.Now()
	return map[string]any{"iss": iss, "aud": aud, "sub": "alice", "email": "alice@example.com", "groups": []string{"eng"},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Minute).Unix()}
}

func TestVerifyWithSet(t *testing.T) {
	s := newSigner(t)
	set, err := verify.ParseSet(s.set)
	if err != nil {
		t.Fatal(err)
	}
	tok := s.sign(t, claims("https://gw", "app"))
	if _, err := verify.VerifyWithSet(tok, set, verify.Expect{Issuer: "https://gw", Audience: "app"}); err != nil {
		t.Fatal(err)
	}
	_, err = verify.VerifyWithSet(tok, set, verify.Expect{Issuer: "https://gw/"})
	if !errors.Is(err, jwt.ErrInvalidIssuer) || !strings.Contains(err.Error(), `iss is "https://gw", want "https://gw/"`) {
		t.Errorf("wrong issuer: %v", err)
	}
	if _, err := verify.ParseSet([]byte(`{"keys":[]}`)); err == nil {
		t.Error("an empty key set was accepted")
	}
}

// TestMiddleware: the net/http middleware passes a request with a valid
// assertion on with its claims, and answers 401 to one without.
func TestMiddleware(t *testing.T) {
	s := newSigner(t)
	jwksSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(s.set) }))
	defer jwksSrv.Close()
	v, err := verify.NewVerifier(context.Background(), verify.VerifierConfig{JWKSURL: jwksSrv.URL, Issuer: "https://gw", Audience: "app"})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	app := httptest.NewServer(v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := verify.ClaimsFromContext(r.Context())
		w.Write([]byte(c.Email))
	})))
	defer app.Close()
	for tok, want := range map[string]int{s.sign(t, claims("https://gw", "app")): 200, s.sign(t, claims("https://evil", "app")): 401, "": 401} {
		req, _ := http.NewRequest("GET", app.URL, nil)
		if tok != "" {
			req.Header.Set(verify.DefaultHeader, tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("status %d, want %d", resp.StatusCode, want)
		}
	}
}

// TestExampleAppWithoutEcho builds the README's example app in a module of
// its own and checks that its module graph holds neither echo nor anything
// of the gateway (cloud SDKs, the kmsgate main module).
func TestExampleAppWithoutEcho(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, code, ok := strings.Cut(string(readme), "```go\n")
	if code, _, ok2 := strings.Cut(code, "```"); ok && ok2 {
		dir := t.TempDir()
		self, _ := filepath.Abs(".")
		mod := "module example.com/app\n\ngo 1.26.0\n\nrequire github.com/kmsgate/kmsgate/jwks/verify v0.0.0\n\nreplace github.com/kmsgate/kmsgate/jwks/verify => " + self + "\n"
		if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(mod), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(code), 0o644); err != nil {
			t.Fatal(err)
		}
		gocmd := func(args ...string) string {
			cmd := exec.Command("go", args...)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			return string(out)
		}
		gocmd("mod", "tidy")
		gocmd("build", "-o", filepath.Join(dir, "app"), ".")
		all := gocmd("list", "-m", "all")
		for _, bad := range []string{"labstack/echo", "cloud.google.com", "aws-sdk-go", "hashicorp/vault", "github.com/kmsgate/kmsgate "} {
			if strings.Contains(all, bad) {
				t.Errorf("the example app's module graph holds %s:\n%s", bad, all)
			}
		}
		if !strings.Contains(all, "github.com/go-jose/go-jose/v4") {
			t.Errorf("go list -m all lacks go-jose:\n%s", all)
		}
		return
	}
	t.Fatal("README.md has no ```go example")
}
