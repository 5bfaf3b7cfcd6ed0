// Package verify checks the signed identity assertions kmsgate adds to
// the requests it forwards, for Go apps behind it: net/http middleware and a
// Verify function over the gateway's JWKS. It is a module of its own that
// depends on go-jose and the standard library only; the echo adapter is the
// separate module verify/echoverify.
package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// DefaultHeader is the request header that carries the gateway's signed
// assertion unless VerifierConfig.Header names another.
const DefaultHeader = "X-Kmsgate-Jwt-Assertion"

// Defaults of VerifierConfig.
const (
	DefaultLeeway             = 30 * time.Second
	DefaultMinRefresh         = time.Minute
	DefaultMaxRefresh         = time.Hour
	DefaultUnknownKIDInterval = 30 * time.Second
)

// fetchTimeout bounds every fetch of the key set, whatever the HTTP client.
const fetchTimeout = 10 * time.Second

// maxSetSize bounds the key set document read from the JWKS URL.
const maxSetSize = 1 << 20

// VerifierConfig configures a Verifier. JWKSURL, Issuer and Audience are
// required; every other zero field takes its default.
type VerifierConfig struct {
	// JWKSURL is the gateway's key set, e.g.
	// https://gw.example/.well-known/jwks.json. Keys are only ever fetched
	// from here, never from a URL named in a token (jku, x5u).
	JWKSURL string
	// Issuer is the required iss claim: the gateway's --issuer.
	Issuer string
	// Audience is the required aud claim: this application's host.
	Audience string
	// Header is the request header holding the assertion; DefaultHeader
	// when empty (X-Pomerium-Jwt-Assertion for drop-in use).
	Header string
	// Leeway is the clock skew allowed on exp, nbf and iat; DefaultLeeway
	// (30 s) when zero.
	Leeway time.Duration
	// MinRefresh and MaxRefresh bound how long a fetched key set is used
	// before it is fetched again: the response's Cache-Control max-age
	// (less its Age) is clamped to [MinRefresh, MaxRefresh]. A response
	// without max-age, or with no-cache or no-store, is refreshed after
	// MinRefresh, as is a failed fetch. Defaults: 1 minute and 1 hour.
	MinRefresh time.Duration
	MaxRefresh time.Duration
	// UnknownKIDInterval is the least time between two refreshes caused by
	// a token whose kid is not in the set; DefaultUnknownKIDInterval (30 s)
	// when zero.
	UnknownKIDInterval time.Duration
	// HTTPClient fetches the key set; when nil, a client with a 10 s
	// timeout that refuses redirects from https to http. Each fetch is
	// bounded by 10 s in any case.
	HTTPClient *http.Client
	// Logger receives refresh results and rejected assertions (never a
	// token); slog.Default when nil.
	Logger *slog.Logger
}

// Verifier checks the assertions kmsgate adds to the requests it forwards:
// ES256 JWTs signed by a key of the configured JWKS URL, with the configured
// iss and aud, and a valid exp.
//
// The key set is fetched when the Verifier is made and then refreshed in the
// background, as its Cache-Control allows (see VerifierConfig.MinRefresh),
// with If-None-Match so that an unchanged set costs a 304. A token whose kid
// is not in the set causes one immediate refresh, at most once per
// UnknownKIDInterval however many requests carry such tokens, so a key the
// gateway has just published is accepted without waiting. A failed refresh
// keeps the last good set. Call Close to stop the background refresh.
//
// A Verifier is safe for concurrent use.
type Verifier struct {
	cfg    VerifierConfig
	url    string // the JWKS URL
	logURL string // the JWKS URL without user info, for logs and errors
	expect Expect

	set                  atomic.Pointer[keySet]
	fetching, kidRefresh flight

	mu         sync.Mutex
	next       time.Time // when the background loop fetches next
	maxAge     time.Duration
	hasMaxAge  bool
	lastKIDRef time.Time // last refresh caused by an unknown kid

	base      context.Context // ends on Close; parent of every fetch after construction
	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// keySet is one fetched key set; a 304 keeps the same value.
type keySet struct {
	keys *jose.JSONWebKeySet
	etag string
}

// NewVerifier checks cfg, fetches the key set (bounded by ctx and 10 s) and
// starts refreshing it in the background. It fails when the set cannot be
// fetched or holds no ES256 key.
func NewVerifier(ctx context.Context, cfg VerifierConfig) (*Verifier, error) {
	cfg, u, err := checkVerifierConfig(cfg)
	if err != nil {
		return nil, err
	}
	v := &Verifier{
		cfg:    cfg,
		url:    u.String(),
		logURL: u.Redacted(),
		expect: Expect{Issuer: cfg.Issuer, Audience: cfg.Audience, Leeway: cfg.Leeway},
		done:   make(chan struct{}),
	}
	fctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	err = v.fetch(fctx)
	cancel()
	if err != nil {
		return nil, err
	}
	v.base, v.cancel = context.WithCancel(context.Background())
	go v.run()
	return v, nil
}

func checkVerifierConfig(cfg VerifierConfig) (VerifierConfig, *url.URL, error) {
	if cfg.JWKSURL == "" {
		return cfg, nil, errors.New("jwks: verifier: JWKSURL is required")
	}
	u, err := url.Parse(cfg.JWKSURL)
	if err != nil {
		return cfg, nil, fmt.Errorf("jwks: verifier: JWKSURL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return cfg, nil, fmt.Errorf("jwks: verifier: JWKSURL %s: scheme must be http or https", u.Redacted())
	}
	if u.Host == "" {
		return cfg, nil, fmt.Errorf("jwks: verifier: JWKSURL %s has no host", u.Redacted())
	}
	if cfg.Issuer == "" {
		return cfg, nil, errors.New("jwks: verifier: Issuer is required (the gateway's --issuer)")
	}
	if cfg.Audience == "" {
		return cfg, nil, errors.New("jwks: verifier: Audience is required (this application's host)")
	}
	if cfg.Header == "" {
		cfg.Header = DefaultHeader
	}
	if strings.ContainsAny(cfg.Header, " \t\r\n:") {
		return cfg, nil, fmt.Errorf("jwks: verifier: Header %q is not a header name", cfg.Header)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Leeway", &cfg.Leeway, DefaultLeeway},
		{"MinRefresh", &cfg.MinRefresh, DefaultMinRefresh},
		{"MaxRefresh", &cfg.MaxRefresh, DefaultMaxRefresh},
		{"UnknownKIDInterval", &cfg.UnknownKIDInterval, DefaultUnknownKIDInterval},
	} {
		if *d.v < 0 {
			return cfg, nil, fmt.Errorf("jwks: verifier: %s %s is negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if cfg.MinRefresh > cfg.MaxRefresh {
		return cfg, nil, fmt.Errorf("jwks: verifier: MinRefresh %s is above MaxRefresh %s", cfg.MinRefresh, cfg.MaxRefresh)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: fetchTimeout, CheckRedirect: noDowngrade}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg, u, nil
}

// noDowngrade follows at most 10 redirects, never from https to http.
func noDowngrade(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
		return fmt.Errorf("refusing redirect from https to %s", req.URL.Scheme)
	}
	return nil
}

// Close stops the background refresh and waits for it to end. Verify keeps
// working with the last fetched set but never fetches again.
func (v *Verifier) Close() error {
	v.closeOnce.Do(func() {
		v.cancel()
		<-v.done
	})
	return nil
}

// run refreshes the key set whenever it is due, until Close.
func (v *Verifier) run() {
	defer close(v.done)
	for {
		v.mu.Lock()
		wait := time.Until(v.next)
		v.mu.Unlock()
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-v.base.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue // another refresh may have moved the due time
		}
		if err := v.refresh(v.base); err != nil && v.base.Err() == nil {
			v.cfg.Logger.Warn("jwks: key set refresh failed; keeping the last good set", "url", v.logURL, "err", err.Error())
		}
		if v.base.Err() != nil {
			// Closed during the refresh, which may still be ending (an
			// HTTPClient can be slow to give up): do not ask again.
			return
		}
	}
}

// refresh fetches the key set once, sharing a fetch already under way. The
// fetch itself is bounded by Close and fetchTimeout, not by ctx, so that the
// callers it is shared with are not cut short by one that gives up.
func (v *Verifier) refresh(ctx context.Context) error {
	c := v.fetching.start(func() error {
		if err := v.base.Err(); err != nil {
			return err // closed: never fetch again
		}
		fctx, cancel := context.WithTimeout(v.base, fetchTimeout)
		defer cancel()
		return v.fetch(fctx)
	})
	return c.wait(ctx)
}

// fetch makes one conditional GET of the key set, installs what it gets and
// schedules the next refresh.
func (v *Verifier) fetch(ctx context.Context) error {
	cur := v.set.Load()
	fr, err := v.get(ctx, cur)
	now := time.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	if err != nil {
		v.next = now.Add(v.cfg.MinRefresh)
		return err
	}
	// A 200 brings its own caching headers; a 304 updates the stored ones
	// only with what it carries (RFC 9111, section 4.3.4).
	if !fr.notModified || fr.hasMaxAge {
		v.maxAge, v.hasMaxAge = fr.maxAge, fr.hasMaxAge
	}
	fresh := v.cfg.MinRefresh
	if v.hasMaxAge {
		fresh = min(max(v.maxAge, v.cfg.MinRefresh), v.cfg.MaxRefresh)
	}
	v.next = now.Add(fresh)
	return nil
}

// fetched is what one successful fetch says about freshness.
type fetched struct {
	notModified bool
	maxAge      time.Duration // remaining freshness, when hasMaxAge
	hasMaxAge   bool
}

// get requests the key set and installs a changed one.
func (v *Verifier) get(ctx context.Context, cur *keySet) (fetched, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.url, nil)
	if err != nil {
		return fetched{}, fmt.Errorf("jwks: fetch %s: %w", v.logURL, err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	if cur != nil && cur.etag != "" {
		req.Header.Set("If-None-Match", cur.etag)
	}
	resp, err := v.cfg.HTTPClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is named below, without user info
		}
		return fetched{}, fmt.Errorf("jwks: fetch %s: %w", v.logURL, err)
	}
	defer resp.Body.Close()
	var fr fetched
	fr.maxAge, fr.hasMaxAge = freshness(resp.Header)
	switch {
	case resp.StatusCode == http.StatusNotModified && cur != nil:
		fr.notModified = true
		return fr, nil
	case resp.StatusCode != http.StatusOK:
		return fetched{}, fmt.Errorf("jwks: fetch %s: status %s", v.logURL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxSetSize+1))
	if err != nil {
		return fetched{}, fmt.Errorf("jwks: fetch %s: read: %w", v.logURL, err)
	}
	if len(body) > maxSetSize {
		return fetched{}, fmt.Errorf("jwks: fetch %s: key set is larger than %d bytes", v.logURL, maxSetSize)
	}
	keys, err := ParseSet(body)
	if err != nil {
		return fetched{}, fmt.Errorf("jwks: fetch %s: %w", v.logURL, err)
	}
	etag := resp.Header.Get("ETag")
	v.set.Store(&keySet{keys: keys, etag: etag})
	level := slog.LevelInfo
	if cur != nil && (etag == "" || etag == cur.etag) {
		level = slog.LevelDebug // a server without ETags answers 200 every time
	}
	v.cfg.Logger.Log(ctx, level, "jwks: key set loaded", "url", v.logURL, "keys", len(keys.Keys), "etag", etag)
	return fr, nil
}

// freshness returns how much longer a response may be used according to its
// Cache-Control max-age less its Age; zero for no-cache and no-store, and
// false when the response says nothing.
func freshness(h http.Header) (time.Duration, bool) {
	var maxAge time.Duration
	found := false
	for _, line := range h.Values("Cache-Control") {
		for _, d := range strings.Split(line, ",") {
			name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
			switch strings.ToLower(name) {
			case "no-cache", "no-store":
				return 0, true
			case "max-age":
				n, err := strconv.ParseInt(strings.Trim(val, `"`), 10, 64)
				if err != nil || n < 0 {
					return 0, true // unusable: treat as stale
				}
				maxAge, found = time.Duration(min(n, 1<<31))*time.Second, true
			}
		}
	}
	if !found {
		return 0, false
	}
	if age, err := strconv.ParseInt(h.Get("Age"), 10, 64); err == nil && age > 0 {
		maxAge -= time.Duration(min(age, 1<<31)) * time.Second
	}
	return max(maxAge, 0), true
}

// Claims are the claims of a verified assertion.
type Claims struct {
	Issuer    string
	Audience  []string
	Subject   string
	User      string
	Email     string
	Groups    []string
	Name      string
	IssuedAt  time.Time // zero when the token has no iat
	NotBefore time.Time // zero when the token has no nbf
	ExpiresAt time.Time
	ID        string // jti
	// Raw holds every claim as decoded from JSON (numbers are float64).
	Raw map[string]any
}

// claimsJSON decodes the members of Claims with go-jose's types, which take
// aud as a string or an array and dates as JSON numbers.
type claimsJSON struct {
	Issuer    string           `json:"iss"`
	Audience  jwt.Audience     `json:"aud"`
	Subject   string           `json:"sub"`
	User      string           `json:"user"`
	Email     string           `json:"email"`
	Groups    []string         `json:"groups"`
	Name      string           `json:"name"`
	IssuedAt  *jwt.NumericDate `json:"iat"`
	NotBefore *jwt.NumericDate `json:"nbf"`
	Expiry    *jwt.NumericDate `json:"exp"`
	ID        string           `json:"jti"`
}

func newClaims(raw map[string]any) (*Claims, error) {
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, fmt.Errorf("jwks: claims: %w", err)
	}
	var c claimsJSON
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("jwks: claims: %w", err)
	}
	date := func(n *jwt.NumericDate) time.Time {
		if n == nil {
			return time.Time{}
		}
		return n.Time()
	}
	return &Claims{
		Issuer:    c.Issuer,
		Audience:  c.Audience,
		Subject:   c.Subject,
		User:      c.User,
		Email:     c.Email,
		Groups:    c.Groups,
		Name:      c.Name,
		IssuedAt:  date(c.IssuedAt),
		NotBefore: date(c.NotBefore),
		ExpiresAt: date(c.Expiry),
		ID:        c.ID,
		Raw:       raw,
	}, nil
}

// Verify checks a compact JWT: ES256 only (none, HS256, RS256 and the rest
// are refused), a kid of the configured key set, a valid signature, the
// configured iss and aud, an exp, and exp, nbf and iat within the leeway.
// A kid that is not in the set causes a refresh (see Verifier) and one more
// try. Errors wrap go-jose's jwt.ErrExpired, jwt.ErrInvalidAudience, … and
// ErrUnknownKID, for errors.Is.
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	if token == "" {
		return nil, errors.New("jwks: empty token")
	}
	set := v.set.Load()
	raw, err := VerifyWithSet(token, set.keys, v.expect)
	if errors.Is(err, ErrUnknownKID) {
		if rerr := v.refreshForUnknownKID(ctx); rerr != nil && ctx.Err() != nil {
			return nil, fmt.Errorf("%w (refresh: %w)", err, rerr)
		}
		if now := v.set.Load(); now != set {
			raw, err = VerifyWithSet(token, now.keys, v.expect)
		}
	}
	if err != nil {
		return nil, err
	}
	return newClaims(raw)
}

// refreshForUnknownKID refreshes the key set unless a refresh for an unknown
// kid started less than UnknownKIDInterval ago. Concurrent callers share one
// refresh and all wait for it (or for their ctx).
func (v *Verifier) refreshForUnknownKID(ctx context.Context) error {
	c := v.kidRefresh.start(func() error {
		v.mu.Lock()
		now := time.Now()
		if !v.lastKIDRef.IsZero() && now.Sub(v.lastKIDRef) < v.cfg.UnknownKIDInterval {
			v.mu.Unlock()
			return nil
		}
		v.lastKIDRef = now
		v.mu.Unlock()
		err := v.refresh(v.base)
		if err != nil && v.base.Err() == nil {
			v.cfg.Logger.Warn("jwks: key set refresh for an unknown kid failed; keeping the last good set", "url", v.logURL, "err", err.Error())
		}
		return err
	})
	return c.wait(ctx)
}

// flight shares one run of a function among the callers that ask for it
// while it runs.
type flight struct {
	mu  sync.Mutex
	cur *call
}

// call is one run of a flight's function.
type call struct {
	done chan struct{}
	err  error
}

// start runs fn in a goroutine unless a run is under way, and returns the
// run to wait for.
func (f *flight) start(fn func() error) *call {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur != nil {
		return f.cur
	}
	c := &call{done: make(chan struct{})}
	f.cur = c
	go func() {
		c.err = fn()
		f.mu.Lock()
		f.cur = nil
		f.mu.Unlock()
		close(c.done)
	}()
	return c
}

// wait returns the run's error, or ctx's when ctx ends first.
func (c *call) wait(ctx context.Context) error {
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

type claimsKey struct{}

// NewContext returns a copy of ctx carrying c, as Middleware does; it is
// meant for tests of handlers that read ClaimsFromContext.
func NewContext(ctx context.Context, c *Claims) context.Context {
	return context.WithValue(ctx, claimsKey{}, c)
}

// ClaimsFromContext returns the claims Middleware (or EchoMiddleware) put
// in a request's context, and false when there are none.
func ClaimsFromContext(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(*Claims)
	return c, ok && c != nil
}

// Rejection is why a request's assertion was refused, and the JSON body of
// the 401 answer; it never holds the token.
type Rejection struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// CheckRequest reads the assertion header of r (exactly one value) and
// verifies it, as Middleware does; a refusal is logged at debug level and
// returned. Framework adapters (echoverify) are built on it.
func (v *Verifier) CheckRequest(r *http.Request) (*Claims, *Rejection) {
	c, rej, err := v.check(r)
	if rej != nil {
		v.cfg.Logger.LogAttrs(r.Context(), slog.LevelDebug, "jwks: assertion rejected",
			slog.String("code", rej.Code), slog.String("reason", rej.Error),
			slog.String("err", err.Error()), slog.String("remote", r.RemoteAddr))
	}
	return c, rej
}

// check reads the assertion header of r and verifies it.
func (v *Verifier) check(r *http.Request) (*Claims, *Rejection, error) {
	vals := r.Header.Values(v.cfg.Header)
	switch {
	case len(vals) == 0 || (len(vals) == 1 && vals[0] == ""):
		return nil, &Rejection{"missing " + v.cfg.Header + " header", "missing_assertion"}, errors.New("no assertion header")
	case len(vals) > 1:
		return nil, &Rejection{"more than one " + v.cfg.Header + " header", "multiple_assertions"}, fmt.Errorf("%d assertion headers", len(vals))
	}
	c, err := v.Verify(r.Context(), vals[0])
	if err != nil {
		rej := &Rejection{"assertion is invalid", "invalid_assertion"}
		switch {
		case errors.Is(err, jwt.ErrExpired):
			rej = &Rejection{"assertion has expired", "expired_assertion"}
		case errors.Is(err, jwt.ErrNotValidYet), errors.Is(err, jwt.ErrIssuedInTheFuture):
			rej.Error = "assertion is not valid yet"
		case errors.Is(err, jwt.ErrInvalidIssuer):
			rej.Error = "assertion issuer is not accepted"
		case errors.Is(err, jwt.ErrInvalidAudience):
			rej.Error = "assertion audience is not accepted"
		case errors.Is(err, ErrUnknownKID):
			rej.Error = "assertion key is unknown"
		}
		return nil, rej, err
	}
	return c, nil, nil
}

// Middleware verifies the assertion header of every request and passes the
// request on with the claims in its context (see ClaimsFromContext). A
// request without exactly one valid assertion is answered 401 with a JSON
// body {"error": …, "code": …}; the token is never echoed or logged.
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, rej := v.CheckRequest(r)
		if rej != nil {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(rej)
			return
		}
		next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), c)))
	})
}
