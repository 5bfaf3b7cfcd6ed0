package gateway_test

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/kmsgate/kmsgate/gateway"
	"github.com/kmsgate/kmsgate/gateway/session"
	"github.com/kmsgate/kmsgate/gateway/signin"
)

// loginOP gives the test issuer the endpoints of browser sign-in: an
// authorization endpoint that signs the current user in at once, a token
// endpoint (authorization_code with PKCE S256, single-use codes;
// refresh_token), and end_session.
type loginOP struct {
	iss      *oidcIssuer
	mu       sync.Mutex
	codes    map[string]grant // by code
	refresh  map[string]grant // by refresh token
	user     map[string]any   // the claims of whoever signs in next
	idTTL    time.Duration
	backdate time.Duration // ID tokens are issued this long ago
	failNext atomic.Bool   // the token endpoint answers 400 invalid_grant
	badNonce atomic.Bool   // the ID token carries another nonce
	tokens   atomic.Int64
}

type grant struct {
	claims             map[string]any
	nonce, challenge   string
	clientID, redirect string
}

func newLoginOP(t *testing.T, o *oidcIssuer, mux *http.ServeMux) *loginOP {
	op := &loginOP{iss: o, codes: map[string]grant{}, refresh: map[string]grant{}, idTTL: time.Hour,
		user: map[string]any{"sub": "u-alice", "email": "alice@example.com", "name": "Alice", "preferred_username": "alice", "groups": []string{"staff", "admins"}}}
	mux.HandleFunc("/auth", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("response_type") != "code" || q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("nonce") == "" || q.Get("state") == "" {
			http.Error(w, "bad authorization request: "+r.URL.RawQuery, 400)
			return
		}
		code := randomText()
		op.mu.Lock()
		op.codes[code] = grant{claims: op.user, nonce: q.Get("nonce"), challenge: q.Get("code_challenge"), clientID: q.Get("client_id"), redirect: q.Get("redirect_uri")}
		op.mu.Unlock()
		http.Redirect(w, r, q.Get("redirect_uri")+"?code="+code+"&state="+url.QueryEscape(q.Get("state")), http.StatusFound)
	})
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		fail := func(code string) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			json.NewEncoder(w).Encode(map[string]string{"error": code})
		}
		if op.failNext.Load() {
			fail("invalid_grant")
			return
		}
		op.mu.Lock()
		var g grant
		var ok bool
		switch r.Form.Get("grant_type") {
		case "authorization_code":
			g, ok = op.codes[r.Form.Get("code")]
			delete(op.codes, r.Form.Get("code")) // single use
			sum := sha256.Sum256([]byte(r.Form.Get("code_verifier")))
			if ok && base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge {
				ok = false
			}
			if ok && r.Form.Get("redirect_uri") != g.redirect {
				ok = false
			}
		case "refresh_token":
			g, ok = op.refresh[r.Form.Get("refresh_token")]
			delete(op.refresh, r.Form.Get("refresh_token")) // rotated
			g.nonce = ""
		}
		rt := randomText()
		if ok {
			op.refresh[rt] = g
		}
		idTTL, backdate := op.idTTL, op.backdate
		op.mu.Unlock()
		if !ok {
			fail("invalid_grant")
			return
		}
		op.tokens.Add(1)
		now := time.Now().Add(-backdate)
		claims := map[string]any{"iss": o.URL, "aud": "kmsgate", "iat": now.Unix(), "exp": now.Add(idTTL).Unix()}
		for k, v := range g.claims {
			claims[k] = v
		}
		if g.nonce != "" {
			claims["nonce"] = g.nonce
			if op.badNonce.Load() {
				claims["nonce"] = "another"
			}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"access_token": "at-" + randomText(), "token_type": "Bearer", "expires_in": int(idTTL.Seconds()),
			"refresh_token": rt, "id_token": o.token(t, jose.RS256, o.key, claims)})
	})
	mux.HandleFunc("/logout", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "signed out at the provider") })
	return op
}

// accessToken matches the test provider's access tokens.
var accessToken = regexp.MustCompile(`at-[A-Za-z0-9_-]{22}`)

// lifetimes sets the ID tokens' lifetime and how long ago they are issued.
func (op *loginOP) lifetimes(ttl, backdate time.Duration) {
	op.mu.Lock()
	op.idTTL, op.backdate = ttl, backdate
	op.mu.Unlock()
}

func randomText() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// browserClient is a browser: cookies kept, redirects not followed (each
// step is checked), Accept: text/html.
type browserClient struct {
	t   *testing.T
	c   *http.Client
	jar *cookiejar.Jar
}

func newBrowser(t *testing.T) *browserClient {
	jar, _ := cookiejar.New(nil)
	return &browserClient{t: t, jar: jar, c: &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *browserClient) get(u string, hdr ...string) (*http.Response, string) {
	b.t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

// signIn opens path on the gateway, is sent to the provider, comes back
// through the callback and lands on path with a session.
func (b *browserClient) signIn(gw, path string) *http.Response {
	b.t.Helper()
	resp, body := b.get(gw + path)
	if resp.StatusCode != 302 {
		b.t.Fatalf("%s without a session: %s %s", path, resp.Status, body)
	}
	auth := resp.Header.Get("Location")
	resp, _ = b.get(auth)
	if resp.StatusCode != 302 {
		b.t.Fatalf("provider: %s", resp.Status)
	}
	cb := resp.Header.Get("Location")
	resp, body = b.get(cb)
	if resp.StatusCode != 302 || resp.Header.Get("Location") != path {
		b.t.Fatalf("callback: %s to %q, want %q: %s", resp.Status, resp.Header.Get("Location"), path, body)
	}
	return resp
}

func signInEnv(t *testing.T, extra func(*gateway.ProxyConfig)) (*proxyEnv, *oidcIssuer, *upstream) {
	t.Helper()
	iss := newOIDCIssuer(t)
	up := newUpstream(t, nil)
	sealer, err := session.NewSealer(sessionKey(1))
	if err != nil {
		t.Fatal(err)
	}
	pc := gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceOIDCLogin, OIDCIssuer: iss.URL,
		SignIn: signin.Config{ClientID: "kmsgate", ClientSecret: "s3cret", Sealer: sealer, Cookie: session.Cookies{Name: "_kmsgate"}}}
	if extra != nil {
		extra(&pc)
	}
	return newProxyEnv(t, pc), iss, up
}

func sessionKey(n byte) []byte {
	k := make([]byte, session.KeySize)
	for i := range k {
		k[i] = n
	}
	return k
}

// TestSignInFlow: a browser is sent to the provider with PKCE, state and
// nonce, comes back with a session and reaches the app with an assertion
// of its identity; the gateway's cookies and the provider's tokens never
// reach the app; requests that are not a browser's get 401; logout ends
// the session here and at the provider.
func TestSignInFlow(t *testing.T) {
	e, iss, up := signInEnv(t, nil)
	gw := "http://" + e.addr
	b := newBrowser(t)
	resp, _ := b.get(gw + "/docs/a?b=c")
	loc, _ := url.Parse(resp.Header.Get("Location"))
	q := loc.Query()
	if resp.StatusCode != 302 || !strings.HasPrefix(loc.String(), iss.URL+"/auth?") || q.Get("client_id") != "kmsgate" || q.Get("code_challenge_method") != "S256" ||
		q.Get("redirect_uri") != gw+"/v1/oidc/callback" || len(q.Get("state")) < 40 || len(q.Get("nonce")) < 40 || !strings.Contains(q.Get("scope"), "offline_access") {
		t.Fatalf("redirect to sign in: %s %s", resp.Status, loc)
	}
	if c := resp.Header.Get("Set-Cookie"); !strings.Contains(c, "_kmsgate_auth=") || !strings.Contains(c, "HttpOnly") || !strings.Contains(c, "SameSite=Lax") {
		t.Errorf("sign-in state cookie %q", c)
	}
	b = newBrowser(t)
	b.signIn(gw, "/docs/a?b=c")
	u, _ := url.Parse(gw)
	b.jar.SetCookies(u, []*http.Cookie{{Name: "app", Value: "1"}})
	resp, body := b.get(gw + "/docs/a?b=c")
	if resp.StatusCode != 200 || body != "upstream ok" {
		t.Fatalf("with a session: %s %s", resp.Status, body)
	}
	r := up.last(t)
	c := assertionOf(t, e, r, gateway.DefaultAssertionHeader)
	if c["sub"] != "u-alice" || c["email"] != "alice@example.com" || c["user"] != "alice" {
		t.Errorf("claims %v", c)
	}
	if g, _ := c["groups"].([]any); len(g) != 2 || g[1] != "admins" {
		t.Errorf("groups %v", c["groups"])
	}
	if got := r.Header.Values("Cookie"); len(got) != 1 || got[0] != "app=1" {
		t.Errorf("the app got cookies %q, want only its own", got)
	}
	for k, v := range r.Header {
		if s := strings.Join(v, " "); strings.Contains(s, "at-") || strings.Contains(s, "_kmsgate") || k == "Authorization" {
			t.Errorf("the app got %s: %s", k, s)
		}
	}
	// One signature per user per assertion lifetime, whatever the requests.
	signs := e.fake.Signs.Load()
	for range 5 {
		b.get(gw + "/x")
	}
	if e.fake.Signs.Load() != signs {
		t.Errorf("%d signatures for 5 requests of a user with a cached assertion", e.fake.Signs.Load()-signs)
	}

	// Not a browser, or a WebSocket: 401, no redirect.
	anon := newBrowser(t)
	for name, hdr := range map[string][]string{
		"json":      {"Accept", "application/json"},
		"xhr":       {"X-Requested-With", "XMLHttpRequest"},
		"websocket": {"Connection", "Upgrade", "Upgrade", "websocket"},
	} {
		if resp, body := anon.get(gw+"/x", hdr...); resp.StatusCode != 401 || !strings.Contains(body, "sign_in_required") {
			t.Errorf("%s without a session: %s %s", name, resp.Status, body)
		}
	}

	// Logout: cookies cleared, RP-initiated logout at the provider, and the
	// next visit signs in again.
	resp, _ = b.get(gw + "/v1/oidc/logout")
	loc, _ = url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != 302 || !strings.HasPrefix(loc.String(), iss.URL+"/logout?") || loc.Query().Get("post_logout_redirect_uri") != gw+"/" || loc.Query().Get("client_id") != "kmsgate" {
		t.Fatalf("logout: %s %s", resp.Status, loc)
	}
	if resp, _ := b.get(gw + "/x"); resp.StatusCode != 302 || !strings.HasPrefix(resp.Header.Get("Location"), iss.URL) {
		t.Errorf("after logout: %s", resp.Status)
	}
	if l := e.logs.String(); accessToken.MatchString(l) || hasToken(l) {
		t.Error("a token reached the logs")
	}
}

// TestSignInCallbackRefused: a callback whose state is not this browser's
// sign-in, a replayed callback, a code issued for another PKCE challenge,
// an ID token with another nonce, and a provider error are all refused,
// and none leaves a session.
func TestSignInCallbackRefused(t *testing.T) {
	e, iss, _ := signInEnv(t, nil)
	gw := "http://" + e.addr
	start := func(b *browserClient) string { // returns the provider's callback URL
		resp, _ := b.get(gw + "/")
		resp, _ = b.get(resp.Header.Get("Location"))
		return resp.Header.Get("Location")
	}
	noSession := func(name string, b *browserClient) {
		t.Helper()
		if resp, _ := b.get(gw + "/"); resp.StatusCode != 302 {
			t.Errorf("%s: a session was made (%s)", name, resp.Status)
		}
	}
	// State of another browser's sign-in.
	a, b := newBrowser(t), newBrowser(t)
	cbA := start(a)
	start(b)
	if resp, body := b.get(cbA); resp.StatusCode != 400 || !strings.Contains(body, "does not belong") {
		t.Errorf("another browser's callback: %s %s", resp.Status, body)
	}
	noSession("other state", b)
	// PKCE: the code was issued for a's challenge; b presents it with its
	// own state and verifier.
	a, b = newBrowser(t), newBrowser(t)
	cbA, cbB := start(a), start(b)
	ua, _ := url.Parse(cbA)
	ub, _ := url.Parse(cbB)
	if resp, _ := b.get(gw + "/v1/oidc/callback?code=" + ua.Query().Get("code") + "&state=" + url.QueryEscape(ub.Query().Get("state"))); resp.StatusCode != 403 {
		t.Errorf("code of another PKCE challenge: %s", resp.Status)
	}
	noSession("pkce", b)
	// Replay: the same callback twice.
	a = newBrowser(t)
	cb := start(a)
	if resp, _ := a.get(cb); resp.StatusCode != 302 {
		t.Fatalf("first callback: %s", resp.Status)
	}
	fresh := newBrowser(t)
	fresh.jar.SetCookies(mustURL(gw), a.jar.Cookies(mustURL(gw))) // a copy of the browser, session and all
	if resp, body := a.get(cb); resp.StatusCode != 400 || !strings.Contains(body, "No sign-in is in progress") {
		t.Errorf("replayed callback: %s %s", resp.Status, body)
	}
	// Nonce.
	iss.op.badNonce.Store(true)
	a = newBrowser(t)
	if resp, _ := a.get(start(a)); resp.StatusCode != 403 {
		t.Errorf("another nonce: %s", resp.Status)
	}
	iss.op.badNonce.Store(false)
	noSession("nonce", a)
	// The provider refused.
	a = newBrowser(t)
	u, _ := url.Parse(start(a))
	if resp, body := a.get(gw + "/v1/oidc/callback?error=access_denied&state=" + url.QueryEscape(u.Query().Get("state"))); resp.StatusCode != 403 || !strings.Contains(body, "access_denied") {
		t.Errorf("provider error: %s %s", resp.Status, body)
	}
	noSession("provider error", a)
	// Only the replayed browser's first callback made a session.
	if resp, _ := fresh.get(gw + "/"); resp.StatusCode != 200 {
		t.Errorf("the session of the first callback: %s", resp.Status)
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// TestSignInSessionCookie: a tampered session cookie is no session; the
// session survives a key rotation (new key first, old one kept) and ends
// when the old key is dropped; open redirects are refused.
func TestSignInSessionCookie(t *testing.T) {
	iss := newOIDCIssuer(t)
	up := newUpstream(t, nil)
	b := newBrowser(t)
	env := func(keys ...[]byte) string {
		sealer, _ := session.NewSealer(keys...)
		e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceOIDCLogin, OIDCIssuer: iss.URL,
			SignIn: signin.Config{ClientID: "kmsgate", Sealer: sealer, Cookie: session.Cookies{Name: "_kmsgate"}}})
		return "http://" + e.addr
	}
	gw := env(sessionKey(1))
	b.signIn(gw, "/")
	// Rotation: a gateway with key 2 first still opens key 1's session
	// (cookies belong to the host, not the port).
	gw2 := env(sessionKey(2), sessionKey(1))
	if resp, _ := b.get(gw2 + "/"); resp.StatusCode != 200 {
		t.Fatalf("after rotation, old key kept: %s", resp.Status)
	}
	gw3 := env(sessionKey(2))
	if resp, _ := b.get(gw3 + "/"); resp.StatusCode != 302 {
		t.Fatalf("old key dropped: %s, want a new sign-in", resp.Status)
	}
	// Tampering: one character of the sealed value changed.
	b = newBrowser(t)
	b.signIn(gw, "/")
	for _, ck := range b.jar.Cookies(mustURL(gw)) {
		if ck.Name == "_kmsgate" {
			v := []byte(ck.Value)
			v[len(v)/2] ^= 1
			if v[len(v)/2] == '-' || v[len(v)/2] == '_' {
				v[len(v)/2] = 'A'
			}
			b.jar.SetCookies(mustURL(gw), []*http.Cookie{{Name: "_kmsgate", Value: string(v)}})
		}
	}
	if resp, _ := b.get(gw + "/"); resp.StatusCode != 302 {
		t.Errorf("tampered cookie: %s", resp.Status)
	}
	// Open redirects: every return target that leaves the host lands on /.
	for _, rd := range []string{"//evil.example/x", "https://evil.example/", "/\\evil.example", "/\r\nLocation: https://evil.example/", "javascript:alert(1)", "/\tevil"} {
		c := newBrowser(t)
		resp, _ := c.get(gw + "/v1/oidc/login?rd=" + url.QueryEscape(rd))
		resp, _ = c.get(resp.Header.Get("Location"))
		resp, _ = c.get(resp.Header.Get("Location"))
		if resp.StatusCode != 302 || resp.Header.Get("Location") != "/" {
			t.Errorf("rd=%q: sent to %q", rd, resp.Header.Get("Location"))
		}
	}
	c := newBrowser(t)
	resp, _ := c.get(gw + "/v1/oidc/login?rd=" + url.QueryEscape("/reports?q=1"))
	resp, _ = c.get(resp.Header.Get("Location"))
	if resp, _ = c.get(resp.Header.Get("Location")); resp.Header.Get("Location") != "/reports?q=1" {
		t.Errorf("a path on the host: sent to %q", resp.Header.Get("Location"))
	}
}

// TestSignInRefresh: a session whose ID token is in its last half (or
// last 30 s) is renewed with the refresh token, a new cookie on the app's
// response. When the provider refuses to renew a session made moments ago
// the browser gets a 503 page, not another sign-in (which would make the
// same session again, and loop); an older session signs in again
// (TestRefreshRefused in gateway/signin).
func TestSignInRefresh(t *testing.T) {
	e, iss, _ := signInEnv(t, nil)
	iss.op.lifetimes(30*time.Second, 20*time.Second) // 10 s left of 30: due
	gw := "http://" + e.addr
	b := newBrowser(t)
	b.signIn(gw, "/")
	before := iss.op.tokens.Load()
	resp, _ := b.get(gw + "/")
	if resp.StatusCode != 200 || iss.op.tokens.Load() != before+1 || !strings.Contains(strings.Join(resp.Header.Values("Set-Cookie"), " "), "_kmsgate=") {
		t.Fatalf("refresh: %s, %d token calls, Set-Cookie %q", resp.Status, iss.op.tokens.Load()-before, resp.Header.Values("Set-Cookie"))
	}
	iss.op.failNext.Store(true)
	resp, body := b.get(gw + "/")
	if resp.StatusCode != 503 || resp.Header.Get("Location") != "" || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "<h1>503 Service Unavailable</h1>") {
		t.Errorf("refresh refused right after sign-in: %s to %q: %s", resp.Status, resp.Header.Get("Location"), body)
	}
	// A token that is not due is not refreshed.
	iss.op.failNext.Store(false)
	iss.op.lifetimes(30*time.Second, 0)
	b = newBrowser(t)
	b.signIn(gw, "/")
	before = iss.op.tokens.Load()
	for range 3 {
		if resp, _ := b.get(gw + "/"); resp.StatusCode != 200 {
			t.Fatalf("fresh session: %s", resp.Status)
		}
	}
	if n := iss.op.tokens.Load() - before; n != 0 {
		t.Errorf("%d token calls for a session whose ID token is not due", n)
	}
}

// TestSignInProviderDown: with the provider unreachable, a browser gets a
// 503 page with Retry-After, not a redirect (no loop).
func TestSignInProviderDown(t *testing.T) {
	up := newUpstream(t, nil)
	sealer, _ := session.NewSealer(sessionKey(1))
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceOIDCLogin, OIDCIssuer: "http://127.0.0.1:1",
		SignIn: signin.Config{ClientID: "kmsgate", Sealer: sealer, Cookie: session.Cookies{Name: "_kmsgate"}}})
	resp, body := newBrowser(t).get("http://" + e.addr + "/")
	if resp.StatusCode != 503 || resp.Header.Get("Location") != "" || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "cannot be reached") {
		t.Errorf("provider down: %s %v %s", resp.Status, resp.Header, body)
	}
}
