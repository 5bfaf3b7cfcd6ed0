package awskms_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/jwks"
)

// TestServeE2E runs `kmsgate serve --key awskms://127.0.0.1:PORT/alias/…`
// against the local-kms process, signs a token over the sign API and
// verifies it with an independent library against the JWKS the gateway
// serves, whose only key is the KMS key's public key.
func TestServeE2E(t *testing.T) {
	ep := localKMS(t) // the gateway inherits the test's AWS environment
	a := newAdmin(t, ep)
	key := a.p256()
	alias := strings.TrimSuffix(aliasPrefix(t), "/")
	a.alias(alias, *key.KeyId)
	wantKID, err := jwks.KID(a.publicKey(*key.KeyId), jwks.KIDThumbprint)
	if err != nil {
		t.Fatal(err)
	}

	g := backendtest.StartGateway(t, "", "--key", hostURI(t, ep, alias))
	status, out := g.Sign(t, `{"sub":"alice","aud":"app"}`)
	if status != 200 {
		t.Fatalf("sign: %d %v\n%s", status, out, g.Logs())
	}
	tok, _ := out["token"].(string)
	set := g.JWKS(t)
	claims := backendtest.VerifyIndependently(t, tok, set)
	if claims["sub"] != "alice" || out["kid"] != wantKID {
		t.Fatalf("claims %v, kid %v; want sub alice and kid %s", claims, out["kid"], wantKID)
	}
	if n := countKeys(t, set); n != 1 || !strings.Contains(string(set), wantKID) {
		t.Fatalf("JWKS %s, want exactly the KMS key %s", set, wantKID)
	}
	if strings.Contains(g.Logs(), tok) {
		t.Fatal("the token appears in the gateway's log")
	}
}

// TestServeE2EBackendErrors puts the fault proxy between the gateway and
// local-kms: lasting throttling answers 429, a lasting 5xx outage 503, both
// with Retry-After and within the request deadline, and the gateway signs
// again once AWS recovers.
func TestServeE2EBackendErrors(t *testing.T) {
	ep := localKMS(t)
	a := newAdmin(t, ep)
	key := a.p256()
	alias := strings.TrimSuffix(aliasPrefix(t), "/")
	a.alias(alias, *key.KeyId)
	p := newProxy(t, ep)
	g := backendtest.StartGateway(t, "", "--key", hostURI(t, p.URL, alias), "--request-timeout", "2s")

	for _, c := range []struct {
		status     int
		body, code string
		want       int
	}{
		{400, awsError("ThrottlingException"), "backend_throttled", 429},
		{503, awsError("ServiceUnavailableException"), "backend_unavailable", 503},
		{500, awsError("KMSInternalException"), "backend_unavailable", 503},
	} {
		p.clearFaults()
		p.resetCounts()
		p.inject(fault{op: "Sign", n: 1000, status: c.status, body: c.body})
		start := time.Now()
		status, out := g.Sign(t, `{"sub":"alice","aud":"app"}`)
		if status != c.want || out["code"] != c.code {
			t.Fatalf("%s: %d %v, want %d %s", c.body, status, out, c.want, c.code)
		}
		if took := time.Since(start); took > 2500*time.Millisecond {
			t.Fatalf("%s: answered after %s, past the 2s request timeout", c.body, took)
		}
		if n := p.count("Sign"); n < 2 || n > 4 {
			t.Fatalf("%s: %d Sign calls, want retries bounded by the attempts", c.body, n)
		}
		if ra := signRetryAfter(t, g); ra == "" {
			t.Fatalf("%s: no Retry-After header", c.body)
		}
	}
	p.clearFaults()
	status, out := g.Sign(t, `{"sub":"alice","aud":"app"}`)
	if status != 200 {
		t.Fatalf("after recovery: %d %v", status, out)
	}
	backendtest.VerifyIndependently(t, out["token"].(string), g.JWKS(t))
}

// TestServeRefusesWrongKeyType: `kmsgate serve` with an RSA or a P-384 KMS
// key exits 1 at start with an error naming the key, its spec and usage.
func TestServeRefusesWrongKeyType(t *testing.T) {
	ep := localKMS(t)
	a := newAdmin(t, ep)
	bin := backendtest.Binary(t)
	cfg := filepath.Join(t.TempDir(), "kmsgate.yaml")
	sum := sha256.Sum256([]byte("unused"))
	conf := fmt.Sprintf("clients:\n  - name: e2e\n    token-sha256: %s\n    audiences: [\"*\"]\n    subjects: [\"*\"]\n    max-ttl: 1h\n", hex.EncodeToString(sum[:]))
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, spec := range []types.KeySpec{types.KeySpecRsa2048, types.KeySpecEccNistP384} {
		key := a.createKey(spec, types.KeyUsageTypeSignVerify)
		alias := strings.TrimSuffix(aliasPrefix(t), "/")
		a.alias(alias, *key.KeyId)
		port := backendtest.FreePort(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, bin, "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
			"--issuer", fmt.Sprintf("http://127.0.0.1:%d", port), "--config", cfg, "--key", hostURI(t, ep, alias))
		out, err := cmd.CombinedOutput()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("%s: %v, want exit status 1\n%s", spec, err, out)
		}
		for _, s := range []string{*key.Arn, string(spec), "SIGN_VERIFY", "ECC_NIST_P256"} {
			if !strings.Contains(string(out), s) {
				t.Errorf("%s: output does not name %s:\n%s", spec, s, out)
			}
		}
	}
}

// signRetryAfter posts a sign request and returns the Retry-After header of
// the answer.
func signRetryAfter(t *testing.T, g *backendtest.Gateway) string {
	t.Helper()
	req, err := http.NewRequest("POST", g.URL+"/v1/sign", strings.NewReader(`{"claims":{"sub":"alice","aud":"app"}}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+g.Token)
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatal("sign succeeded while the backend fails")
	}
	return resp.Header.Get("Retry-After")
}
