package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/oauth2"
)

// testOP is a provider served by httptest on 127.0.0.1, with a browser-like
// client (cookie jar) that stops at the redirect to the gateway's callback.
type testOP struct {
	t       *testing.T
	srv     *server
	issuer  string
	browser *http.Client
	conf    *oauth2.Config
	disco   discovery
	clock   *fakeClock
}

type discovery struct {
	Issuer                string   `json:"issuer"`
	AuthorizationEndpoint string   `json:"authorization_endpoint"`
	TokenEndpoint         string   `json:"token_endpoint"`
	UserinfoEndpoint      string   `json:"userinfo_endpoint"`
	EndSessionEndpoint    string   `json:"end_session_endpoint"`
	JWKSURI               string   `json:"jwks_uri"`
	CodeChallengeMethods  []string `json:"code_challenge_methods_supported"`
	ClaimsSupported       []string `json:"claims_supported"`
	ScopesSupported       []string `json:"scopes_supported"`
	GrantTypesSupported   []string `json:"grant_types_supported"`
}

// fakeClock is the storage's clock in tests that expire codes and tokens.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// gatewayCallback is the redirect URI the tests register with (the port is
// never listened on: the browser client stops at the redirect).
const gatewayCallback = "http://localhost:4180/v1/oidc/callback"

func startOP(t *testing.T, mutate func(*options)) *testOP {
	t.Helper()
	opts := defaultOptions()
	opts.Logger = testLogger(t)
	if mutate != nil {
		mutate(&opts)
	}
	ts := httptest.NewUnstartedServer(nil)
	issuer := "http://" + ts.Listener.Addr().String()
	srv, err := newServer(issuer, opts)
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{now: time.Now()}
	srv.store.now = clock.Now
	ts.Config.Handler = srv
	ts.Start()
	t.Cleanup(ts.Close)
	o := &testOP{t: t, srv: srv, issuer: issuer, clock: clock, browser: newBrowser(t)}
	o.disco = fetchDiscovery(t, issuer)
	o.conf = &oauth2.Config{
		ClientID:     clientID,
		ClientSecret: clientSecret,
		Endpoint:     oauth2.Endpoint{AuthURL: o.disco.AuthorizationEndpoint, TokenURL: o.disco.TokenEndpoint},
		RedirectURL:  gatewayCallback,
		Scopes:       []string{"openid", "email", "profile", "offline_access"},
	}
	return o
}

// newBrowser is an HTTP client with a cookie jar that follows redirects
// within the provider and returns the one that leaves it (to the gateway's
// callback or post-logout page).
// in returns o reporting to subtest t.
func (o *testOP) in(t *testing.T) *testOP {
	c := *o
	c.t = t
	return &c
}

func newBrowser(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{
		Jar:     jar,
		Timeout: 10 * time.Second,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			// Stay on the provider: stop at the redirect to the gateway.
			if req.URL.Host != via[0].URL.Host || len(via) >= 10 {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
}

// testLogger logs the provider's lines through t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, nil))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

func fetchDiscovery(t *testing.T, issuer string) discovery {
	t.Helper()
	resp, err := http.Get(issuer + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("discovery: %s", resp.Status)
	}
	var d discovery
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		t.Fatalf("discovery: %v", err)
	}
	return d
}

// page is an HTTP answer read whole.
type page struct {
	status   int
	location *url.URL
	body     string
	final    *url.URL
}

func (o *testOP) do(req *http.Request) page {
	o.t.Helper()
	resp, err := o.browser.Do(req)
	if err != nil {
		o.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	p := page{status: resp.StatusCode, body: string(b), final: resp.Request.URL}
	if loc, err := resp.Location(); err == nil {
		p.location = loc
	}
	return p
}

func (o *testOP) get(u string) page {
	o.t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		o.t.Fatal(err)
	}
	return o.do(req)
}

func (o *testOP) postForm(u string, form url.Values) page {
	o.t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		o.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return o.do(req)
}

// flow is one authorization request of the gateway.
type flow struct {
	state, nonce, verifier string
}

func newFlow() flow {
	return flow{state: randomID(), nonce: randomID(), verifier: oauth2.GenerateVerifier()}
}

func (o *testOP) authURL(f flow, extra ...oauth2.AuthCodeOption) string {
	opts := append([]oauth2.AuthCodeOption{oauth2.S256ChallengeOption(f.verifier), oauth2.SetAuthURLParam("nonce", f.nonce)}, extra...)
	return o.conf.AuthCodeURL(f.state, opts...)
}

// loginForm opens the authorization URL and returns the login page, failing
// unless it is the form.
func (o *testOP) loginForm(f flow, extra ...oauth2.AuthCodeOption) page {
	o.t.Helper()
	p := o.get(o.authURL(f, extra...))
	if p.status != http.StatusOK || !strings.Contains(p.body, `name="username"`) || !strings.Contains(p.body, `id="submit"`) {
		o.t.Fatalf("authorization request did not show the login form: %d %s\n%s", p.status, p.final, p.body)
	}
	return p
}

// submit posts the login form of page p.
func (o *testOP) submit(p page, username, password string) page {
	o.t.Helper()
	id := p.final.Query().Get("authRequestID")
	if id == "" {
		o.t.Fatalf("login page URL %s has no authRequestID", p.final)
	}
	return o.postForm(o.issuer+loginPath, url.Values{"authRequestID": {id}, "username": {username}, "password": {password}})
}

// callback checks that p is the redirect to the gateway's callback with
// state and returns the code.
func (o *testOP) callback(p page, f flow) string {
	o.t.Helper()
	if p.status != http.StatusFound || p.location == nil {
		o.t.Fatalf("expected the redirect to the callback, got %d\n%s", p.status, p.body)
	}
	q := p.location.Query()
	if got := p.location.Scheme + "://" + p.location.Host + p.location.Path; got != gatewayCallback {
		o.t.Fatalf("redirected to %s, want %s", p.location, gatewayCallback)
	}
	if q.Get("error") != "" {
		o.t.Fatalf("callback carries error %q: %s", q.Get("error"), q.Get("error_description"))
	}
	if q.Get("state") != f.state {
		o.t.Fatalf("state %q, want %q", q.Get("state"), f.state)
	}
	if q.Get("code") == "" {
		o.t.Fatalf("callback without code: %s", p.location)
	}
	return q.Get("code")
}

// signIn runs the browser part of the code flow and returns the code.
func (o *testOP) signIn(f flow, username, password string) string {
	o.t.Helper()
	return o.callback(o.submit(o.loginForm(f), username, password), f)
}

func (o *testOP) exchange(code string, f flow) (*oauth2.Token, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return o.conf.Exchange(ctx, code, oauth2.VerifierOption(f.verifier))
}

// idClaims are the ID token claims the gateway relies on.
type idClaims struct {
	jwt.Claims
	Nonce             string   `json:"nonce"`
	Email             string   `json:"email"`
	EmailVerified     bool     `json:"email_verified"`
	Name              string   `json:"name"`
	PreferredUsername string   `json:"preferred_username"`
	Groups            []string `json:"groups"`
	AZP               string   `json:"azp"`
}

// verifyIDToken checks raw with go-jose against the provider's JWKS (not
// with the provider library's own code) and returns its claims.
func (o *testOP) verifyIDToken(raw string) idClaims {
	o.t.Helper()
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		o.t.Fatalf("ID token: %v", err)
	}
	resp, err := http.Get(o.disco.JWKSURI)
	if err != nil {
		o.t.Fatal(err)
	}
	defer resp.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		o.t.Fatalf("JWKS: %v", err)
	}
	var c idClaims
	if err := tok.Claims(&set, &c); err != nil {
		o.t.Fatalf("ID token signature: %v", err)
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: o.issuer, AnyAudience: jwt.Audience{clientID}, Time: time.Now()}, 0); err != nil {
		o.t.Fatalf("ID token claims: %v", err)
	}
	return c
}

func TestDiscoveryAndKeys(t *testing.T) {
	o := startOP(t, nil)
	d := o.disco
	if d.Issuer != o.issuer {
		t.Errorf("issuer %q, want %q", d.Issuer, o.issuer)
	}
	for name, got := range map[string]string{
		"authorization_endpoint": d.AuthorizationEndpoint, "token_endpoint": d.TokenEndpoint,
		"userinfo_endpoint": d.UserinfoEndpoint, "end_session_endpoint": d.EndSessionEndpoint, "jwks_uri": d.JWKSURI,
	} {
		if !strings.HasPrefix(got, o.issuer+"/") {
			t.Errorf("%s = %q, want a URL under %s", name, got, o.issuer)
		}
	}
	if !slices.Contains(d.CodeChallengeMethods, "S256") {
		t.Errorf("code_challenge_methods_supported %v lacks S256", d.CodeChallengeMethods)
	}
	if !slices.Contains(d.ClaimsSupported, "groups") || !slices.Contains(d.ScopesSupported, "offline_access") {
		t.Errorf("claims %v / scopes %v: want groups and offline_access", d.ClaimsSupported, d.ScopesSupported)
	}
	if !slices.Contains(d.GrantTypesSupported, "refresh_token") {
		t.Errorf("grant types %v lack refresh_token", d.GrantTypesSupported)
	}
	resp, err := http.Get(d.JWKSURI)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 || set.Keys[0].Algorithm != "RS256" || set.Keys[0].Use != "sig" || !set.Keys[0].Valid() || !set.Keys[0].IsPublic() {
		t.Fatalf("JWKS: want one public RS256 signing key, got %+v", set.Keys)
	}
}

func TestCodeFlowWithPKCE(t *testing.T) {
	for _, tc := range []struct {
		user, password, email, name string
		groups                      []string
	}{
		{"alice", "alice-pw", "alice@example.com", "Alice Admin", []string{"staff", "admins"}},
		{"bob", "bob-pw", "bob@example.com", "Bob Builder", []string{"staff"}},
	} {
		t.Run(tc.user, func(t *testing.T) {
			o := startOP(t, nil)
			f := newFlow()
			form := o.loginForm(f)

			// A wrong password shows the form again, with an error.
			again := o.submit(form, tc.user, "not-"+tc.password)
			if again.status != http.StatusOK || !strings.Contains(again.body, "Wrong user name or password") || !strings.Contains(again.body, `name="password"`) {
				t.Fatalf("wrong password: %d\n%s", again.status, again.body)
			}
			code := o.callback(o.submit(form, tc.user, tc.password), f)

			tok, err := o.exchange(code, f)
			if err != nil {
				t.Fatalf("exchange: %v", err)
			}
			if tok.RefreshToken == "" {
				t.Error("no refresh token although offline_access was asked")
			}
			raw, _ := tok.Extra("id_token").(string)
			c := o.verifyIDToken(raw)
			if c.Nonce != f.nonce {
				t.Errorf("nonce %q, want %q", c.Nonce, f.nonce)
			}
			if c.Subject != "user-"+tc.user || c.Email != tc.email || !c.EmailVerified || c.Name != tc.name || c.PreferredUsername != tc.user || !slices.Equal(c.Groups, tc.groups) {
				t.Errorf("ID token claims %+v", c)
			}
			if got := c.Expiry.Time().Sub(c.IssuedAt.Time()); got != 5*time.Minute {
				t.Errorf("ID token lifetime %s, want the default 5m", got)
			}

			// userinfo answers the same user for the access token.
			req, _ := http.NewRequest(http.MethodGet, o.disco.UserinfoEndpoint, nil)
			tok.SetAuthHeader(req)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var info idClaims
			if err := json.NewDecoder(resp.Body).Decode(&info); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("userinfo: %d %v", resp.StatusCode, err)
			}
			if info.Subject != c.Subject || info.Email != tc.email || !slices.Equal(info.Groups, tc.groups) {
				t.Errorf("userinfo %+v", info)
			}

			// The code is single-use.
			if _, err := o.exchange(code, f); !isOAuthError(err, "invalid_grant") {
				t.Errorf("replayed code: %v, want invalid_grant", err)
			}
		})
	}
}

func isOAuthError(err error, code string) bool {
	var re *oauth2.RetrieveError
	return errors.As(err, &re) && re.ErrorCode == code
}

func TestPKCERequired(t *testing.T) {
	op := startOP(t, func(opts *options) { opts.SSO = false })

	t.Run("wrong verifier", func(t *testing.T) {
		o := op.in(t)
		f := newFlow()
		code := o.signIn(f, "alice", "alice-pw")
		wrong := f
		wrong.verifier = oauth2.GenerateVerifier()
		if _, err := o.exchange(code, wrong); !isOAuthError(err, "invalid_grant") {
			t.Fatalf("wrong verifier: %v, want invalid_grant", err)
		}
	})
	t.Run("no verifier", func(t *testing.T) {
		o := op.in(t)
		f := newFlow()
		code := o.signIn(f, "alice", "alice-pw")
		ctx := context.Background()
		if _, err := o.conf.Exchange(ctx, code); !isOAuthError(err, "invalid_request") {
			t.Fatalf("no verifier: %v, want invalid_request", err)
		}
	})
	for name, opts := range map[string][]oauth2.AuthCodeOption{
		"no challenge":   nil,
		"plain":          {oauth2.SetAuthURLParam("code_challenge", "x"+strings.Repeat("a", 42)), oauth2.SetAuthURLParam("code_challenge_method", "plain")},
		"method missing": {oauth2.SetAuthURLParam("code_challenge", oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier()))},
	} {
		t.Run(name, func(t *testing.T) {
			o := op.in(t)
			p := o.get(o.conf.AuthCodeURL("st", opts...))
			if p.status != http.StatusFound || p.location == nil || p.location.Query().Get("error") != "invalid_request" || p.location.Query().Get("state") != "st" {
				t.Fatalf("authorization without S256 PKCE: %d %v\n%s", p.status, p.location, p.body)
			}
		})
	}
}

func TestRefreshGrant(t *testing.T) {
	o := startOP(t, nil)
	f := newFlow()
	tok, err := o.exchange(o.signIn(f, "bob", "bob-pw"), f)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	stale := &oauth2.Token{RefreshToken: tok.RefreshToken, Expiry: time.Now().Add(-time.Minute)}
	fresh, err := o.conf.TokenSource(ctx, stale).Token()
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if fresh.AccessToken == "" || fresh.AccessToken == tok.AccessToken || fresh.RefreshToken == "" || fresh.RefreshToken == tok.RefreshToken {
		t.Fatalf("refresh did not issue new tokens (rotation): %+v", fresh)
	}
	raw, _ := fresh.Extra("id_token").(string)
	c := o.verifyIDToken(raw)
	if c.Subject != "user-bob" || c.Email != "bob@example.com" || !slices.Equal(c.Groups, []string{"staff"}) {
		t.Errorf("refreshed ID token claims %+v", c)
	}

	// The spent refresh token is refused; the new one works.
	if _, err := o.conf.TokenSource(ctx, stale).Token(); !isOAuthError(err, "invalid_grant") {
		t.Errorf("spent refresh token: %v, want invalid_grant", err)
	}
	// A refresh token expires after -refresh-token-ttl.
	o.clock.Advance(24*time.Hour + time.Second)
	stale2 := &oauth2.Token{RefreshToken: fresh.RefreshToken, Expiry: time.Now().Add(-time.Minute)}
	if _, err := o.conf.TokenSource(ctx, stale2).Token(); !isOAuthError(err, "invalid_grant") {
		t.Errorf("expired refresh token: %v, want invalid_grant", err)
	}
	if got := o.srv.store.snapshot().RefreshGrants; got != 1 {
		t.Errorf("refresh_grants = %d, want 1", got)
	}
}

func TestNoRefreshTokenWithoutOfflineAccess(t *testing.T) {
	o := startOP(t, nil)
	o.conf.Scopes = []string{"openid", "email"}
	f := newFlow()
	tok, err := o.exchange(o.signIn(f, "alice", "alice-pw"), f)
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken != "" {
		t.Errorf("refresh token issued without offline_access")
	}
	c := o.verifyIDToken(tok.Extra("id_token").(string))
	if c.Email != "alice@example.com" || c.Name != "" || !slices.Equal(c.Groups, []string{"staff", "admins"}) {
		t.Errorf("claims for scopes openid email: %+v", c)
	}
}

func TestWrongClientSecret(t *testing.T) {
	o := startOP(t, nil)
	f := newFlow()
	code := o.signIn(f, "alice", "alice-pw")
	o.conf.ClientSecret = "wrong"
	if _, err := o.exchange(code, f); !isOAuthError(err, "invalid_client") && !isOAuthError(err, "unauthorized_client") {
		t.Fatalf("wrong secret: %v, want invalid_client", err)
	}
}

func TestCodeExpires(t *testing.T) {
	o := startOP(t, nil)
	f := newFlow()
	code := o.signIn(f, "alice", "alice-pw")
	o.clock.Advance(10*time.Minute + time.Second)
	if _, err := o.exchange(code, f); !isOAuthError(err, "invalid_grant") {
		t.Fatalf("expired code: %v, want invalid_grant", err)
	}
}

func TestRedirectURIs(t *testing.T) {
	o := startOP(t, nil)
	for _, u := range []string{
		"http://127.0.0.1:1/v1/oidc/callback",
		"http://127.0.0.1:65535/v1/oidc/callback",
		"http://localhost:8080/v1/oidc/callback",
		"https://localhost:8443/v1/oidc/callback",
		"https://127.0.0.1:443/v1/oidc/callback",
	} {
		conf := *o.conf
		conf.RedirectURL = u
		p := o.get(conf.AuthCodeURL("s", oauth2.S256ChallengeOption(oauth2.GenerateVerifier())))
		if p.status != http.StatusOK || !strings.Contains(p.final.Path, loginPath) {
			t.Errorf("%s refused: %d %s", u, p.status, p.body)
		}
	}
	for _, u := range []string{
		"http://127.0.0.1:1@evil.example/v1/oidc/callback",
		"http://evil.example:80/v1/oidc/callback",
		"http://127.0.0.1.evil.example:80/v1/oidc/callback",
		"http://localhost/v1/oidc/callback",
		"http://localhost:123456/v1/oidc/callback",
		"http://localhost:8080/v1/oidc/callback/x",
		"http://localhost:8080/v1/oidc/callback?next=x",
		"http://localhost:8080/other",
		"ftp://localhost:8080/v1/oidc/callback",
	} {
		conf := *o.conf
		conf.RedirectURL = u
		p := o.get(conf.AuthCodeURL("s", oauth2.S256ChallengeOption(oauth2.GenerateVerifier())))
		if p.status != http.StatusBadRequest || p.location != nil {
			t.Errorf("%s: %d %v, want 400 without a redirect", u, p.status, p.location)
		}
	}
}

func TestSSOSessionAndEndSession(t *testing.T) {
	o := startOP(t, nil)
	f := newFlow()
	tok, err := o.exchange(o.signIn(f, "alice", "alice-pw"), f)
	if err != nil {
		t.Fatal(err)
	}
	idToken := tok.Extra("id_token").(string)

	// The browser's sign-in session skips the form…
	f2 := newFlow()
	code := o.callback(o.get(o.authURL(f2)), f2)
	tok2, err := o.exchange(code, f2)
	if err != nil {
		t.Fatal(err)
	}
	if c := o.verifyIDToken(tok2.Extra("id_token").(string)); c.Subject != "user-alice" || c.Nonce != f2.nonce {
		t.Errorf("SSO sign-in claims %+v", c)
	}
	// …unless prompt=login.
	o.loginForm(newFlow(), oauth2.SetAuthURLParam("prompt", "login"))

	// A post-logout redirect to a host that is not the gateway's is refused.
	bad := o.get(o.disco.EndSessionEndpoint + "?" + url.Values{"client_id": {clientID}, "post_logout_redirect_uri": {"http://evil.example/"}}.Encode())
	if bad.status != http.StatusBadRequest || bad.location != nil {
		t.Fatalf("end_session to evil.example: %d %v", bad.status, bad.location)
	}

	for _, withHint := range []bool{false, true} {
		q := url.Values{"client_id": {clientID}, "post_logout_redirect_uri": {"http://localhost:4180/"}, "state": {"bye"}}
		if withHint {
			q.Set("id_token_hint", idToken)
			// The previous logout ended the session: sign in with the form.
			f3 := newFlow()
			code := o.signIn(f3, "alice", "alice-pw")
			if tok, err = o.exchange(code, f3); err != nil {
				t.Fatal(err)
			}
		}
		p := o.get(o.disco.EndSessionEndpoint + "?" + q.Encode())
		if p.status != http.StatusFound || p.location == nil || p.location.String() != "http://localhost:4180/?state=bye" {
			t.Fatalf("end_session (hint %v): %d %v\n%s", withHint, p.status, p.location, p.body)
		}
		// The session is over: the form is shown again, and the user's
		// refresh tokens are revoked.
		o.loginForm(newFlow())
		stale := &oauth2.Token{RefreshToken: tok.RefreshToken, Expiry: time.Now().Add(-time.Minute)}
		if _, err := o.conf.TokenSource(context.Background(), stale).Token(); !isOAuthError(err, "invalid_grant") {
			t.Errorf("refresh after logout (hint %v): %v, want invalid_grant", withHint, err)
		}
	}
	st := o.srv.store.snapshot()
	if st.EndSessions != 2 || st.ActiveSessions != 0 || st.Logins != 2 {
		t.Errorf("stats %+v: want 2 end_sessions, 0 active sessions, 2 logins", st)
	}

	// Without a redirect URI the provider shows its own signed-out page.
	p := o.get(o.disco.EndSessionEndpoint)
	if p.status != http.StatusOK || !strings.Contains(p.body, "Signed out") {
		t.Errorf("end_session without redirect: %d %s", p.status, p.body)
	}
}

func TestPromptNoneWithoutSession(t *testing.T) {
	o := startOP(t, nil)
	f := newFlow()
	p := o.get(o.authURL(f, oauth2.SetAuthURLParam("prompt", "none")))
	if p.status != http.StatusFound || p.location == nil || p.location.Query().Get("error") != "login_required" || p.location.Query().Get("state") != f.state {
		t.Fatalf("prompt=none without a session: %d %v", p.status, p.location)
	}
}

func TestSSOOff(t *testing.T) {
	o := startOP(t, func(opts *options) { opts.SSO = false })
	o.signIn(newFlow(), "bob", "bob-pw")
	o.loginForm(newFlow())
}

func TestTTLs(t *testing.T) {
	o := startOP(t, func(opts *options) { opts.IDTokenTTL = 90 * time.Second; opts.AccessTokenTTL = 45 * time.Second })
	f := newFlow()
	tok, err := o.exchange(o.signIn(f, "alice", "alice-pw"), f)
	if err != nil {
		t.Fatal(err)
	}
	c := o.verifyIDToken(tok.Extra("id_token").(string))
	if got := c.Expiry.Time().Sub(c.IssuedAt.Time()); got != 90*time.Second {
		t.Errorf("ID token lifetime %s, want 90s", got)
	}
	if left := time.Until(tok.Expiry); left > 45*time.Second || left < 30*time.Second {
		t.Errorf("access token expires in %s, want about 45s", left)
	}
	// The access token dies with the storage clock.
	o.clock.Advance(46 * time.Second)
	req, _ := http.NewRequest(http.MethodGet, o.disco.UserinfoEndpoint, nil)
	tok.SetAuthHeader(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Errorf("userinfo with an expired access token: 200")
	}
}

func TestFailureKnobs(t *testing.T) {
	o := startOP(t, func(opts *options) { opts.Control = true; opts.SSO = false })
	control := func(form url.Values) {
		t.Helper()
		resp, err := http.PostForm(o.issuer+controlPath, form)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("control %v: %s", form, resp.Status)
		}
	}
	f := newFlow()
	tok, err := o.exchange(o.signIn(f, "alice", "alice-pw"), f)
	if err != nil {
		t.Fatal(err)
	}
	refresh := func() error {
		_, err := o.conf.TokenSource(context.Background(), &oauth2.Token{RefreshToken: tok.RefreshToken, Expiry: time.Now().Add(-time.Minute)}).Token()
		return err
	}

	control(url.Values{"fail_refresh": {"true"}})
	if err := refresh(); !isOAuthError(err, "invalid_grant") {
		t.Errorf("fail_refresh: %v, want invalid_grant", err)
	}
	control(url.Values{"fail_refresh": {"false"}, "fail_token": {"1"}})
	var re *oauth2.RetrieveError
	if err := refresh(); !errors.As(err, &re) || re.Response.StatusCode != http.StatusServiceUnavailable || re.ErrorCode != "temporarily_unavailable" {
		t.Errorf("fail_token: %v, want 503 temporarily_unavailable", err)
	}
	f2 := newFlow()
	if _, err := o.exchange(o.signIn(f2, "alice", "alice-pw"), f2); !isOAuthError(err, "temporarily_unavailable") {
		t.Errorf("code exchange with fail_token: %v", err)
	}
	control(url.Values{"fail_token": {"false"}})
	if err := refresh(); err != nil {
		t.Errorf("refresh once the knobs are off: %v", err)
	}

	resp, err := http.PostForm(o.issuer+controlPath, url.Values{"fail_token": {"maybe"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("control with a bad value: %s, want 400", resp.Status)
	}

	// Without -control there is no control endpoint.
	plain := startOP(t, func(opts *options) { opts.FailRefresh = true })
	resp, err = http.PostForm(plain.issuer+controlPath, url.Values{"fail_token": {"true"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNoContent {
		t.Errorf("control endpoint served without -control")
	}
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-listen", "0.0.0.0:0"},
		{"-listen", "192.0.2.1:0"},
		{"-listen", "nonsense"},
		{"-id-token-ttl", "0s"},
		{"-access-token-ttl", "-1m"},
		{"extra"},
	} {
		if err := run(args); err == nil {
			t.Errorf("run(%q) accepted", args)
		}
	}
}

// TestSharedProvider checks the provider scripts/test.d/50-oidc.sh started
// (the built command, not this package's code in-process).
func TestSharedProvider(t *testing.T) {
	issuer := os.Getenv("KMSGATE_TEST_OP")
	if issuer == "" {
		if os.Getenv("KMSGATE_REQUIRE_SERVERS") == "1" {
			t.Fatal("KMSGATE_TEST_OP is not set although KMSGATE_REQUIRE_SERVERS=1")
		}
		t.Skip("KMSGATE_TEST_OP is not set (scripts/test.d/50-oidc.sh starts the provider)")
	}
	d := fetchDiscovery(t, issuer)
	if d.Issuer != issuer || d.EndSessionEndpoint == "" {
		t.Fatalf("discovery of %s: %+v", issuer, d)
	}
	o := &testOP{t: t, issuer: issuer, disco: d, browser: newBrowser(t)}
	o.conf = &oauth2.Config{ClientID: clientID, ClientSecret: clientSecret, RedirectURL: gatewayCallback,
		Endpoint: oauth2.Endpoint{AuthURL: d.AuthorizationEndpoint, TokenURL: d.TokenEndpoint},
		Scopes:   []string{"openid", "email", "profile"}}
	f := newFlow()
	tok, err := o.exchange(o.signIn(f, "bob", "bob-pw"), f)
	if err != nil {
		t.Fatal(err)
	}
	if c := o.verifyIDToken(tok.Extra("id_token").(string)); c.Subject != "user-bob" || c.Nonce != f.nonce {
		t.Errorf("claims %+v", c)
	}
}
