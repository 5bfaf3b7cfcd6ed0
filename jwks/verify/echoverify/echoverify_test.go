package echoverify_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/labstack/echo/v4"

	"github.com/kmsgate/kmsgate/jwks/verify"
	"github.com/kmsgate/kmsgate/jwks/verify/echoverify"
)

// TestMiddleware: a request with a valid assertion reaches the handler
// with its claims; one without gets echo's 401 with the JSON reason.
func TestMiddleware(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	jwksSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(set) }))
	defer jwksSrv.Close()
	v, err := verify.NewVerifier(context.Background(), verify.VerifierConfig{JWKSURL: jwksSrv.URL, Issuer: "https://gw", Audience: "app"})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	e := echo.New()
	e.Use(echoverify.Middleware(v))
	e.GET("/", func(c echo.Context) error {
		cl, ok := verify.ClaimsFromContext(c.Request().Context())
		if !ok {
			return echo.NewHTTPError(http.StatusInternalServerError, "no claims")
		}
		return c.String(http.StatusOK, cl.Subject)
	})
	app := httptest.NewServer(e)
	defer app.Close()

	sg, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	now := time.Now()
	tok, _ := jwt.Signed(sg).Claims(map[string]any{"iss": "https://gw", "aud": "app", "sub": "alice", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}).Serialize()
	for _, c := range []struct {
		tok, body string
		status    int
	}{{tok, "alice", 200}, {"", `{"error":"missing X-Kmsgate-Jwt-Assertion header","code":"missing_assertion"}` + "\n", 401}} {
		req, _ := http.NewRequest("GET", app.URL, nil)
		if c.tok != "" {
			req.Header.Set(verify.DefaultHeader, c.tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status || string(body) != c.body {
			t.Errorf("%d %q, want %d %q", resp.StatusCode, body, c.status, c.body)
		}
	}
}
