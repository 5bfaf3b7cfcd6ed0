package gateway_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/lestrrat-go/jwx/v2/jwk"
	jwxjwt "github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/gateway"
	"github.com/kmsgate/kmsgate/jwks"
	"github.com/kmsgate/kmsgate/jwks/verify"
)

// upstream records what reached the app behind the gateway.
type upstream struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []*http.Request
}

func newUpstream(t *testing.T, h http.HandlerFunc) *upstream {
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.reqs = append(u.reqs, r.Clone(context.Background()))
		u.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		w.WriteHeader(200)
		fmt.Fprint(w, "upstream ok")
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) last(t *testing.T) *http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		t.Fatal("nothing reached the upstream")
	}
	return u.reqs[len(u.reqs)-1]
}

func (u *upstream) count() int { u.mu.Lock(); defer u.mu.Unlock(); return len(u.reqs) }

type proxyEnv struct {
	fake *backendtest.Fake
	kr   *jwks.Keyring
	srv  *gateway.Server
	addr string
	adm  *httptest.Server // the admin port
	logs *backendtest.SyncBuffer
}

// newProxyEnv serves the gateway with Server.Serve (HTTP/1.1 and h2c) on
// 127.0.0.1 in front of the upstreams named in pc.
func newProxyEnv(t *testing.T, pc gateway.ProxyConfig) *proxyEnv {
	t.Helper()
	return newProxyEnvTLS(t, pc, nil)
}

// newProxyEnvTLS is newProxyEnv serving TLS with tlsCfg when it is not nil.
// A configuration without any policy gets the default policy allow:
// any-authenticated, as the tests of everything but policies want.
func newProxyEnvTLS(t *testing.T, pc gateway.ProxyConfig, tlsCfg *tls.Config) *proxyEnv {
	t.Helper()
	if pc.Policy.IsZero() && !slices.ContainsFunc(pc.Routes, func(r gateway.Route) bool { return !r.Policy.IsZero() }) {
		pc.Policy = anyone
	}
	f := &backendtest.Fake{}
	f.Add("v1", time.Now().Add(-24*time.Hour))
	m := gateway.NewMetrics()
	logs := &backendtest.SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{Logger: log, OnSign: m.OnSign})
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv, err := gateway.New(context.Background(), gateway.Config{Issuer: issuer, Prepublish: time.Hour, RequestTimeout: 500 * time.Millisecond, Proxy: pc, Logger: log, RequestLogSample: 1}, kr, m)
	if err != nil {
		t.Fatal(err)
	}
	adm := httptest.NewServer(srv.AdminHandler(false))
	t.Cleanup(adm.Close)
	e := &proxyEnv{fake: f, kr: kr, srv: srv, addr: serve(t, srv, tlsCfg), adm: adm, logs: logs}
	t.Cleanup(func() {
		if l := logs.String(); hasToken(l) {
			t.Errorf("a token reached the logs:\n%s", l)
		}
	})
	return e
}

// jwsCompact matches a JWS in compact form: a base64url JSON header (it
// starts with eyJ), a dot, a payload and a dot. A bare "eyJ" is not enough:
// it turns up in random base64url such as kids.
var jwsCompact = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.`)

// hasToken reports whether s holds a JWS (a token).
func hasToken(s string) bool { return jwsCompact.MatchString(s) }

// anyone is the policy that lets every authenticated identity through.
var anyone = gateway.MustParsePolicy("allow: any-authenticated")

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

// raw sends a request written byte for byte and returns the status line.
func raw(t *testing.T, addr, req string) string {
	t.Helper()
	resp, _ := rawResponse(t, addr, req)
	return resp.Status
}

// assertionOf checks that exactly one assertion header (in any variant)
// reached the upstream and verifies it independently and with kmsgate's
// verifier; it returns the claims.
func assertionOf(t *testing.T, e *proxyEnv, r *http.Request, header string) map[string]any {
	t.Helper()
	var values []string
	for k, v := range r.Header {
		if strings.EqualFold(strings.ReplaceAll(k, "_", "-"), header) {
			values = append(values, v...)
		}
	}
	if len(values) != 1 {
		t.Fatalf("upstream got %d assertion values %q, want exactly 1", len(values), values)
	}
	claims := backendtest.VerifyIndependently(t, values[0], e.kr.State().Document.JSON)
	set, _ := verify.ParseSet(e.kr.State().Document.JSON)
	if _, err := verify.VerifyWithSet(values[0], set, verify.Expect{Issuer: issuer, Audience: claims["aud"].([]string)[0]}); err != nil {
		t.Fatal(err)
	}
	return claims
}

func TestProxySpoofedHeadersNeverReachUpstream(t *testing.T) {
	up := newUpstream(t, nil)
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	forged := "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."
	req := "GET /app?q=1 HTTP/1.1\r\nHost: app.example\r\n" +
		"X-Forwarded-User: alice\r\nX-Forwarded-Email: alice@example.com\r\nX-Forwarded-Groups: dev, ops\r\nX-Forwarded-Preferred-Username: Alice A\r\n" +
		"X-Kmsgate-Jwt-Assertion: " + forged + "\r\n" +
		"x-kmsgate-jwt-assertion: " + forged + "\r\n" +
		"X-KMSGATE-JWT-ASSERTION: " + forged + "\r\n" +
		"X_Kmsgate_Jwt_Assertion: " + forged + "\r\n" +
		"Connection: keep-alive, X-Kmsgate-Jwt-Assertion\r\n\r\n"
	if st := raw(t, e.addr, req); !strings.HasPrefix(st, "200") {
		t.Fatalf("status %s", st)
	}
	r := up.last(t)
	for k, v := range r.Header {
		for _, x := range v {
			if strings.Contains(x, forged) {
				t.Fatalf("forged assertion reached the upstream in %s", k)
			}
		}
	}
	claims := assertionOf(t, e, r, gateway.DefaultAssertionHeader)
	if claims["sub"] != "alice" || claims["email"] != "alice@example.com" || claims["name"] != "Alice A" || claims["user"] != "alice" {
		t.Fatalf("claims %v", claims)
	}
	if g, _ := claims["groups"].([]any); len(g) != 2 || g[0] != "dev" || g[1] != "ops" {
		t.Fatalf("groups %v", claims["groups"])
	}
	if aud := claims["aud"].([]string); aud[0] != "127.0.0.1" {
		t.Fatalf("aud %v, want the upstream host", aud)
	}
	if r.URL.RawQuery != "q=1" || r.Header.Get("X-Forwarded-Host") != "app.example" || r.Header.Get("X-Forwarded-Proto") != "http" || r.Header.Get("X-Forwarded-For") != "127.0.0.1" {
		t.Fatalf("forwarded headers: %v query %q", r.Header, r.URL.RawQuery)
	}
}

func TestProxyUntrustedIdentityHeaders(t *testing.T) {
	up := newUpstream(t, nil)
	// 127.0.0.1 is not trusted here.
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("10.0.0.0/8")})
	for _, hdr := range []string{"X-Forwarded-User: admin\r\n", "x-forwarded-email: admin@example.com\r\n", "X_Forwarded_User: admin\r\n"} {
		if st := raw(t, e.addr, "GET / HTTP/1.1\r\nHost: app\r\n"+hdr+"\r\n"); !strings.HasPrefix(st, "403") {
			t.Errorf("%q from an untrusted address: %s", hdr, st)
		}
	}
	if st := raw(t, e.addr, "GET / HTTP/1.1\r\nHost: app\r\n\r\n"); !strings.HasPrefix(st, "401") {
		t.Errorf("no identity: %s", st)
	}
	if up.count() != 0 {
		t.Fatalf("%d requests reached the upstream", up.count())
	}
	if e.fake.Signs.Load() != 0 {
		t.Fatal("signed for an unauthenticated request")
	}
}

func TestProxyRefusesWhenSigningFails(t *testing.T) {
	up := newUpstream(t, nil)
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	e.fake.SetFail(fmt.Errorf("kms down: %w", errUnavailable))
	start := time.Now()
	st := raw(t, e.addr, "GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-User: alice\r\n\r\n")
	if !strings.HasPrefix(st, "503") || up.count() != 0 {
		t.Fatalf("status %s, %d forwarded", st, up.count())
	}
	e.fake.SetFail(nil)
	e.fake.SetHang(true)
	st = raw(t, e.addr, "GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-User: bob\r\n\r\n")
	if !strings.HasPrefix(st, "503") || up.count() != 0 || time.Since(start) > 3*time.Second {
		t.Fatalf("hanging backend: status %s, %d forwarded, after %s", st, up.count(), time.Since(start))
	}
	e.fake.SetHang(false)
}

func TestProxyUpstreamDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String()
	ln.Close()
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: dead, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	if st := raw(t, e.addr, "GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-User: alice\r\n\r\n"); !strings.HasPrefix(st, "502") {
		t.Fatalf("status %s", st)
	}
}

// TestAssertionSingleFlight: 100 concurrent requests from one user with an
// empty cache cause exactly one backend signature.
func TestAssertionSingleFlight(t *testing.T) {
	up := newUpstream(t, nil)
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	e.fake.SetDelay(100 * time.Millisecond) // a KMS round trip, so that the misses overlap
	var wg sync.WaitGroup
	errs := make(chan string, 100)
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 100, MaxIdleConnsPerHost: 100}}
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", "http://"+e.addr+"/", nil)
			req.Header.Set("X-Forwarded-User", "alice")
			resp, err := client.Do(req)
			if err != nil {
				errs <- err.Error()
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				errs <- resp.Status
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if n := e.fake.Signs.Load(); n != 1 {
		t.Fatalf("%d backend signatures for 100 concurrent requests of one user, want 1", n)
	}
	if up.count() != 100 {
		t.Fatalf("%d requests forwarded", up.count())
	}
	metrics := scrape(t, e)
	if !strings.Contains(metrics, "kmsgate_assertion_cache_misses_total") || !strings.Contains(metrics, "kmsgate_assertion_cache_hits_total") {
		t.Fatal("cache metrics missing")
	}
}

func scrape(t *testing.T, e *proxyEnv) string {
	resp, err := http.Get(e.adm.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestProxyRoutes(t *testing.T) {
	api := newUpstream(t, nil)
	web := newUpstream(t, nil)
	other := newUpstream(t, nil)
	e := newProxyEnv(t, gateway.ProxyConfig{
		Upstream: other.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32"),
		Routes: []gateway.Route{
			{Host: "app.example", Path: "/api/", Upstream: api.URL, Audience: "api.example", Header: "X-Pomerium-Jwt-Assertion"},
			{Host: "app.example", Upstream: web.URL},
		},
	})
	get := func(host, path string) string {
		return raw(t, e.addr, "GET "+path+" HTTP/1.1\r\nHost: "+host+"\r\nX-Forwarded-User: alice\r\nX-Pomerium-Jwt-Assertion: forged\r\n\r\n")
	}
	if st := get("app.example", "/api/v1/x"); !strings.HasPrefix(st, "200") || api.count() != 1 {
		t.Fatalf("api route: %s", st)
	}
	c := assertionOf(t, e, api.last(t), "X-Pomerium-Jwt-Assertion")
	if c["aud"].([]string)[0] != "api.example" {
		t.Fatalf("aud %v", c["aud"])
	}
	if api.last(t).Header.Get(gateway.DefaultAssertionHeader) != "" {
		t.Fatal("route header not honoured")
	}
	if st := get("APP.example:8443", "/index.html"); !strings.HasPrefix(st, "200") || web.count() != 1 {
		t.Fatalf("web route: %s", st)
	}
	// The forged X-Pomerium-Jwt-Assertion is stripped on every route.
	if web.last(t).Header.Get("X-Pomerium-Jwt-Assertion") != "" {
		t.Fatal("forged header of another route reached the upstream")
	}
	if st := get("elsewhere.example", "/"); !strings.HasPrefix(st, "200") || other.count() != 1 {
		t.Fatalf("catch-all: %s", st)
	}
}

func TestForwardAuth(t *testing.T) {
	e := newProxyEnv(t, gateway.ProxyConfig{Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32"), Header: "X-Pomerium-Jwt-Assertion"})
	req, _ := http.NewRequest("GET", "http://"+e.addr+"/v1/auth", nil)
	req.Header.Set("X-Forwarded-User", "alice")
	req.Header.Set("X-Forwarded-Host", "app.example:443")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	r := &http.Request{Header: resp.Header}
	c := assertionOf(t, e, r, "X-Pomerium-Jwt-Assertion")
	if c["aud"].([]string)[0] != "app.example" || c["sub"] != "alice" {
		t.Fatalf("claims %v", c)
	}
	if resp, _ := http.Get("http://" + e.addr + "/v1/auth"); resp.StatusCode != 401 {
		t.Fatalf("no identity: %d", resp.StatusCode)
	}
	// Without routes or --upstream, other paths are not proxied.
	if resp, _ := http.Get("http://" + e.addr + "/anything"); resp.StatusCode != 404 {
		t.Fatalf("unrouted path: %d", resp.StatusCode)
	}
}

func TestProxyWebSocketAndStreaming(t *testing.T) {
	release := make(chan struct{})
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "websocket" {
			if r.Header.Get(gateway.DefaultAssertionHeader) == "" {
				w.WriteHeader(401)
				return
			}
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			line, _ := brw.ReadString('\n')
			brw.WriteString("echo: " + line)
			brw.Flush()
			return
		}
		// Streaming: the first chunk must reach the client before the
		// handler finishes.
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		http.NewResponseController(w).Flush()
		<-release
		fmt.Fprint(w, "data: second\n\n")
	})
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})

	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: app\r\nX-Forwarded-User: alice\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	io.WriteString(c, "hello\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "echo: hello\n" {
		t.Fatalf("websocket echo: %q %v", line, err)
	}

	req, _ := http.NewRequest("GET", "http://"+e.addr+"/events", nil)
	req.Header.Set("X-Forwarded-User", "alice")
	sresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer sresp.Body.Close()
	first := make([]byte, len("data: first\n\n"))
	if _, err := io.ReadFull(sresp.Body, first); err != nil || string(first) != "data: first\n\n" {
		t.Fatalf("first chunk before the upstream finished: %q %v", first, err)
	}
	close(release)
	rest, _ := io.ReadAll(sresp.Body)
	if string(rest) != "data: second\n\n" {
		t.Fatalf("rest %q", rest)
	}
}

func TestProxyHTTP2Cleartext(t *testing.T) {
	up := newUpstream(t, nil)
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: &p}}
	req, _ := http.NewRequest("GET", "http://"+e.addr+"/h2", nil)
	req.Header.Set("X-Forwarded-User", "alice")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("status %d proto %s", resp.StatusCode, resp.Proto)
	}
	assertionOf(t, e, up.last(t), gateway.DefaultAssertionHeader)
}

// oidcIssuer is a local OIDC provider: discovery document and JWKS on
// 127.0.0.1, an RSA key to sign ID tokens.
type oidcIssuer struct {
	*httptest.Server
	key  *rsa.PrivateKey
	hang atomic.Bool   // the JWKS endpoint stops answering …
	free chan struct{} // … until this is closed
	op   *loginOP      // the sign-in endpoints (signin_test.go)
}

func newOIDCIssuer(t *testing.T) *oidcIssuer { return newOIDCIssuerOn(t, nil) }

// newOIDCIssuerOn is newOIDCIssuer serving on ln (a new loopback port when
// nil).
func newOIDCIssuerOn(t *testing.T, ln net.Listener) *oidcIssuer {
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	o := &oidcIssuer{key: k, free: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"issuer": o.URL, "jwks_uri": o.URL + "/jwks", "authorization_endpoint": o.URL + "/auth",
			"token_endpoint": o.URL + "/token", "end_session_endpoint": o.URL + "/logout",
			"id_token_signing_alg_values_supported": []string{"RS256"}})
	})
	o.op = newLoginOP(t, o, mux)
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		if o.hang.Load() {
			select {
			case <-r.Context().Done():
			case <-o.free:
			}
			return
		}
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "rsa1", Algorithm: "RS256", Use: "sig"}}})
	})
	o.Server = httptest.NewUnstartedServer(mux)
	if ln != nil {
		o.Server.Listener.Close()
		o.Server.Listener = ln
	}
	o.Server.Start()
	t.Cleanup(o.Close)
	t.Cleanup(func() { o.release() })
	return o
}

// release lets hanging JWKS requests end and answers the next ones.
func (o *oidcIssuer) release() {
	if o.hang.CompareAndSwap(true, false) {
		close(o.free)
	}
}

func (o *oidcIssuer) token(t *testing.T, alg jose.SignatureAlgorithm, key any, claims map[string]any) string {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "rsa1"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestOIDCIdentity(t *testing.T) {
	iss := newOIDCIssuer(t)
	up := newUpstream(t, nil)
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceOIDC, OIDCIssuer: iss.URL, OIDCAudience: "kmsgate-app"})
	now := time.Now()
	good := map[string]any{"iss": iss.URL, "aud": "kmsgate-app", "sub": "u-123", "email": "carol@example.com", "name": "Carol",
		"preferred_username": "carol", "groups": []string{"admins"}, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	with := func(k string, v any) map[string]any {
		c := map[string]any{}
		for a, b := range good {
			c[a] = b
		}
		c[k] = v
		return c
	}
	get := func(tok string) int {
		req, _ := http.NewRequest("GET", "http://"+e.addr+"/", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	goodTok := iss.token(t, jose.RS256, iss.key, good)
	if s := get(goodTok); s != 200 {
		t.Fatalf("good token: %d", s)
	}
	r := up.last(t)
	if r.Header.Get("Authorization") != "" {
		t.Fatal("the original token was forwarded upstream")
	}
	c := assertionOf(t, e, r, gateway.DefaultAssertionHeader)
	if c["sub"] != "u-123" || c["email"] != "carol@example.com" || c["user"] != "carol" || c["name"] != "Carol" {
		t.Fatalf("claims %v", c)
	}

	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	bad := map[string]string{
		"expired":      iss.token(t, jose.RS256, iss.key, with("exp", now.Add(-time.Hour).Unix())),
		"wrong aud":    iss.token(t, jose.RS256, iss.key, with("aud", "other-app")),
		"wrong iss":    iss.token(t, jose.RS256, iss.key, with("iss", "https://evil.example")),
		"HS256":        iss.token(t, jose.HS256, []byte("a-shared-secret-that-is-32-bytes!"), good),
		"alg none":     noneToken(good),
		"unknown key":  iss.token(t, jose.ES256, ecKey, good),
		"not a token":  "garbage",
		"empty bearer": "",
	}
	before := up.count()
	for name, tok := range bad {
		if s := get(tok); s != 401 {
			t.Errorf("%s: %d, want 401", name, s)
		}
	}
	if up.count() != before {
		t.Fatal("a refused token reached the upstream")
	}
}

// noneToken builds an unsigned token by hand: go-jose refuses to make one.
func noneToken(claims map[string]any) string {
	h, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT", "kid": "rsa1"})
	p, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	return enc(h) + "." + enc(p) + "."
}

func TestProxyConfigRefused(t *testing.T) {
	f := &backendtest.Fake{}
	kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{})
	for name, c := range map[string]struct {
		pc   gateway.ProxyConfig
		want string
	}{
		"no identity":         {gateway.ProxyConfig{Upstream: "http://127.0.0.1:1"}, "no identity source"},
		"unknown source":      {gateway.ProxyConfig{Upstream: "http://127.0.0.1:1", Identity: "magic"}, `"magic"`},
		"headers, no trusted": {gateway.ProxyConfig{Upstream: "http://127.0.0.1:1", Identity: gateway.SourceHeaders}, "--trusted-proxy"},
		"bad upstream":        {gateway.ProxyConfig{Upstream: "ftp://x", Identity: gateway.SourceClientCert}, "http:// or https://"},
		"oidc, no issuer":     {gateway.ProxyConfig{Identity: gateway.SourceOIDC}, "--oidc-issuer"},
		"bad route path":      {gateway.ProxyConfig{Identity: gateway.SourceClientCert, Routes: []gateway.Route{{Path: "api", Upstream: "http://x"}}}, "must be a normalized absolute path"},
		"negative timeout":    {gateway.ProxyConfig{Upstream: "http://127.0.0.1:1", Identity: gateway.SourceClientCert, UpstreamTimeout: -time.Second}, "--upstream-timeout"},
		"no policy":           {gateway.ProxyConfig{Upstream: "http://127.0.0.1:1", Identity: gateway.SourceClientCert}, "--upstream: no policy"},
	} {
		if c.pc.Policy.IsZero() && name != "no policy" {
			c.pc.Policy = anyone
		}
		_, err := gateway.New(context.Background(), gateway.Config{Issuer: issuer, Proxy: c.pc}, kr, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestOIDCIssuerHangs: when the issuer's JWKS stops answering, a token
// signed with a key the gateway has not fetched yet is refused with 401
// within the request timeout (500 ms here), not held open; once the issuer
// answers again, the same token passes without a restart.
func TestOIDCIssuerHangs(t *testing.T) {
	iss := newOIDCIssuer(t)
	up := newUpstream(t, nil)
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceOIDC, OIDCIssuer: iss.URL, OIDCAudience: "kmsgate-app"})
	iss.hang.Store(true)
	now := time.Now()
	tok := iss.token(t, jose.RS256, iss.key, map[string]any{"iss": iss.URL, "aud": "kmsgate-app", "sub": "u-1", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
	req, _ := http.NewRequest("GET", "http://"+e.addr+"/", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	start := time.Now()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if took := time.Since(start); resp.StatusCode != 401 || took > 3*time.Second {
		t.Fatalf("hanging issuer: %d after %s, want 401 within the request timeout", resp.StatusCode, took)
	}
	if up.count() != 0 {
		t.Fatal("a request reached the upstream without an identity")
	}
	iss.release()
	for i := 0; ; i++ {
		req, _ := http.NewRequest("GET", "http://"+e.addr+"/", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 200 {
			break
		}
		if i == 50 {
			t.Fatalf("after the issuer came back: still %d", resp.StatusCode)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAssertionFollowsRotation: after a key swap and the old version's
// disabling, the very next request of a user seen before carries an
// assertion signed with the new kid (not the cached one), and the re-mint
// is counted.
func TestAssertionFollowsRotation(t *testing.T) {
	up := newUpstream(t, nil)
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	get := func() map[string]any {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+e.addr+"/", nil)
		req.Header.Set("X-Forwarded-User", "alice")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return assertionOf(t, e, up.last(t), gateway.DefaultAssertionHeader)
	}
	kidOf := func(r *http.Request) string {
		tok := r.Header.Get(gateway.DefaultAssertionHeader)
		h, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
		var hdr struct{ Kid string }
		_ = json.Unmarshal(h, &hdr)
		return hdr.Kid
	}
	get()
	old := kidOf(up.last(t))
	get()
	if kidOf(up.last(t)) != old || e.fake.Signs.Load() != 1 {
		t.Fatalf("the second request was not served from the cache (%d signatures)", e.fake.Signs.Load())
	}
	// Swap: a new version old enough to sign at once, and the old one
	// disabled in an emergency.
	e.fake.Add("v2", time.Now().Add(-12*time.Hour))
	e.fake.SetState("v1", backends.StateDisabled)
	if err := e.kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	get()
	if got := kidOf(up.last(t)); got == old || got != e.kr.ActiveKID() {
		t.Fatalf("after the swap the assertion has kid %s, want the new active %s", got, e.kr.ActiveKID())
	}
	if n := e.fake.Signs.Load(); n != 2 {
		t.Fatalf("%d signatures, want 2", n)
	}
	get() // and is cached again
	if n := e.fake.Signs.Load(); n != 2 {
		t.Fatalf("%d signatures after the re-mint, want 2", n)
	}
	if m := scrape(t, e); !strings.Contains(m, "kmsgate_assertion_rotation_remints_total 1") {
		t.Errorf("rotation re-mint not counted")
	}
}

// TestAssertionsForClocksBehind: a verifier with zero leeway whose clock is
// 1 s behind accepts 100 of 100 fresh assertions (iat and nbf are set
// jwks.ClockSkew before the moment of signing).
func TestAssertionsForClocksBehind(t *testing.T) {
	up := newUpstream(t, nil)
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	set, err := jwk.Parse(e.kr.State().Document.JSON)
	if err != nil {
		t.Fatal(err)
	}
	behind := jwxjwt.ClockFunc(func() time.Time { return time.Now().Add(-time.Second) })
	accepted := 0
	for i := 0; i < 100; i++ {
		req, _ := http.NewRequest("GET", "http://"+e.addr+"/", nil)
		req.Header.Set("X-Forwarded-User", fmt.Sprintf("user-%d", i)) // a fresh assertion each
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		tok := up.last(t).Header.Get(gateway.DefaultAssertionHeader)
		if _, err := jwxjwt.Parse([]byte(tok), jwxjwt.WithKeySet(set), jwxjwt.WithValidate(true), jwxjwt.WithClock(behind), jwxjwt.WithAcceptableSkew(0),
			jwxjwt.WithIssuer(issuer)); err != nil {
			t.Errorf("assertion %d refused by a verifier 1 s behind: %v", i, err)
			continue
		}
		accepted++
	}
	if accepted != 100 {
		t.Fatalf("%d of 100 accepted", accepted)
	}
}

// TestOIDCIssuerDownAtStart: an identity provider that is down when the
// gateway starts makes it start unready (not fail): oidc requests get 503
// with Retry-After, readiness names the issuer, and once the issuer
// appears the gateway becomes ready and judges tokens, without a restart.
func TestOIDCIssuerDownAtStart(t *testing.T) {
	ln, err := listen()
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing answers there yet
	issuerURL := "http://" + addr
	up := newUpstream(t, nil)
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceOIDC, OIDCIssuer: issuerURL, OIDCAudience: "kmsgate-app"})
	ready := func() (int, string) {
		resp, err := http.Get(e.adm.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := ready(); code != 503 || !strings.Contains(body, "oidc issuer "+issuerURL) {
		t.Fatalf("readiness with the issuer down: %d %s", code, body)
	}
	req, _ := http.NewRequest("GET", "http://"+e.addr+"/", nil)
	req.Header.Set("Authorization", "Bearer x.y.z")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("oidc request with the issuer down: %d, want 503 with Retry-After", resp.StatusCode)
	}
	// The issuer comes up on its address.
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("the issuer's port was taken meanwhile: %v", err)
	}
	iss := newOIDCIssuerOn(t, ln)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if code, _ := ready(); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not ready 20 s after the issuer came up")
		}
		time.Sleep(100 * time.Millisecond) // polling readiness, bounded by the deadline
	}
	now := time.Now()
	tok := iss.token(t, jose.RS256, iss.key, map[string]any{"iss": iss.URL, "aud": "kmsgate-app", "sub": "u-1", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
	req, _ = http.NewRequest("GET", "http://"+e.addr+"/", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("oidc request once the issuer is up: %d", resp.StatusCode)
	}
}
