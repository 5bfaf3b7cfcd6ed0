package gateway_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/gateway"
	"github.com/kmsgate/kmsgate/gateway/internal/wire"
	"github.com/kmsgate/kmsgate/gateway/session"
	"github.com/kmsgate/kmsgate/gateway/signin"
	"github.com/kmsgate/kmsgate/jwks"
)

// seen is what an upstream received of one request.
type seen struct {
	App, Method, URI, Host string
	// Header holds every field but the framing (Content-Length,
	// Transfer-Encoding) and X-Forwarded-Proto, compared on its own.
	Header  http.Header
	Proto   string // X-Forwarded-Proto
	Body    string
	Length  bool // the body came with a length
	Trailer http.Header
}

// recorder is an upstream app that records the requests it receives.
type recorder struct {
	mu   sync.Mutex
	reqs []seen
}

func (rec *recorder) app(t *testing.T, name string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h := r.Header.Clone()
		proto := h.Get("X-Forwarded-Proto")
		for _, k := range []string{"Content-Length", "Transfer-Encoding", "X-Forwarded-Proto"} {
			delete(h, k)
		}
		var trailer http.Header
		for k, v := range r.Trailer {
			if len(v) > 0 {
				if trailer == nil {
					trailer = http.Header{}
				}
				trailer[k] = v
			}
		}
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, seen{App: name, Method: r.Method, URI: r.RequestURI, Host: r.Host, Header: h, Proto: proto,
			Body: string(body), Length: r.ContentLength >= 0, Trailer: trailer})
		rec.mu.Unlock()
		w.Header().Set("X-App", name)
		fmt.Fprintf(w, "%s saw %s", name, r.RequestURI)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func (rec *recorder) take() []seen {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	r := rec.reqs
	rec.reqs = nil
	return r
}

// outcome is what one request led to, as the client and the upstream saw
// it.
type outcome struct {
	Refused  bool   // 400, or refused at the protocol level (HTTP/2 reset)
	Status   int    // else the status
	Code     string // the "code" of a JSON error answer
	Body     string // the answer's body, unless it differs by design (tokens)
	Answer   map[string]string
	Upstream []seen
}

// transport is one way of sending a request to the gateway.
type transport struct {
	name, proto string // proto: the X-Forwarded-Proto the upstream must see
	send        func(wire.Request) (*wire.Response, error)
}

// TestParity sends one table of requests over HTTP/1.1, h2c with prior
// knowledge, HTTP/1.1 over TLS and h2 over TLS: every request must get the
// same answer on each, and the upstream must see the same request line,
// Host, header fields and body. The table covers every endpoint of the
// public port (key set, discovery, sign API, forward-auth, the proxy,
// errors), so both servers' adapters are exercised in the default run.
func TestParity(t *testing.T) {
	rec := &recorder{}
	admin, web := rec.app(t, "admin"), rec.app(t, "web")
	f := &backendtest.Fake{}
	f.Add("v1", time.Now().Add(-24*time.Hour))
	logs := &backendtest.SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	op := newOIDCIssuer(t)
	sealer, _ := session.NewSealer(sessionKey(9))
	srv, err := gateway.New(context.Background(), gateway.Config{
		Issuer: issuer, Prepublish: time.Hour, RequestTimeout: 2 * time.Second, MaxBody: 4096, Logger: log,
		Clients: []gateway.Client{{Name: "app", TokenSHA256: tokenHash(clientToken), Audiences: []string{"billing"},
			Subjects: []string{"svc-*"}, MaxTTL: 15 * time.Minute, Claims: []string{"scope"}}},
		Proxy: gateway.ProxyConfig{
			Policy: anyone,
			Routes: []gateway.Route{{Path: "/admin/", Upstream: admin}, {Host: "api.example", Upstream: admin, Audience: "api"},
				{Path: "/staff/", Upstream: admin, Policy: gateway.MustParsePolicy("{allow: {groups: {has: staff}}, deny: {email: {is: mallory@example.com}}}"),
					ClaimHeaders: map[string]string{"email": "X-Kmsgate-Claim-Email", "groups": "X-Kmsgate-Claim-Groups"}, GroupsFilter: gateway.GroupsFilter{Pattern: "staff"}},
				{Path: "/app/", Upstream: web, Identity: gateway.SourceOIDCLogin}},
			Upstream: web, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32"),
			OIDCIssuer: op.URL, SignIn: signin.Config{ClientID: "kmsgate", Sealer: sealer, Cookie: session.Cookies{Name: "_kmsgate"}},
		},
	}, kr, nil)
	if err != nil {
		t.Fatal(err)
	}
	pki := newTestPKI(t)
	clear := serve(t, srv, nil)
	secure := serve(t, srv, &tls.Config{Certificates: []tls.Certificate{pki.server}, MinVersion: tls.VersionTLS12})
	clientTLS := &tls.Config{RootCAs: pki.pool, ServerName: "127.0.0.1"}
	transports := []transport{
		{"HTTP/1.1", "http", func(r wire.Request) (*wire.Response, error) { return wire.HTTP1(wire.TCP(clear, ""), r) }},
		{"h2c", "http", func(r wire.Request) (*wire.Response, error) { return wire.HTTP2(wire.TCP(clear, ""), "http", r) }},
		{"HTTP/1.1+TLS", "https", func(r wire.Request) (*wire.Response, error) {
			return wire.HTTP1(wire.TLS(secure, clientTLS, "http/1.1"), r)
		}},
		{"h2+TLS", "https", func(r wire.Request) (*wire.Response, error) {
			return wire.HTTP2(wire.TLS(secure, clientTLS, "h2"), "https", r)
		}},
	}
	// A browser session, made once over HTTP/1.1, for the session cases.
	b := newBrowser(t)
	b.signIn("http://"+clear, "/app/")
	var sessionCookie string
	for _, ck := range b.jar.Cookies(mustURL("http://" + clear)) {
		if ck.Name == "_kmsgate" {
			sessionCookie = ck.Value
		}
	}
	if sessionCookie == "" {
		t.Fatal("no session cookie")
	}
	tampered := []byte(sessionCookie)
	tampered[10] ^= 1
	rec.take()
	user := [][2]string{{"X-Forwarded-User", "alice"}}
	with := func(h ...[2]string) [][2]string { return append(slices.Clone(user), h...) }
	bearer := [2]string{"Authorization", "Bearer " + clientToken}
	staff, aliceMail := [2]string{"X-Forwarded-Groups", "eng, staff"}, [2]string{"X-Forwarded-Email", "alice@example.com"}
	etag := kr.State().Document.ETag

	for _, c := range []struct {
		name string
		req  wire.Request
		// what the table expects besides parity: the app and request
		// target the upstream sees, or the status of an answer.
		app, uri string
		status   int
	}{
		// The path rule: one normalized path, matched and forwarded.
		{name: "dot-segments into admin", req: wire.Request{Method: "GET", Path: "/x/../admin/users", Header: user}, app: "admin", uri: "/admin/users"},
		{name: "dot-segments out of admin", req: wire.Request{Method: "GET", Path: "/admin/../x", Header: user}, app: "web", uri: "/x"},
		{name: "repeated slashes", req: wire.Request{Method: "GET", Path: "//admin/users", Header: user}, app: "admin", uri: "/admin/users"},
		{name: "encoded dots", req: wire.Request{Method: "GET", Path: "/%2e%2e/admin/users", Header: user}, app: "admin", uri: "/admin/users"},
		{name: "mixed encoded dots", req: wire.Request{Method: "GET", Path: "/admin/.%2E/%2E/admin//x", Header: user}, app: "admin", uri: "/admin/x"},
		{name: "encoded unreserved", req: wire.Request{Method: "GET", Path: "/%61dmin/%75sers", Header: user}, app: "admin", uri: "/admin/users"},
		{name: "encoded slash", req: wire.Request{Method: "GET", Path: "/admin%2Fusers", Header: user}, status: 400},
		{name: "encoded slash lower", req: wire.Request{Method: "GET", Path: "/admin%2fusers", Header: user}, status: 400},
		{name: "encoded backslash", req: wire.Request{Method: "GET", Path: "/admin%5cusers", Header: user}, status: 400},
		{name: "raw backslash", req: wire.Request{Method: "GET", Path: "/admin\\..\\x", Header: user}, status: 400},
		{name: "bad escape", req: wire.Request{Method: "GET", Path: "/a%zz", Header: user}, status: 400},
		{name: "dot segment and query", req: wire.Request{Method: "GET", Path: "/a/./b?q=1;2", Header: user}, app: "web", uri: "/a/b?q=1;2"},
		{name: "query byte for byte", req: wire.Request{Method: "GET", Path: "/a?x=%zz&y=/../%2F&z=a+b&&", Header: user}, app: "web", uri: "/a?x=%zz&y=/../%2F&z=a+b&&"},
		{name: "reserved escapes kept", req: wire.Request{Method: "GET", Path: "/a%3fb%23c%25d", Header: user}, app: "web", uri: "/a%3Fb%23c%25d"},
		{name: "characters encoded", req: wire.Request{Method: "GET", Path: "/a|b{c}", Header: user}, app: "web", uri: "/a%7Cb%7Bc%7D"},
		{name: "prefix without slash", req: wire.Request{Method: "GET", Path: "/admin", Header: user}, app: "admin", uri: "/admin"},
		{name: "case matters", req: wire.Request{Method: "GET", Path: "/ADMIN/users", Header: user}, app: "web", uri: "/ADMIN/users"},
		{name: "asterisk", req: wire.Request{Method: "OPTIONS", Path: "*", Header: user}, status: 400},
		// Hosts: case and a final dot are the same host.
		{name: "host route", req: wire.Request{Method: "GET", Authority: "API.Example.:8080", Path: "/v", Header: user}, app: "admin", uri: "/v"},
		{name: "bad host", req: wire.Request{Method: "GET", Authority: "a b", Path: "/v", Header: user}, status: 400},
		// Headers a client must not send are stripped in every variant.
		{name: "forged assertion variants", req: wire.Request{Method: "GET", Path: "/p", Header: with(
			[2]string{"X-Kmsgate-Jwt-Assertion", "forged"}, [2]string{"x_kmsgate_jwt_assertion", "forged"},
			[2]string{"X.Kmsgate.Jwt.Assertion", "forged"}, [2]string{"X-KMSGATE-JWT_assertion", "forged"})}, app: "web", uri: "/p"},
		{name: "identity variants from a trusted peer", req: wire.Request{Method: "GET", Path: "/p", Header: with(
			[2]string{"X_Forwarded_User", "mallory"}, [2]string{"X.Forwarded.Email", "m@evil"}, [2]string{"X-Forwarded-Groups", "eng"})}, app: "web", uri: "/p"},
		{name: "forwarding headers", req: wire.Request{Method: "GET", Path: "/p", Header: with(
			[2]string{"X-Forwarded-For", "10.9.9.9"}, [2]string{"X-Forwarded-Host", "evil"}, [2]string{"X-Forwarded-Proto", "https"},
			[2]string{"Forwarded", "for=1.2.3.4"}, [2]string{"X_Real_IP", "1.2.3.4"}, [2]string{"X-Forwarded-Port", "1"})}, app: "web", uri: "/p"},
		{name: "header name with a space", req: wire.Request{Method: "GET", Path: "/p", Header: with([2]string{"X-Kmsgate-Jwt Assertion", "forged"})}, status: 400},
		{name: "header name with a colon", req: wire.Request{Method: "GET", Path: "/p", Header: with([2]string{"X(y)", "1"})}, status: 400},
		{name: "no identity", req: wire.Request{Method: "GET", Path: "/p"}, status: 401},
		// Bodies and trailers.
		{name: "body with length", req: wire.Request{Method: "POST", Path: "/form", Header: user, Body: "a=1&b=2"}, app: "web", uri: "/form"},
		{name: "body without length", req: wire.Request{Method: "POST", Path: "/form", Header: user, Body: "streamed", Chunked: true}, app: "web", uri: "/form"},
		{name: "trailers never forwarded", req: wire.Request{Method: "POST", Path: "/form", Header: with([2]string{"Trailer", "X-Kmsgate-Jwt-Assertion, X-Check"}),
			Body: "x", Trailer: [][2]string{{"X-Kmsgate-Jwt-Assertion", "forged"}, {"X-Check", "1"}}}, app: "web", uri: "/form"},
		// The gateway's own endpoints.
		{name: "key set", req: wire.Request{Method: "GET", Path: "/.well-known/jwks.json"}, status: 200},
		{name: "key set dotted", req: wire.Request{Method: "GET", Path: "/.well-known/x/../jwks.json"}, status: 200},
		{name: "key set HEAD", req: wire.Request{Method: "HEAD", Path: "/.well-known/jwks.json"}, status: 200},
		{name: "key set 304", req: wire.Request{Method: "GET", Path: "/.well-known/jwks.json", Header: [][2]string{{"If-None-Match", etag}}}, status: 304},
		{name: "key set preflight", req: wire.Request{Method: "OPTIONS", Path: "/.well-known/jwks.json"}, status: 204},
		{name: "key set POST", req: wire.Request{Method: "POST", Path: "/.well-known/jwks.json", Body: "x"}, status: 405},
		{name: "discovery", req: wire.Request{Method: "GET", Path: "/.well-known/openid-configuration"}, status: 200},
		{name: "other well-known is proxied", req: wire.Request{Method: "GET", Path: "/.well-known/security.txt", Header: user}, app: "web", uri: "/.well-known/security.txt"},
		{name: "sign", req: wire.Request{Method: "POST", Path: "/v1/sign", Header: [][2]string{bearer}, Body: `{"claims":{"sub":"svc-1","aud":"billing"}}`}, status: 200},
		{name: "sign dotted path", req: wire.Request{Method: "POST", Path: "//v1/./x/../sign", Header: [][2]string{bearer}, Body: `{"claims":{"sub":"svc-1","aud":"billing"}}`}, status: 200},
		{name: "sign chunked", req: wire.Request{Method: "POST", Path: "/v1/sign", Header: [][2]string{bearer}, Body: `{"claims":{"sub":"svc-1","aud":"billing"}}`, Chunked: true}, status: 200},
		{name: "sign reserved claim case", req: wire.Request{Method: "POST", Path: "/v1/sign", Header: [][2]string{bearer}, Body: `{"claims":{"sub":"svc-1","aud":"billing","Exp":1}}`}, status: 400},
		{name: "sign duplicate key", req: wire.Request{Method: "POST", Path: "/v1/sign", Header: [][2]string{bearer}, Body: `{"claims":{"sub":"svc-1","aud":"billing","sub":"svc-2"}}`}, status: 400},
		{name: "sign unauthenticated", req: wire.Request{Method: "POST", Path: "/v1/sign", Body: `{}`}, status: 401},
		{name: "sign GET", req: wire.Request{Method: "GET", Path: "/v1/sign", Header: [][2]string{bearer}}, status: 405},
		{name: "forward-auth", req: wire.Request{Method: "GET", Path: "/v1/auth", Header: with([2]string{"X-Forwarded-Host", "App.Example:443"})}, status: 200},
		{name: "forward-auth prefix", req: wire.Request{Method: "GET", Path: "/v1/auth/some/path", Header: user}, status: 200},
		{name: "forward-auth refused", req: wire.Request{Method: "GET", Path: "/v1/auth"}, status: 401},
		{name: "own namespace", req: wire.Request{Method: "GET", Path: "/v1/other", Header: user}, status: 404},
		{name: "metrics are not public", req: wire.Request{Method: "GET", Path: "/metrics", Header: user}, app: "web", uri: "/metrics"},
		{name: "health is not public", req: wire.Request{Method: "GET", Path: "/healthz", Header: user}, app: "web", uri: "/healthz"},
		{name: "connect", req: wire.Request{Method: "CONNECT", Path: "/x", Header: user}, status: 400},
		// Browser sign-in: the redirect, the session cookie (never forwarded;
		// the app's own cookies are), and the sign-in endpoints.
		{name: "sign-in redirect", req: wire.Request{Method: "GET", Path: "/app/page?x=1", Header: with([2]string{"Accept", "text/html"})}, status: 302},
		{name: "sign-in not a browser", req: wire.Request{Method: "GET", Path: "/app/page", Header: with([2]string{"Accept", "application/json"})}, status: 401},
		{name: "session cookie", req: wire.Request{Method: "GET", Path: "/app/page", Header: with([2]string{"Cookie", "app=1; _kmsgate=" + sessionCookie + "; theme=dark"})}, app: "web", uri: "/app/page"},
		{name: "session cookie split", req: wire.Request{Method: "GET", Path: "/app/page", Header: with([2]string{"Cookie", "_kmsgate=" + sessionCookie}, [2]string{"Cookie", "app=1"})}, app: "web", uri: "/app/page"},
		{name: "session cookie on another route", req: wire.Request{Method: "GET", Path: "/other", Header: with([2]string{"Cookie", "_kmsgate=" + sessionCookie + "; app=1"})}, app: "web", uri: "/other"},
		{name: "sign-in tampered cookie", req: wire.Request{Method: "GET", Path: "/app/page", Header: with([2]string{"Accept", "text/html"}, [2]string{"Cookie", "_kmsgate=" + string(tampered)})}, status: 302},
		{name: "sign-in callback without state", req: wire.Request{Method: "GET", Path: "/v1/oidc/callback?code=x&state=y"}, status: 400},
		{name: "sign-in callback POST", req: wire.Request{Method: "POST", Path: "/v1/oidc/callback", Body: "x"}, status: 405},
		{name: "sign-in logout", req: wire.Request{Method: "GET", Path: "/v1/oidc/logout"}, status: 302},
		{name: "sign-in login open redirect", req: wire.Request{Method: "GET", Path: "/v1/oidc/login?rd=%2F%2Fevil.example"}, status: 302},
		// Route policies: judged once, the same on every protocol, for the
		// proxy and forward-auth; claim headers set by the gateway only.
		{name: "policy allows", req: wire.Request{Method: "GET", Path: "/staff/x", Header: with(staff, aliceMail,
			[2]string{"X-Kmsgate-Claim-Email", "forged"}, [2]string{"x_kmsgate_claim_groups", "forged"}, [2]string{"X.Kmsgate.Claim.Email", "forged"})}, app: "admin", uri: "/staff/x"},
		{name: "policy refuses", req: wire.Request{Method: "GET", Path: "/staff/x", Header: with(aliceMail)}, status: 403},
		{name: "policy refuses a browser", req: wire.Request{Method: "GET", Path: "/staff/x", Header: with([2]string{"Accept", "text/html"})}, status: 403},
		{name: "policy deny wins", req: wire.Request{Method: "GET", Path: "/staff/x", Header: with(staff, [2]string{"X-Forwarded-Email", "Mallory@Example.com"})}, status: 403},
		{name: "policy after dot-segments", req: wire.Request{Method: "GET", Path: "/admin/%2e%2e/staff/x", Header: with(aliceMail)}, status: 403},
		{name: "forward-auth policy allows", req: wire.Request{Method: "GET", Path: "/v1/auth", Header: with(staff, aliceMail,
			[2]string{"X-Forwarded-Host", "app.example"}, [2]string{"X-Forwarded-Uri", "/staff/a?b=c"})}, status: 200},
		{name: "forward-auth policy refuses", req: wire.Request{Method: "GET", Path: "/v1/auth", Header: with(
			[2]string{"X-Forwarded-Host", "app.example"}, [2]string{"X-Original-Uri", "/x/../staff/a"})}, status: 403},
		{name: "forward-auth policy by path", req: wire.Request{Method: "GET", Path: "/v1/auth/staff/a", Header: with(staff)}, status: 200},
		{name: "forward-auth policy encoded slash", req: wire.Request{Method: "GET", Path: "/v1/auth", Header: with(
			[2]string{"X-Forwarded-Host", "app.example"}, [2]string{"X-Forwarded-Uri", "/staff%2Fa"})}, status: 400},
	} {
		t.Run(c.name, func(t *testing.T) {
			var first outcome
			for i, tr := range transports {
				req := c.req
				if req.Authority == "" {
					req.Authority = "app.example"
				}
				resp, err := tr.send(req)
				if err != nil {
					t.Fatalf("%s: %v", tr.name, err)
				}
				o := outcomeOf(resp, rec.take(), c.name)
				for _, u := range o.Upstream {
					if u.Proto != tr.proto {
						t.Errorf("%s: upstream saw X-Forwarded-Proto %q, want %q", tr.name, u.Proto, tr.proto)
					}
				}
				for j := range o.Upstream {
					o.Upstream[j].Proto = ""
				}
				if i == 0 {
					first = o
					checkExpected(t, c.name, o, c.app, c.uri, c.status)
					if c.name == "forward-auth policy allows" && (o.Answer["X-Kmsgate-Claim-Groups"] != "staff" || o.Answer["X-Kmsgate-Claim-Email"] != "alice@example.com" || o.Answer["assertion"] != "set") {
						t.Errorf("forward-auth answer %v, want the claim headers and the assertion", o.Answer)
					}
					continue
				}
				if !reflect.DeepEqual(o, first) {
					t.Errorf("%s differs from %s:\n%s: %+v\n%s: %+v", tr.name, transports[0].name, transports[0].name, first, tr.name, o)
				}
			}
		})
	}
	if l := logs.String(); hasToken(l) || strings.Contains(l, clientToken) {
		t.Errorf("a token reached the logs")
	}
}

// outcomeOf reduces an answer to what must agree across protocols.
func outcomeOf(resp *wire.Response, up []seen, name string) outcome {
	o := outcome{Upstream: up, Answer: map[string]string{}}
	if resp.Reset || resp.Status == 400 {
		o.Refused = true
		return o
	}
	o.Status = resp.Status
	var e struct{ Code string }
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") && json.Unmarshal(resp.Body, &e) == nil {
		o.Code = e.Code
	}
	if !strings.HasPrefix(name, "sign") && !strings.HasPrefix(name, "forward-auth") {
		o.Body = string(resp.Body)
	}
	for _, k := range []string{"Content-Type", "Etag", "Cache-Control", "Access-Control-Allow-Origin", "Allow", "Retry-After", "Www-Authenticate", "X-App",
		"Vary", "X-Kmsgate-Claim-Email", "X-Kmsgate-Claim-Groups"} {
		if v := resp.Header.Get(k); v != "" {
			o.Answer[k] = v
		}
	}
	// A sign-in redirect differs by design in its state, nonce and PKCE
	// challenge (random) and its redirect_uri (the scheme): the provider's
	// endpoint must agree. Cookies: their names and attributes.
	if loc := resp.Header.Get("Location"); loc != "" {
		o.Answer["Location"], _, _ = strings.Cut(loc, "?")
	}
	var cookies []string
	for _, c := range resp.Header.Values("Set-Cookie") {
		name, _, _ := strings.Cut(c, "=")
		_, attrs, _ := strings.Cut(c, ";")
		if i := strings.Index(attrs, "Expires="); i >= 0 {
			attrs = attrs[:i] // a time
		}
		cookies = append(cookies, name+";"+attrs)
	}
	slices.Sort(cookies)
	if len(cookies) > 0 {
		o.Answer["Set-Cookie"] = strings.Join(cookies, " | ")
	}
	if a := resp.Header.Get(gateway.DefaultAssertionHeader); a != "" {
		o.Answer["assertion"] = "set"
	}
	return o
}

// checkExpected checks one outcome against the table's expectation.
func checkExpected(t *testing.T, name string, o outcome, app, uri string, status int) {
	t.Helper()
	if app == "" {
		if len(o.Upstream) != 0 {
			t.Errorf("%s reached the upstream: %+v", name, o.Upstream)
		}
		if status == 400 {
			if !o.Refused {
				t.Errorf("%s: status %d, want 400", name, o.Status)
			}
		} else if o.Status != status {
			t.Errorf("%s: status %d (%s), want %d", name, o.Status, o.Code, status)
		}
		return
	}
	if len(o.Upstream) != 1 {
		t.Fatalf("%s: upstream saw %d requests (answer %d %s), want 1", name, len(o.Upstream), o.Status, o.Code)
	}
	u := o.Upstream[0]
	if u.App != app || u.URI != uri {
		t.Errorf("%s: reached %s %s, want %s %s", name, u.App, u.URI, app, uri)
	}
	if u.Trailer != nil {
		t.Errorf("%s: trailers reached the upstream: %v", name, u.Trailer)
	}
	h := u.Header
	if got := h.Values(gateway.DefaultAssertionHeader); len(got) != 1 || !strings.HasPrefix(got[0], "eyJ") {
		t.Errorf("%s: assertion %q", name, got)
	}
	for k := range h {
		if k != gateway.DefaultAssertionHeader && (strings.EqualFold(strings.NewReplacer("_", "-", ".", "-").Replace(k), gateway.DefaultAssertionHeader) ||
			strings.Contains(strings.ToLower(k), "forwarded_") || strings.Contains(strings.ToLower(k), "forwarded.") || strings.EqualFold(k, "Forwarded") ||
			strings.EqualFold(k, "X-Real-Ip") || strings.EqualFold(k, "X-Forwarded-Port") || strings.EqualFold(k, "Trailer") || strings.EqualFold(k, "X-Check")) {
			t.Errorf("%s: %s reached the upstream", name, k)
		}
	}
	if got := h.Values("X-Forwarded-For"); !slices.Equal(got, []string{"10.9.9.9, 127.0.0.1"}) && !slices.Equal(got, []string{"127.0.0.1"}) {
		t.Errorf("%s: X-Forwarded-For %q", name, got)
	}
	for k, v := range h {
		if slices.Contains(v, "forged") {
			t.Errorf("%s: a client's %s reached the upstream", name, k)
		}
	}
	if got := strings.Join(h.Values("Cookie"), "; "); strings.Contains(got, "_kmsgate") || (strings.HasPrefix(name, "session cookie") && !strings.Contains(got, "app=1")) {
		t.Errorf("%s: the upstream got cookies %q", name, got)
	}
	if got := h.Get("X-Kmsgate-Claim-Groups"); got != "" && got != "staff" {
		t.Errorf("%s: groups claim header %q, want the filtered staff", name, got)
	}
	if got := h.Get("X-Forwarded-User"); got != "alice" {
		t.Errorf("%s: X-Forwarded-User %q", name, got)
	}
}
