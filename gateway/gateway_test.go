package gateway_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/gateway"
	"github.com/kmsgate/kmsgate/jwks"
)

const (
	issuer      = "https://kmsgate.test"
	clientToken = "s3cret-client-token-value"
)

func tokenHash(tok string) string {
	s := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(s[:])
}

type env struct {
	fake *backendtest.Fake
	kr   *jwks.Keyring
	srv  *gateway.Server
	url  string
	adm  *httptest.Server // the admin port
	logs *backendtest.SyncBuffer
}

func newEnv(t *testing.T, mutate func(*gateway.Config)) *env {
	t.Helper()
	f := &backendtest.Fake{}
	f.Add("v1", time.Now().Add(-24*time.Hour))
	m := gateway.NewMetrics()
	logs := &backendtest.SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{
		Prepublish: 2 * time.Hour, Logger: log, OnSign: m.OnSign, OnRefresh: m.OnRefresh,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := gateway.Config{
		Issuer: issuer, JWKSPaths: []string{"/.well-known/pomerium/jwks.json"}, MaxAge: 300 * time.Second,
		Prepublish: 2 * time.Hour, RequestTimeout: 300 * time.Millisecond, MaxBody: 4096, Logger: log,
		Clients: []gateway.Client{{
			Name: "app", TokenSHA256: tokenHash(clientToken), Audiences: []string{"billing", "reports"},
			Subjects: []string{"svc-*"}, MaxTTL: 15 * time.Minute, Claims: []string{"scope"},
		}},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := gateway.New(context.Background(), cfg, kr, m)
	if err != nil {
		t.Fatal(err)
	}
	adm := httptest.NewServer(srv.AdminHandler(false))
	t.Cleanup(adm.Close)
	e := &env{fake: f, kr: kr, srv: srv, url: "http://" + serve(t, srv, nil), adm: adm, logs: logs}
	t.Cleanup(func() { e.checkLogs(t) })
	return e
}

// checkLogs fails the test if a secret reached a log line.
func (e *env) checkLogs(t *testing.T) {
	logs := e.logs.String()
	for _, secret := range []string{clientToken, "eyJ", "PRIVATE KEY"} {
		if strings.Contains(logs, secret) {
			t.Errorf("log output contains %q:\n%s", secret, logs)
		}
	}
}

func (e *env) refresh(t *testing.T) {
	t.Helper()
	if err := e.kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (e *env) do(t *testing.T, method, path string, body string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, e.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// admin sends a GET to the admin port.
func (e *env) admin(t *testing.T, path string) *http.Response {
	t.Helper()
	resp, err := e.adm.Client().Get(e.adm.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func readBody(t *testing.T, r *http.Response) []byte {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestJWKSEndpoint(t *testing.T) {
	e := newEnv(t, nil)
	// Before the keys load: 503, never an empty set that would be cached.
	r := e.do(t, "GET", "/.well-known/jwks.json", "", nil)
	if r.StatusCode != 503 || r.Header.Get("Retry-After") == "" {
		t.Fatalf("before load: %d", r.StatusCode)
	}
	e.refresh(t)
	for _, p := range []string{"/.well-known/jwks.json", "/.well-known/pomerium/jwks.json"} {
		r := e.do(t, "GET", p, "", nil)
		body := readBody(t, r)
		if r.StatusCode != 200 {
			t.Fatalf("%s: %d %s", p, r.StatusCode, body)
		}
		if !bytes.Equal(body, e.kr.State().Document.JSON) {
			t.Fatalf("%s: body is not the keyring's document", p)
		}
		if got := r.Header.Get("Cache-Control"); got != "public, max-age=300" {
			t.Errorf("Cache-Control %q", got)
		}
		if r.Header.Get("Access-Control-Allow-Origin") != "*" || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("CORS/Content-Type: %v", r.Header)
		}
		etag := r.Header.Get("ETag")
		if etag != e.kr.State().Document.ETag || strings.HasPrefix(etag, "W/") {
			t.Fatalf("ETag %q", etag)
		}
		for _, inm := range []string{etag, `"other", ` + etag, "W/" + etag, "*"} {
			r := e.do(t, "GET", p, "", map[string]string{"If-None-Match": inm})
			if r.StatusCode != 304 || len(readBody(t, r)) != 0 || r.Header.Get("ETag") != etag {
				t.Errorf("If-None-Match %s: %d", inm, r.StatusCode)
			}
		}
		if r := e.do(t, "GET", p, "", map[string]string{"If-None-Match": `"stale"`}); r.StatusCode != 200 {
			t.Errorf("stale If-None-Match: %d", r.StatusCode)
		}
		if r := e.do(t, "HEAD", p, "", nil); r.StatusCode != 200 || r.Header.Get("ETag") != etag {
			t.Errorf("HEAD: %d", r.StatusCode)
		}
		r = e.do(t, "OPTIONS", p, "", map[string]string{"Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
		if r.StatusCode != 204 || r.Header.Get("Access-Control-Allow-Origin") != "*" || !strings.Contains(r.Header.Get("Access-Control-Allow-Methods"), "GET") {
			t.Errorf("preflight: %d %v", r.StatusCode, r.Header)
		}
	}
	// The metrics saw the 304s.
	metrics := string(readBody(t, e.admin(t, "/metrics")))
	if !strings.Contains(metrics, "kmsgate_jwks_not_modified_total 8") {
		t.Errorf("304 count missing from metrics")
	}
}

func TestMaxAgeCappedByPrepublish(t *testing.T) {
	e := newEnv(t, func(c *gateway.Config) { c.Prepublish = 4 * time.Minute })
	e.refresh(t)
	if got := e.do(t, "GET", "/.well-known/jwks.json", "", nil).Header.Get("Cache-Control"); got != "public, max-age=120" {
		t.Fatalf("Cache-Control %q, want max-age=120 (half of a 4m prepublish)", got)
	}
}

func TestDiscovery(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do(t, "GET", "/.well-known/openid-configuration", "", nil)
	var doc map[string]any
	if err := json.Unmarshal(readBody(t, r), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["issuer"] != issuer || doc["jwks_uri"] != issuer+"/.well-known/jwks.json" {
		t.Fatalf("discovery %v", doc)
	}
	algs, _ := doc["id_token_signing_alg_values_supported"].([]any)
	if len(algs) != 1 || algs[0] != "ES256" {
		t.Fatalf("algs %v", algs)
	}
	if r.Header.Get("ETag") == "" || r.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatal("discovery lacks ETag or CORS")
	}
}

func TestJWKSAndDiscoveryNeverCallABackend(t *testing.T) {
	e := newEnv(t, nil)
	e.refresh(t)
	lists, signs := e.fake.Lists.Load(), e.fake.Signs.Load()
	for i := 0; i < 200; i++ {
		for _, p := range []string{"/.well-known/jwks.json", "/.well-known/pomerium/jwks.json", "/.well-known/openid-configuration"} {
			r := e.do(t, "GET", p, "", nil)
			io.Copy(io.Discard, r.Body)
			r.Body.Close()
		}
	}
	if e.fake.Lists.Load() != lists || e.fake.Signs.Load() != signs {
		t.Fatalf("backend called: lists %d->%d, signs %d->%d", lists, e.fake.Lists.Load(), signs, e.fake.Signs.Load())
	}
}

func sign(t *testing.T, e *env, token, body string) (*http.Response, map[string]any) {
	t.Helper()
	hdr := map[string]string{"Content-Type": "application/json"}
	if token != "" {
		hdr["Authorization"] = "Bearer " + token
	}
	r := e.do(t, "POST", "/v1/sign", body, hdr)
	out := map[string]any{}
	b := readBody(t, r)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("sign answer is not JSON: %d %q", r.StatusCode, b)
	}
	return r, out
}

func TestSignAPI(t *testing.T) {
	e := newEnv(t, nil)
	e.refresh(t)
	r, out := sign(t, e, clientToken, `{"claims":{"sub":"svc-1","aud":"billing","scope":"read"},"ttl":"10m"}`)
	if r.StatusCode != 200 {
		t.Fatalf("sign: %d %v", r.StatusCode, out)
	}
	if r.Header.Get("Cache-Control") != "no-store" {
		t.Error("sign answer is cacheable")
	}
	claims := backendtest.VerifyIndependently(t, out["token"].(string), e.kr.State().Document.JSON)
	if claims["iss"] != issuer || claims["sub"] != "svc-1" || claims["scope"] != "read" || claims["jti"] == "" {
		t.Fatalf("claims %v", claims)
	}
	iat, exp := claims["iat"], claims["exp"]
	if d := exp.(time.Time).Sub(iat.(time.Time)); d != 10*time.Minute+jwks.ClockSkew {
		t.Fatalf("lifetime %s, want the ttl from the moment of signing plus the %s iat is set before it", d, jwks.ClockSkew)
	}
	if out["kid"] != e.kr.State().Plan.Keys[0].KID {
		t.Fatalf("kid %v", out["kid"])
	}
	// Seconds and the default work too.
	if r, out := sign(t, e, clientToken, `{"claims":{"sub":"svc-1","aud":["billing","reports"]},"ttl":60}`); r.StatusCode != 200 {
		t.Fatalf("ttl in seconds, aud list: %d %v", r.StatusCode, out)
	}
	if r, out := sign(t, e, clientToken, `{"claims":{"sub":"svc-1","aud":"billing"}}`); r.StatusCode != 200 {
		t.Fatalf("default ttl: %d %v", r.StatusCode, out)
	}
}

func TestSignAPIErrors(t *testing.T) {
	e := newEnv(t, nil)
	e.refresh(t)
	good := `{"claims":{"sub":"svc-1","aud":"billing"}}`
	cases := []struct {
		name, token, body string
		status            int
		code              string
	}{
		{"no credentials", "", good, 401, "unauthenticated"},
		{"wrong token", "not-the-token", good, 401, "unauthenticated"},
		{"malformed JSON", clientToken, `{"claims":`, 400, "malformed"},
		{"not an object", clientToken, `[1,2]`, 400, "malformed"},
		{"unknown member", clientToken, `{"claims":{"sub":"svc-1","aud":"billing"},"alg":"none"}`, 400, "malformed"},
		{"trailing data", clientToken, good + `{}`, 400, "malformed"},
		{"no sub", clientToken, `{"claims":{"aud":"billing"}}`, 400, "malformed"},
		{"no aud", clientToken, `{"claims":{"sub":"svc-1"}}`, 400, "malformed"},
		{"aud not strings", clientToken, `{"claims":{"sub":"svc-1","aud":[1]}}`, 400, "malformed"},
		{"bad ttl", clientToken, `{"claims":{"sub":"svc-1","aud":"billing"},"ttl":"soon"}`, 400, "malformed"},
		{"negative ttl", clientToken, `{"claims":{"sub":"svc-1","aud":"billing"},"ttl":-5}`, 400, "malformed"},
		{"sets iss", clientToken, `{"claims":{"sub":"svc-1","aud":"billing","iss":"evil"}}`, 400, "reserved_claim"},
		{"sets exp", clientToken, `{"claims":{"sub":"svc-1","aud":"billing","exp":9999999999}}`, 400, "reserved_claim"},
		{"sets jti", clientToken, `{"claims":{"sub":"svc-1","aud":"billing","jti":"x"}}`, 400, "reserved_claim"},
		{"audience not allowed", clientToken, `{"claims":{"sub":"svc-1","aud":"admin"}}`, 403, "audience_not_allowed"},
		{"one audience not allowed", clientToken, `{"claims":{"sub":"svc-1","aud":["billing","admin"]}}`, 403, "audience_not_allowed"},
		{"subject not allowed", clientToken, `{"claims":{"sub":"root","aud":"billing"}}`, 403, "subject_not_allowed"},
		{"claim not allowed", clientToken, `{"claims":{"sub":"svc-1","aud":"billing","role":"admin"}}`, 403, "claim_not_allowed"},
		{"ttl over max", clientToken, `{"claims":{"sub":"svc-1","aud":"billing"},"ttl":"1h"}`, 403, "ttl_not_allowed"},
		{"too large", clientToken, `{"claims":{"sub":"svc-1","aud":"billing","scope":"` + strings.Repeat("x", 5000) + `"}}`, 413, "too_large"},
	}
	signs := e.fake.Signs.Load()
	for _, c := range cases {
		r, out := sign(t, e, c.token, c.body)
		if r.StatusCode != c.status || out["code"] != c.code || out["error"] == "" {
			t.Errorf("%s: %d %v, want %d %s", c.name, r.StatusCode, out, c.status, c.code)
		}
	}
	if e.fake.Signs.Load() != signs {
		t.Errorf("refused requests reached the backend")
	}
	r := e.do(t, "GET", "/v1/sign", "", nil)
	if r.StatusCode != 405 {
		t.Errorf("GET /v1/sign: %d", r.StatusCode)
	}
	if r := e.do(t, "POST", "/v1/sign", good, map[string]string{"Authorization": "Basic " + clientToken}); r.StatusCode != 401 {
		t.Errorf("Basic auth: %d", r.StatusCode)
	}
}

func TestSignBackendFailures(t *testing.T) {
	e := newEnv(t, nil)
	e.refresh(t)
	body := `{"claims":{"sub":"svc-1","aud":"billing"}}`
	for _, c := range []struct {
		name   string
		set    func()
		status int
		code   string
	}{
		{"throttled", func() { e.fake.SetFail(fmt.Errorf("fake: %w", backends.ErrThrottled)) }, 429, "backend_throttled"},
		{"unavailable", func() { e.fake.SetFail(fmt.Errorf("fake: %w", backends.ErrUnavailable)) }, 503, "backend_unavailable"},
		{"permission", func() { e.fake.SetFail(fmt.Errorf("fake: %w", backends.ErrPermission)) }, 503, "backend_permission"},
		{"wrong signature", func() { e.fake.SetWrongKey(true) }, 503, "backend_integrity"},
		{"slow backend", func() { e.fake.SetDelay(5 * time.Second) }, 503, "backend_unavailable"},
		{"hanging backend", func() { e.fake.SetHang(true) }, 503, "backend_unavailable"},
	} {
		e.fake.SetFail(nil)
		e.fake.SetWrongKey(false)
		e.fake.SetDelay(0)
		e.fake.SetHang(false)
		e.fake.Add("v-extra-"+c.name, time.Now().Add(-48*time.Hour)) // a second key for the wrong-key case
		c.set()
		start := time.Now()
		r, out := sign(t, e, clientToken, body)
		took := time.Since(start)
		if r.StatusCode != c.status || out["code"] != c.code || r.Header.Get("Retry-After") == "" {
			t.Errorf("%s: %d %v Retry-After=%q", c.name, r.StatusCode, out, r.Header.Get("Retry-After"))
		}
		if out["token"] != nil {
			t.Errorf("%s: a token was returned", c.name)
		}
		if took > 2*time.Second {
			t.Errorf("%s: answered after %s; the request deadline is 300ms", c.name, took)
		}
	}
	e.fake.SetHang(false)
	metrics := string(readBody(t, e.admin(t, "/metrics")))
	for _, want := range []string{`kmsgate_backend_errors_total{backend="fake",kind="throttled",op="sign"} 1`, `kind="integrity",op="sign"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestBackendDownAndBack: after start the backend fails; the JWKS keeps being
// served, signing answers 503 with Retry-After in time, and both recover once
// the backend returns. The refreshes are made here one by one, not by
// Keyring.Run on the wall clock (its schedule is jwks.TestRunSchedule's).
func TestBackendDownAndBack(t *testing.T) {
	e := newEnv(t, nil)
	e.refresh(t)
	etag := e.kr.State().Document.ETag
	body := `{"claims":{"sub":"svc-1","aud":"billing"}}`

	e.fake.SetFail(fmt.Errorf("fake: connection refused: %w", backends.ErrUnavailable))
	for i := range 3 { // several failed refreshes
		if err := e.kr.Refresh(context.Background()); !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("refresh %d while the backend is down: %v", i, err)
		}
	}
	r := e.do(t, "GET", "/.well-known/jwks.json", "", nil)
	if r.StatusCode != 200 || r.Header.Get("ETag") != etag {
		t.Fatalf("JWKS while the backend is down: %d", r.StatusCode)
	}
	if r := e.admin(t, "/readyz"); r.StatusCode != 200 {
		t.Fatalf("readyz while serving the last good set: %d", r.StatusCode)
	}
	if r, _ := sign(t, e, clientToken, body); r.StatusCode != 503 || r.Header.Get("Retry-After") == "" {
		t.Fatalf("sign while down: %d", r.StatusCode)
	}
	if !strings.Contains(e.logs.String(), "serving the last good versions") {
		t.Error("no warning logged for the failed refresh")
	}
	metrics := string(readBody(t, e.admin(t, "/metrics")))
	if !strings.Contains(metrics, `kmsgate_key_refreshes_total{backend="fake",result="error"} 3`) {
		t.Errorf("the 3 failed refreshes are not in the metrics:\n%s", metrics)
	}

	// The backend returns: the next signature and the next refresh succeed,
	// and the set served is the same.
	e.fake.SetFail(nil)
	if r, out := sign(t, e, clientToken, body); r.StatusCode != 200 || out["token"] == nil {
		t.Fatalf("sign once the backend is back: %d %v", r.StatusCode, out)
	}
	e.refresh(t)
	if r := e.do(t, "GET", "/.well-known/jwks.json", "", nil); r.StatusCode != 200 || r.Header.Get("ETag") != etag {
		t.Fatalf("JWKS once the backend is back: %d %s", r.StatusCode, r.Header.Get("ETag"))
	}
}

func TestHealthAndReadiness(t *testing.T) {
	e := newEnv(t, nil)
	if r := e.admin(t, "/healthz"); r.StatusCode != 200 {
		t.Fatalf("healthz %d", r.StatusCode)
	}
	r := e.admin(t, "/readyz")
	if b := readBody(t, r); r.StatusCode != 503 || !strings.Contains(string(b), "fake://k") {
		t.Fatalf("readyz before load: %d %s", r.StatusCode, b)
	}
	e.refresh(t)
	if r := e.admin(t, "/readyz"); r.StatusCode != 200 {
		t.Fatalf("readyz after load: %d", r.StatusCode)
	}
	// The public port serves neither health nor metrics.
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/debug/pprof/"} {
		if r := e.do(t, "GET", p, "", nil); r.StatusCode != 404 {
			t.Errorf("public %s: %d", p, r.StatusCode)
		}
	}
	if r := e.do(t, "GET", "/nope", "", nil); r.StatusCode != 404 {
		t.Errorf("unknown path: %d", r.StatusCode)
	}
	metrics := string(readBody(t, e.admin(t, "/metrics")))
	for _, want := range []string{"kmsgate_keys_ready 1", `kmsgate_key_info{backend="fake",kid="` + e.kr.State().Plan.Keys[0].KID + `",role="active",state="enabled",uri="fake://k"} 1`,
		`kmsgate_http_requests_total{code="404",endpoint="other"} 5`, "kmsgate_http_request_duration_seconds_bucket"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if r := e.do(t, "GET", "/nope", "", nil); r.StatusCode != 404 {
		t.Errorf("unknown path: %d", r.StatusCode)
	}
}

func TestConfigRefused(t *testing.T) {
	f := &backendtest.Fake{}
	kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{})
	base := gateway.Config{Issuer: issuer, Prepublish: time.Hour}
	for name, c := range map[string]struct {
		mutate func(*gateway.Config)
		want   string
	}{
		"no issuer":        {func(c *gateway.Config) { c.Issuer = "" }, "no issuer"},
		"issuer not a URL": {func(c *gateway.Config) { c.Issuer = "kmsgate" }, "http:// or https://"},
		"relative path":    {func(c *gateway.Config) { c.JWKSPaths = []string{"jwks.json"} }, "normalized absolute path"},
		"dotted path":      {func(c *gateway.Config) { c.JWKSPaths = []string{"/a/../jwks.json"} }, "normalized absolute path"},
		"bad prefix":       {func(c *gateway.Config) { c.Prefix = "/x/" }, "--gateway-prefix"},
		"no client name":   {func(c *gateway.Config) { c.Clients = []gateway.Client{{TokenSHA256: tokenHash("x")}} }, "without a name"},
		"bad hash":         {func(c *gateway.Config) { c.Clients = []gateway.Client{{Name: "a", TokenSHA256: "abc"}} }, "64 hex"},
		"two credentials": {func(c *gateway.Config) {
			c.Clients = []gateway.Client{{Name: "a", TokenSHA256: tokenHash("x"), CertSubject: "CN=a"}}
		}, "exactly one"},
		"no audiences": {func(c *gateway.Config) {
			c.Clients = []gateway.Client{{Name: "a", TokenSHA256: tokenHash("x"), Subjects: []string{"*"}, MaxTTL: time.Minute}}
		}, "audiences is empty"},
		"bad pattern": {func(c *gateway.Config) {
			c.Clients = []gateway.Client{{Name: "a", TokenSHA256: tokenHash("x"), Audiences: []string{"*"}, Subjects: []string{"["}, MaxTTL: time.Minute}}
		}, "subject pattern"},
		"no max-ttl": {func(c *gateway.Config) {
			c.Clients = []gateway.Client{{Name: "a", TokenSHA256: tokenHash("x"), Audiences: []string{"*"}, Subjects: []string{"*"}}}
		}, "max-ttl"},
		"duplicate clients": {func(c *gateway.Config) {
			cl := gateway.Client{Name: "a", TokenSHA256: tokenHash("x"), Audiences: []string{"*"}, Subjects: []string{"*"}, MaxTTL: time.Minute}
			c.Clients = []gateway.Client{cl, cl}
		}, "defined twice"},
	} {
		cfg := base
		c.mutate(&cfg)
		if _, err := gateway.New(context.Background(), cfg, kr, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestGracefulShutdown(t *testing.T) {
	e := newEnv(t, nil)
	e.refresh(t)
	e.fake.SetDelay(200 * time.Millisecond)
	ln, err := listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- e.srv.Serve(ctx, ln, nil, 5*time.Second) }()
	type result struct {
		status int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("POST", "http://"+ln.Addr().String()+"/v1/sign", strings.NewReader(`{"claims":{"sub":"svc-1","aud":"billing"}}`))
		req.Header.Set("Authorization", "Bearer "+clientToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- result{0, err}
			return
		}
		resp.Body.Close()
		done <- result{resp.StatusCode, nil}
	}()
	// The request is in flight once the backend has been asked to sign
	// (it takes 200 ms to answer).
	for e.fake.Signs.Load() == 0 {
		select {
		case r := <-done:
			t.Fatalf("the request ended before it reached the backend: %d %v", r.status, r.err)
		default:
			runtime.Gosched()
		}
	}
	cancel() // SIGTERM
	r := <-done
	if r.err != nil || r.status != 200 {
		t.Fatalf("in-flight request: %d %v", r.status, r.err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := http.Get("http://" + ln.Addr().String() + gateway.DefaultJWKSPath); err == nil {
		t.Fatal("still accepting connections after shutdown")
	}
}

// TestJWKSNotServedPartially: with two key URIs, the set is not served until
// both have loaded, since the missing one may hold the key of live tokens.
func TestJWKSNotServedPartially(t *testing.T) {
	signer := &backendtest.Fake{}
	signer.Add("new", time.Now().Add(-24*time.Hour))
	old := &backendtest.Fake{}
	old.Add("old", time.Now().Add(-48*time.Hour))
	old.SetFail(fmt.Errorf("down: %w", backends.ErrUnavailable))
	kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://new", Backend: signer}, {URI: "fake://old", Backend: old}}, jwks.Config{})
	srv, err := gateway.New(context.Background(), gateway.Config{Issuer: issuer, Prepublish: time.Hour}, kr, nil)
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + serve(t, srv, nil)
	_ = kr.Refresh(context.Background())
	get := func() int {
		r, err := testClient.Get(url + "/.well-known/jwks.json")
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	if s := get(); s != 503 {
		t.Fatalf("partial set served: %d", s)
	}
	old.SetFail(nil)
	if err := kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := get(); s != 200 || len(kr.State().Plan.Keys) != 2 {
		t.Fatalf("after both loaded: %d, %d keys", s, len(kr.State().Plan.Keys))
	}
}

// TestSignStrictClaims: reserved claims are refused in any letter case, and
// a body that names a key twice anywhere is malformed; nothing is signed.
func TestSignStrictClaims(t *testing.T) {
	e := newEnv(t, func(c *gateway.Config) { c.Clients[0].Claims = []string{"*"} })
	e.refresh(t)
	for _, body := range []string{
		`{"claims":{"sub":"svc-1","aud":"billing","ISS":"evil"}}`,
		`{"claims":{"sub":"svc-1","aud":"billing","Exp":9999999999}}`,
		`{"claims":{"sub":"svc-1","aud":"billing","NBF":0}}`,
		`{"claims":{"sub":"svc-1","aud":"billing","Jti":"x"}}`,
		`{"claims":{"sub":"svc-1","aud":"billing","IAT":0}}`,
	} {
		r, out := sign(t, e, clientToken, body)
		if r.StatusCode != 400 || out["code"] != "reserved_claim" {
			t.Errorf("%s: %d %v", body, r.StatusCode, out)
		}
	}
	for _, body := range []string{
		`{"claims":{"sub":"svc-1","aud":"billing","sub":"svc-2"}}`,
		`{"claims":{"sub":"svc-1","aud":"billing"},"claims":{"sub":"svc-2","aud":"billing"}}`,
		`{"claims":{"sub":"svc-1","aud":"billing","scope":{"a":1,"a":2}}}`,
		`{"claims":{"sub":"svc-1","aud":"billing"},"ttl":"1m","ttl":"10m"}`,
		`{"Claims":{"sub":"svc-1","aud":"billing"}}`,
	} {
		r, out := sign(t, e, clientToken, body)
		if r.StatusCode != 400 || out["code"] != "malformed" {
			t.Errorf("%s: %d %v", body, r.StatusCode, out)
		}
	}
	if n := e.fake.Signs.Load(); n != 0 {
		t.Errorf("%d signatures for refused requests", n)
	}
}
