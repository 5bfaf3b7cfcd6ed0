package gcpkms_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/backends/gcpkms/fakekms"
	"github.com/kmsgate/kmsgate/jwks"
)

// TestServeEndToEnd runs `kmsgate serve --key gcpkms://…` against the fake
// Cloud KMS on 127.0.0.1, signs through the sign API, and verifies the
// token against the served JWKS with an independent library. It then
// publishes a newly generated version on refresh, and shows that a Cloud KMS
// that does not answer gives 503 within the request deadline.
func TestServeEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the kmsgate binary")
	}
	e := newEnv(t)
	v1 := e.addVersion(fakekms.VersionSpec{Created: time.Now().Add(-3 * time.Hour)})
	e.addVersion(fakekms.VersionSpec{Created: time.Now().Add(-2 * time.Hour), State: disabled})
	v3 := e.addVersion(fakekms.VersionSpec{State: pending})
	kid1, err := jwks.KID(e.publicKey(v1), jwks.KIDThumbprint)
	if err != nil {
		t.Fatal(err)
	}

	g := backendtest.StartGateway(t, "", "--key", e.uri(keyName), "--request-timeout", "1s", "--refresh", "200ms")
	status, out := g.Sign(t, `{"sub":"alice","aud":"app"}`)
	if status != http.StatusOK {
		t.Fatalf("sign: %d %v\n%s", status, out, g.Logs())
	}
	tok, _ := out["token"].(string)
	claims := backendtest.VerifyIndependently(t, tok, g.JWKS(t))
	if claims["sub"] != "alice" || out["kid"] != kid1 {
		t.Fatalf("claims %v, kid %v (want %s)", claims, out["kid"], kid1)
	}
	if e.fake.Calls(fakekms.AsymmetricSign) == 0 {
		t.Fatal("the signature did not come from Cloud KMS")
	}
	if kids := jwksKIDs(t, g.JWKS(t)); len(kids) != 1 || kids[0] != kid1 {
		t.Fatalf("JWKS kids %v, want only the enabled version's %s", kids, kid1)
	}

	// Version 3 finishes generating: the next refresh publishes it, and
	// version 1 keeps signing (--prepublish 2h).
	e.setState(v3, enabled)
	kid3, _ := jwks.KID(e.publicKey(v3), jwks.KIDThumbprint)
	waitFor(t, "the JWKS to publish the generated version", func() bool { return len(jwksKIDs(t, g.JWKS(t))) == 2 })
	if kids := jwksKIDs(t, g.JWKS(t)); !contains(strings.Join(kids, " "), kid1, kid3) {
		t.Fatalf("JWKS kids %v", kids)
	}
	status, out = g.Sign(t, `{"sub":"bob","aud":"app"}`)
	if status != http.StatusOK || out["kid"] != kid1 {
		t.Fatalf("after publishing v3: %d %v", status, out)
	}
	backendtest.VerifyIndependently(t, out["token"].(string), g.JWKS(t))

	// Cloud KMS hangs: 503 with Retry-After within the 1 s request
	// deadline, not after the client library's 60 s.
	e.fake.Inject(fakekms.Fault{Method: fakekms.AsymmetricSign, Delay: 30 * time.Second})
	req, _ := http.NewRequest("POST", g.URL+"/v1/sign", strings.NewReader(`{"claims":{"sub":"carol","aud":"app"}}`))
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
		t.Fatalf("hung Cloud KMS: %d %q Retry-After %q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if took > 2*time.Second {
		t.Fatalf("503 after %s with --request-timeout 1s", took)
	}
	e.fake.ClearFaults()
	if status, out := g.Sign(t, `{"sub":"dave","aud":"app"}`); status != http.StatusOK {
		t.Fatalf("after recovery: %d %v", status, out)
	}

	if err := g.Stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, g.Logs())
	}
	if logs := g.Logs(); strings.Contains(logs, tok[:40]) || strings.Contains(logs, g.Token) {
		t.Fatalf("a token reached the logs:\n%s", logs)
	}
}
