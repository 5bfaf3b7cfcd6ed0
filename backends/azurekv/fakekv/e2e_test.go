package fakekv_test

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends/azurekv/fakekv"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/jwks"
)

// TestServeEndToEnd runs `kmsgate serve --key azurekv://…` against the fake
// vault over TLS (trusted through KMSGATE_AZUREKV_CACERT, the token from
// KMSGATE_AZUREKV_TOKEN), signs through the sign API, and verifies the token
// against the served JWKS with an independent library (go-jose). A disabled
// version stays out of the JWKS, a rotated-in version is published on
// refresh, a throttling vault gives 429 and a hung one 503, both within the
// request deadline, and no token reaches the logs.
func TestServeEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the kmsgate binary")
	}
	e := newEnv(t)
	e.fake.SetPageSize(1)
	v1 := e.add("jwt", fakekv.Version{Kty: "EC-HSM", Created: time.Now().Add(-3 * time.Hour)})
	e.add("jwt", fakekv.Version{Disabled: true, Created: time.Now().Add(-2 * time.Hour)})
	kid1, err := jwks.KID(e.fake.PublicKey("jwt", v1), jwks.KIDThumbprint)
	if err != nil {
		t.Fatal(err)
	}

	g := backendtest.StartGateway(t, "", "--key", e.uri("jwt"), "--request-timeout", "1s", "--refresh", "200ms")
	status, out := g.Sign(t, `{"sub":"alice","aud":"app"}`)
	if status != http.StatusOK {
		t.Fatalf("sign: %d %v\n%s", status, out, g.Logs())
	}
	tok, _ := out["token"].(string)
	claims := backendtest.VerifyIndependently(t, tok, g.JWKS(t))
	if claims["sub"] != "alice" || out["kid"] != kid1 {
		t.Fatalf("claims %v, kid %v (want %s)", claims, out["kid"], kid1)
	}
	if e.fake.Calls(fakekv.OpSign) == 0 {
		t.Fatal("the signature did not come from the vault")
	}
	if kids := jwksKIDs(t, g.JWKS(t)); len(kids) != 1 || kids[0] != kid1 {
		t.Fatalf("JWKS kids %v, want only the enabled version's %s", kids, kid1)
	}

	// Rotation: the new version is published on the next refresh; v1
	// keeps signing (--prepublish 2h).
	v3 := e.add("jwt", fakekv.Version{})
	kid3, _ := jwks.KID(e.fake.PublicKey("jwt", v3), jwks.KIDThumbprint)
	deadline := time.Now().Add(10 * time.Second)
	for len(jwksKIDs(t, g.JWKS(t))) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the JWKS did not publish the new version:\n%s", g.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if kids := jwksKIDs(t, g.JWKS(t)); !slices.Contains(kids, kid3) || !slices.Contains(kids, kid1) {
		t.Fatalf("JWKS kids %v", kids)
	}
	status, out = g.Sign(t, `{"sub":"bob","aud":"app"}`)
	if status != http.StatusOK || out["kid"] != kid1 {
		t.Fatalf("after rotation: %d %v", status, out)
	}
	backendtest.VerifyIndependently(t, out["token"].(string), g.JWKS(t))

	post := func(sub string) (int, string, string, time.Duration) {
		req, _ := http.NewRequest("POST", g.URL+"/v1/sign", strings.NewReader(`{"claims":{"sub":"`+sub+`","aud":"app"}}`))
		req.Header.Set("Authorization", "Bearer "+g.Token)
		start := time.Now()
		resp, err := g.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var apiErr struct{ Code string }
		_ = json.Unmarshal(body, &apiErr)
		return resp.StatusCode, apiErr.Code, resp.Header.Get("Retry-After"), took
	}
	// Throttled with a Retry-After past the deadline: 429 at once.
	e.fake.Inject(fakekv.Fault{Op: fakekv.OpSign, Status: 429, RetryAfter: "10"})
	if status, code, retry, took := post("carol"); status != http.StatusTooManyRequests || code != "backend_throttled" || retry == "" || took > 2*time.Second {
		t.Fatalf("throttled vault: %d %q Retry-After %q after %s", status, code, retry, took)
	}
	e.fake.ClearFaults()
	// The vault hangs: 503 with Retry-After within the 1 s deadline.
	e.fake.Inject(fakekv.Fault{Op: fakekv.OpSign, Delay: 30 * time.Second})
	if status, code, retry, took := post("dave"); status != http.StatusServiceUnavailable || code != "backend_unavailable" || retry == "" || took > 2*time.Second {
		t.Fatalf("hung vault: %d %q Retry-After %q after %s", status, code, retry, took)
	}
	e.fake.ClearFaults()
	if status, out := g.Sign(t, `{"sub":"erin","aud":"app"}`); status != http.StatusOK {
		t.Fatalf("after recovery: %d %v", status, out)
	}

	if err := g.Stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, g.Logs())
	}
	if logs := g.Logs(); strings.Contains(logs, tok[:40]) || strings.Contains(logs, g.Token) || strings.Contains(logs, e.token) {
		t.Fatalf("a token reached the logs:\n%s", logs)
	}
}
