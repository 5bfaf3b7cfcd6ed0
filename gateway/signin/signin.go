// Package signin signs browser users in with their OpenID provider: the
// authorization code flow with PKCE (S256), state and nonce, a session in
// a sealed cookie (package session) refreshed with the refresh token, and
// logout. It is the oidc-login identity source: a request with a valid
// session has the identity the session holds; one without is sent to sign
// in by the core.
package signin

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/oauth2"

	"github.com/kmsgate/kmsgate/gateway/identity"
	"github.com/kmsgate/kmsgate/gateway/session"
)

// Config configures browser sign-in (the serve flags).
type Config struct {
	// ClientID and ClientSecret are the gateway's client at the provider;
	// without a secret it is a public client (PKCE only).
	ClientID, ClientSecret string
	// RedirectURL is the callback registered at the provider; empty
	// derives it from the request's host: scheme://host{CallbackPath}.
	RedirectURL string
	// Scopes asked for (default openid, email, profile, offline_access).
	Scopes []string
	// GroupsClaim is the ID token claim holding the groups (default
	// groups).
	GroupsClaim string
	// Sealer seals the cookies; Cookie names them and sets their scope.
	Sealer *session.Sealer
	Cookie session.Cookies
	// Lifetime is a session's absolute lifetime (default 12h); Idle ends a
	// session unused for that long (default 1h).
	Lifetime, Idle time.Duration
	// Timeout bounds a call to the provider (token exchange, refresh).
	Timeout time.Duration
	// Logger receives the logs (never a token).
	Logger *slog.Logger
}

// Paths of the sign-in endpoints, below the gateway's own /v1/ (under
// --gateway-prefix).
const (
	CallbackPath = "/v1/oidc/callback"
	LogoutPath   = "/v1/oidc/logout"
	LoginPath    = "/v1/oidc/login"
)

// stateLifetime bounds a sign-in: a callback later than this after the
// redirect is refused.
const stateLifetime = 10 * time.Minute

// openedCacheSize bounds the cache of opened session cookies.
const openedCacheSize = 10000

// refreshEarly refreshes a session this long before its ID token expires,
// or half the token's lifetime when that is shorter, so a new session is
// never renewed at once (a provider with short-lived tokens would
// otherwise be asked on every request, and a refused refresh right after
// sign-in would loop through the provider).
const refreshEarly = 30 * time.Second

// Source is the oidc-login identity source and its endpoints.
type Source struct {
	cfg    Config
	disc   *identity.Discovery
	prefix string // --gateway-prefix
	auth   session.Cookies
	now    func() time.Time
	// opened caches the records of sealed cookies already opened, by the
	// sealed value, so a session costs one decryption per cookie, not per
	// request; the times in a record are checked on every use.
	opened *lru.Cache[string, record]
}

// New returns the oidc-login source over an issuer's discovery; prefix is
// the gateway's --gateway-prefix.
func New(d *identity.Discovery, cfg Config, prefix string) (*Source, error) {
	if cfg.ClientID == "" {
		return nil, errors.New("identity oidc-login needs --oidc-client-id")
	}
	if cfg.Sealer == nil {
		return nil, errors.New("identity oidc-login needs --cookie-secret")
	}
	if cfg.RedirectURL != "" {
		u, err := url.Parse(cfg.RedirectURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != prefix+CallbackPath {
			return nil, fmt.Errorf("--oidc-redirect-url %q must be an http(s) URL whose path is %s", cfg.RedirectURL, prefix+CallbackPath)
		}
	}
	if len(cfg.Scopes) == 0 {
		cfg.Scopes = []string{oidc.ScopeOpenID, "email", "profile", oidc.ScopeOfflineAccess}
	}
	if cfg.GroupsClaim == "" {
		cfg.GroupsClaim = "groups"
	}
	if cfg.Cookie.Name == "" {
		cfg.Cookie.Name = "_kmsgate"
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = 12 * time.Hour
	}
	if cfg.Idle <= 0 {
		cfg.Idle = time.Hour
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	auth := cfg.Cookie
	auth.Name += "_auth"
	opened, err := lru.New[string, record](openedCacheSize)
	if err != nil {
		return nil, err
	}
	return &Source{cfg: cfg, disc: d, prefix: prefix, auth: auth, now: time.Now, opened: opened}, nil
}

// SetClock replaces the source's clock (tests).
func (s *Source) SetClock(now func() time.Time) { s.now = now; s.cfg.Sealer.SetClock(now) }

// Ready implements identity.Readier.
func (s *Source) Ready() (bool, string) { return s.disc.Ready() }

// Cookies are the cookies the source owns; they never reach an upstream.
func (s *Source) Cookies() []session.Cookies { return []session.Cookies{s.cfg.Cookie, s.auth} }

// record is what a session cookie holds.
type record struct {
	Sub     string   `json:"sub"`
	User    string   `json:"user,omitempty"`
	Email   string   `json:"email,omitempty"`
	Name    string   `json:"name,omitempty"`
	Groups  []string `json:"groups,omitempty"`
	Created int64    `json:"created"` // sign-in time, Unix seconds
	Seen    int64    `json:"seen"`    // last use, to a tenth of the idle timeout
	Expiry  int64    `json:"expiry"`  // the ID token's exp
	Issued  int64    `json:"issued"`  // that ID token's iat
	Refresh string   `json:"refresh,omitempty"`
}

// pending is what the sign-in state cookie holds between the redirect to
// the provider and the callback.
type pending struct {
	State    string `json:"state"`
	Nonce    string `json:"nonce"`
	Verifier string `json:"verifier"`
	ReturnTo string `json:"return_to"`
	Redirect string `json:"redirect"`
}

// Identify implements identity.Source: the identity of the request's
// session. A missing, invalid or ended session (or one whose refresh
// failed) is identity.ErrSignIn. When the session changed (refreshed, or
// its last use moved on), the new cookies are given to r when it takes
// them (identity.CookieSetter).
func (s *Source) Identify(r identity.Request) (identity.Identity, error) {
	sealed := s.cfg.Cookie.Read(r.HeaderValues("Cookie"))
	if sealed == "" {
		return identity.Identity{}, identity.ErrSignIn
	}
	rec, ok := s.opened.Get(sealed)
	if !ok {
		b, err := s.cfg.Sealer.Open(s.cfg.Cookie.Name, sealed)
		if err != nil {
			return identity.Identity{}, fmt.Errorf("%w: %v", identity.ErrSignIn, err)
		}
		if err := json.Unmarshal(b, &rec); err != nil || rec.Sub == "" {
			return identity.Identity{}, fmt.Errorf("%w: session: malformed", identity.ErrSignIn)
		}
		s.opened.Add(sealed, rec)
	}
	now := s.now()
	switch {
	case now.After(time.Unix(rec.Created, 0).Add(s.cfg.Lifetime)):
		return identity.Identity{}, fmt.Errorf("%w: session older than its lifetime", identity.ErrSignIn)
	case now.After(time.Unix(rec.Seen, 0).Add(s.cfg.Idle)):
		return identity.Identity{}, fmt.Errorf("%w: session idle too long", identity.ErrSignIn)
	}
	changed := false
	margin := min(refreshEarly, time.Duration(rec.Expiry-rec.Issued)*time.Second/2)
	if now.Add(margin).After(time.Unix(rec.Expiry, 0)) {
		if err := s.refresh(r.Context(), &rec); err != nil {
			return identity.Identity{}, err
		}
		changed = true
	}
	if now.Sub(time.Unix(rec.Seen, 0)) > s.cfg.Idle/10 {
		rec.Seen, changed = now.Unix(), true
	}
	if changed {
		if cs, ok := r.(identity.CookieSetter); ok {
			if cookies, err := s.write(&rec); err == nil {
				cs.SetCookie(cookies...)
			}
		}
	}
	return identity.Identity{Subject: rec.Sub, User: rec.User, Email: rec.Email, Name: rec.Name, Groups: rec.Groups}, nil
}

// refresh renews a session's tokens with its refresh token and takes the
// identity of the new ID token; a failure sends the user to sign in.
func (s *Source) refresh(ctx context.Context, rec *record) error {
	if rec.Refresh == "" {
		return fmt.Errorf("%w: session expired and holds no refresh token", identity.ErrSignIn)
	}
	p := s.disc.Provider()
	if p == nil {
		return identity.ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	ctx = oidc.ClientContext(ctx, s.disc.Client())
	tok, err := s.oauth(p, "").TokenSource(ctx, &oauth2.Token{RefreshToken: rec.Refresh, Expiry: time.Unix(1, 0)}).Token()
	if err != nil {
		if providerDown(err) {
			s.cfg.Logger.Warn("session refresh failed: the provider is down", "sub", rec.Sub, "err", redact(err))
			return identity.ErrUnavailable
		}
		if s.now().Sub(time.Unix(rec.Created, 0)) < refreshEarly {
			// A session made moments ago that the provider will not renew:
			// a new sign-in would make another like it, and loop.
			s.cfg.Logger.Warn("session refresh refused right after sign-in; answering 503 instead of signing in again", "sub", rec.Sub, "err", redact(err))
			return identity.ErrUnavailable
		}
		s.cfg.Logger.Info("session refresh refused; the user signs in again", "sub", rec.Sub, "err", redact(err))
		return fmt.Errorf("%w: refresh refused", identity.ErrSignIn)
	}
	if raw, _ := tok.Extra("id_token").(string); raw != "" {
		idt, err := s.disc.Verifier(s.cfg.ClientID).Verify(ctx, raw)
		if err != nil || idt.Subject != rec.Sub {
			return fmt.Errorf("%w: refreshed ID token not accepted", identity.ErrSignIn)
		}
		id, err := identity.FromIDToken(idt, s.cfg.GroupsClaim)
		if err != nil {
			return fmt.Errorf("%w: %v", identity.ErrSignIn, err)
		}
		rec.User, rec.Email, rec.Name, rec.Groups = id.User, id.Email, id.Name, id.Groups
		rec.Expiry, rec.Issued = idt.Expiry.Unix(), issued(idt, s.now())
	} else {
		rec.Expiry, rec.Issued = tok.Expiry.Unix(), s.now().Unix()
	}

	if tok.RefreshToken != "" {
		rec.Refresh = tok.RefreshToken
	}
	return nil
}

// write seals a session into its cookies, expiring with the session.
func (s *Source) write(rec *record) ([]string, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	end := time.Unix(rec.Created, 0).Add(s.cfg.Lifetime)
	return s.cfg.Cookie.Write(s.cfg.Sealer.Seal(s.cfg.Cookie.Name, b, end), end)
}

// oauth is the OAuth 2 client of the gateway at provider p, with a
// redirect URL.
func (s *Source) oauth(p *oidc.Provider, redirect string) *oauth2.Config {
	return &oauth2.Config{ClientID: s.cfg.ClientID, ClientSecret: s.cfg.ClientSecret, Endpoint: s.endpoint(p), RedirectURL: redirect, Scopes: s.cfg.Scopes}
}

// endpoint is the provider's OAuth 2 endpoint with the client
// authentication it advertises: client_secret_basic (the default of the
// specification) or client_secret_post; a public client sends its id in
// the form. Left to detection, the library would repeat every refused
// token request in the other style.
func (s *Source) endpoint(p *oidc.Provider) oauth2.Endpoint {
	ep := p.Endpoint()
	var meta struct {
		Methods []string `json:"token_endpoint_auth_methods_supported"`
	}
	_ = p.Claims(&meta)
	switch {
	case s.cfg.ClientSecret == "":
		ep.AuthStyle = oauth2.AuthStyleInParams
	case len(meta.Methods) == 0 || slices.Contains(meta.Methods, "client_secret_basic"):
		ep.AuthStyle = oauth2.AuthStyleInHeader
	case slices.Contains(meta.Methods, "client_secret_post"):
		ep.AuthStyle = oauth2.AuthStyleInParams
	}
	return ep
}

// Response is what a sign-in step answers: a status, a redirect, cookies
// to set and, for a page, its message.
type Response struct {
	Status   int
	Location string
	Cookies  []string
	// Page is the message of an HTML page for a browser, when there is no
	// redirect.
	Page string
}

// Origin is where a browser request was sent: its host (with port, as
// received) and whether the connection to the gateway was TLS.
type Origin struct {
	Host string
	TLS  bool
}

func (o Origin) base() string {
	if o.TLS {
		return "https://" + o.Host
	}
	return "http://" + o.Host
}

// SignIn starts a sign-in: a redirect to the provider's authorization
// endpoint with PKCE (S256), state and nonce, remembered in a sealed
// cookie with where to return (a path on the same host, from
// SafeReturn). identity.ErrUnavailable when the provider has not been
// reached.
func (s *Source) SignIn(o Origin, returnTo string) (Response, error) {
	p := s.disc.Provider()
	if p == nil {
		return Response{}, identity.ErrUnavailable
	}
	redirect := s.cfg.RedirectURL
	if redirect == "" {
		redirect = o.base() + s.prefix + CallbackPath
	}
	st := pending{State: random(), Nonce: random(), Verifier: oauth2.GenerateVerifier(), ReturnTo: SafeReturn(returnTo), Redirect: redirect}
	b, _ := json.Marshal(st)
	end := s.now().Add(stateLifetime)
	cookies, err := s.auth.Write(s.cfg.Sealer.Seal(s.auth.Name, b, end), end)
	if err != nil {
		return Response{}, err
	}
	loc := s.oauth(p, redirect).AuthCodeURL(st.State, oauth2.S256ChallengeOption(st.Verifier), oidc.Nonce(st.Nonce))
	return Response{Status: 302, Location: loc, Cookies: cookies}, nil
}

// Callback finishes a sign-in: the state must match the sign-in cookie's
// (which is used once and cleared), the code is exchanged with the PKCE
// verifier, and the ID token must verify with the nonce. The session cookie
// is set and the browser returned where it was going.
func (s *Source) Callback(ctx context.Context, cookieHeaders []string, rawQuery string) Response {
	clear := s.auth.Clear()
	fail := func(status int, msg string) Response {
		return Response{Status: status, Cookies: clear, Page: msg}
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return fail(400, "The sign-in answer is malformed. Open the application again to sign in.")
	}
	sealed := s.auth.Read(cookieHeaders)
	if sealed == "" {
		return fail(400, "No sign-in is in progress in this browser (it may have been used already, or have taken longer than 10 minutes). Open the application again to sign in.")
	}
	b, err := s.cfg.Sealer.Open(s.auth.Name, sealed)
	var st pending
	if err != nil || json.Unmarshal(b, &st) != nil {
		return fail(400, "The sign-in has expired or is not valid. Open the application again to sign in.")
	}
	if q.Get("state") == "" || q.Get("state") != st.State {
		return fail(400, "The sign-in answer does not belong to the sign-in started in this browser. Open the application again to sign in.")
	}
	if e := q.Get("error"); e != "" {
		return fail(403, "The identity provider did not sign you in ("+sanitize(e)+").")
	}
	code := q.Get("code")
	if code == "" {
		return fail(400, "The sign-in answer has no code. Open the application again to sign in.")
	}
	p := s.disc.Provider()
	if p == nil {
		return fail(503, "The identity provider cannot be reached now. Try again in a minute.")
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	ctx = oidc.ClientContext(ctx, s.disc.Client())
	tok, err := s.oauth(p, st.Redirect).Exchange(ctx, code, oauth2.VerifierOption(st.Verifier))
	if err != nil {
		s.cfg.Logger.Info("sign-in refused: code exchange failed", "err", redact(err))
		if providerDown(err) {
			return fail(503, "The identity provider cannot be reached now. Try again in a minute.")
		}
		return fail(403, "The identity provider did not accept this sign-in. Open the application again to sign in.")
	}
	raw, _ := tok.Extra("id_token").(string)
	idt, err := s.disc.Verifier(s.cfg.ClientID).Verify(ctx, raw)
	if err != nil || idt.Nonce != st.Nonce {
		s.cfg.Logger.Info("sign-in refused: ID token not accepted", "nonce_matches", err == nil && idt.Nonce == st.Nonce)
		return fail(403, "The identity provider's answer could not be verified. Open the application again to sign in.")
	}
	id, err := identity.FromIDToken(idt, s.cfg.GroupsClaim)
	if err != nil {
		return fail(403, "The identity provider's answer has no usable identity.")
	}
	now := s.now()
	rec := record{Sub: id.Subject, User: id.User, Email: id.Email, Name: id.Name, Groups: id.Groups,
		Created: now.Unix(), Seen: now.Unix(), Expiry: idt.Expiry.Unix(), Issued: issued(idt, now), Refresh: tok.RefreshToken}
	cookies, err := s.write(&rec)
	if err != nil {
		s.cfg.Logger.Warn("sign-in refused: the session does not fit in cookies", "sub", id.Subject, "groups", len(id.Groups))
		return fail(500, "Your identity is too large to keep in a session (too many groups?). Ask the operator to narrow the groups claim.")
	}
	s.cfg.Logger.Info("signed in", "sub", id.Subject)
	return Response{Status: 302, Location: st.ReturnTo, Cookies: append(cookies, clear...)}
}

// Logout ends the session in this browser (its cookies are cleared) and,
// when the provider advertises an end_session_endpoint, at the provider
// (RP-initiated logout), which returns the browser to the host's root.
func (s *Source) Logout(o Origin) Response {
	cookies := append(s.cfg.Cookie.Clear(), s.auth.Clear()...)
	if p := s.disc.Provider(); p != nil {
		var meta struct {
			EndSession string `json:"end_session_endpoint"`
		}
		if p.Claims(&meta) == nil && meta.EndSession != "" {
			if u, err := url.Parse(meta.EndSession); err == nil {
				q := u.Query()
				q.Set("client_id", s.cfg.ClientID)
				q.Set("post_logout_redirect_uri", o.base()+"/")
				u.RawQuery = q.Encode()
				return Response{Status: 302, Location: u.String(), Cookies: cookies}
			}
		}
	}
	return Response{Status: 200, Cookies: cookies, Page: "You are signed out."}
}

// SafeReturn is a return URL that can only lead to a path on the same
// host: an origin-form target ("/path?query") without a second slash or a
// backslash at its start and without control characters; anything else is
// "/".
func SafeReturn(target string) string {
	if !strings.HasPrefix(target, "/") || strings.HasPrefix(target, "//") || strings.HasPrefix(target, "/\\") {
		return "/"
	}
	for i := 0; i < len(target); i++ {
		if c := target[i]; c < 0x21 || c == 0x7f || c == '\\' {
			return "/"
		}
	}
	u, err := url.Parse(target)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil {
		return "/"
	}
	return target
}

// random returns 32 random bytes, base64url.
func random() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// sanitize keeps an error code from the provider printable and short.
func sanitize(s string) string {
	out := []rune{}
	for _, r := range s {
		if len(out) == 64 {
			break
		}
		if r == '_' || r == '-' || r == ' ' || r == '.' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			out = append(out, r)
		}
	}
	return string(out)
}

// issued is an ID token's iat, or now when it has none.
func issued(idt *oidc.IDToken, now time.Time) int64 {
	if idt.IssuedAt.IsZero() {
		return now.Unix()
	}
	return idt.IssuedAt.Unix()
}

// providerDown reports whether a token-endpoint call failed because the
// provider is down (no answer, or a 5xx), not because it refused.
func providerDown(err error) bool {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return re.Response.StatusCode >= 500
	}
	return true
}

// redact describes a token-endpoint error without what the provider
// echoed back (which may include the code).
func redact(err error) string {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return fmt.Sprintf("token endpoint answered %d (%s)", re.Response.StatusCode, sanitize(re.ErrorCode))
	}
	return "token endpoint not reached"
}
