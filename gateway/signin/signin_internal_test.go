package signin

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/gateway/identity"
	"github.com/kmsgate/kmsgate/gateway/session"
)

// request is an identity.Request with cookies, which takes new ones.
type request struct {
	cookies []string
	set     []string
}

func (r *request) Context() context.Context   { return context.Background() }
func (r *request) Header(name string) string  { return strings.Join(r.HeaderValues(name), "; ") }
func (r *request) HasHeader([]string) bool    { return false }
func (r *request) Peer() netip.Addr           { return netip.MustParseAddr("127.0.0.1") }
func (r *request) TLS() *tls.ConnectionState  { return nil }
func (r *request) SetCookie(values ...string) { r.set = append(r.set, values...) }
func (r *request) HeaderValues(n string) []string {
	if n == "Cookie" {
		return r.cookies
	}
	if n == "X-Forwarded-User" {
		return []string{"alice"}
	}
	return nil
}

func newTestSource(t testing.TB, now *time.Time) *Source {
	sealer, _ := session.NewSealer(bytes.Repeat([]byte{7}, session.KeySize))
	s, err := New(new(identity.Discovery), Config{ClientID: "kmsgate", Sealer: sealer, Lifetime: 8 * time.Hour, Idle: time.Hour}, "")
	if err != nil {
		t.Fatal(err)
	}
	s.SetClock(func() time.Time { return *now })
	return s
}

// cookieHeader turns Set-Cookie values into a Cookie header.
func cookieHeader(set []string) []string {
	var parts []string
	for _, v := range set {
		if strings.Contains(v, "Max-Age=0") {
			continue
		}
		nv, _, _ := strings.Cut(v, ";")
		parts = append(parts, nv)
	}
	return []string{strings.Join(parts, "; ")}
}

// TestSessionLifetimes: a session ends at its absolute lifetime and after
// its idle timeout; use moves its last-seen time on (a new cookie, at most
// every tenth of the idle timeout).
func TestSessionLifetimes(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s := newTestSource(t, &now)
	rec := record{Sub: "u-1", Email: "a@example.com", Groups: []string{"g"}, Created: now.Unix(), Seen: now.Unix(), Expiry: now.Add(24 * time.Hour).Unix()}
	set, err := s.write(&rec)
	if err != nil {
		t.Fatal(err)
	}
	r := &request{cookies: cookieHeader(set)}
	if id, err := s.Identify(r); err != nil || id.Subject != "u-1" || id.Groups[0] != "g" || len(r.set) != 0 {
		t.Fatalf("fresh session: %+v %v, %d cookies set", id, err, len(r.set))
	}
	// 50 minutes on: still valid, and the last-seen time moves on.
	now = now.Add(50 * time.Minute)
	if _, err := s.Identify(r); err != nil || len(r.set) == 0 {
		t.Fatalf("used within the idle timeout: %v, %d cookies set", err, len(r.set))
	}
	r = &request{cookies: cookieHeader(r.set)}
	// Used every 50 minutes, it lives until its lifetime, not beyond.
	for now.Add(50 * time.Minute).Before(time.Unix(rec.Created, 0).Add(8 * time.Hour)) {
		now = now.Add(50 * time.Minute)
		if _, err := s.Identify(r); err != nil {
			t.Fatalf("at %s: %v", now.Sub(time.Unix(rec.Created, 0)), err)
		}
		if len(r.set) > 0 {
			r = &request{cookies: cookieHeader(r.set)}
		}
	}
	now = time.Unix(rec.Created, 0).Add(8*time.Hour + time.Second)
	if _, err := s.Identify(r); !errors.Is(err, identity.ErrSignIn) {
		t.Errorf("past the lifetime: %v", err)
	}
	// Idle: unused for more than an hour.
	now = time.Unix(1_900_000_000, 0)
	rec.Created, rec.Seen = now.Unix(), now.Unix()
	set, _ = s.write(&rec)
	now = now.Add(61 * time.Minute)
	if _, err := s.Identify(&request{cookies: cookieHeader(set)}); !errors.Is(err, identity.ErrSignIn) {
		t.Errorf("idle: %v", err)
	}
	// Expired ID token without a refresh token: sign in again.
	now = time.Unix(2_000_000_000, 0)
	rec = record{Sub: "u-1", Created: now.Unix(), Seen: now.Unix(), Expiry: now.Add(10 * time.Second).Unix()}
	set, _ = s.write(&rec)
	if _, err := s.Identify(&request{cookies: cookieHeader(set)}); !errors.Is(err, identity.ErrSignIn) {
		t.Errorf("expiring ID token, no refresh token: %v", err)
	}
	// With a refresh token but the provider not reached: unavailable (503),
	// not a sign-in loop.
	rec.Refresh = "rt"
	set, _ = s.write(&rec)
	if _, err := s.Identify(&request{cookies: cookieHeader(set)}); !errors.Is(err, identity.ErrUnavailable) {
		t.Errorf("refresh with the provider down: %v", err)
	}
}

// TestCallbackExpired: a callback more than 10 minutes after its sign-in
// started is refused, whatever its state.
func TestCallbackExpired(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s := newTestSource(t, &now)
	st := `{"state":"S","nonce":"N","verifier":"V","return_to":"/","redirect":"http://gw/v1/oidc/callback"}`
	set, _ := s.auth.Write(s.cfg.Sealer.Seal(s.auth.Name, []byte(st), now.Add(stateLifetime)), now.Add(stateLifetime))
	now = now.Add(stateLifetime)
	resp := s.Callback(context.Background(), cookieHeader(set), "code=C&state=S")
	if resp.Status != 400 || !strings.Contains(resp.Page, "expired") || resp.Location != "" {
		t.Errorf("late callback: %+v", resp)
	}
}

func TestSafeReturn(t *testing.T) {
	for in, want := range map[string]string{
		"/a/b?c=d": "/a/b?c=d", "/": "/", "": "/", "//evil.example": "/", "///evil": "/", "/\\evil": "/",
		"https://evil.example/": "/", "evil.example": "/", "javascript:alert(1)": "/", "/a\r\nSet-Cookie: x": "/",
		"/a b": "/", "/\x7f": "/", "/a\\b": "/", "/%2F%2Fevil": "/%2F%2Fevil",
	} {
		if got := SafeReturn(in); got != want {
			t.Errorf("SafeReturn(%q) = %q, want %q", in, got, want)
		}
	}
}

// BenchmarkIdentify compares a request with a session cookie (open,
// decode, check) with the same identity from trusted headers; the
// difference is what a session costs per request.
func BenchmarkIdentify(b *testing.B) {
	now := time.Now()
	s := newTestSource(b, &now)
	rec := record{Sub: "u-1", User: "alice", Email: "alice@example.com", Name: "Alice Admin", Groups: []string{"staff", "admins", "dev", "oncall"},
		Created: now.Unix(), Seen: now.Unix(), Expiry: now.Add(time.Hour).Unix(), Refresh: strings.Repeat("r", 64)}
	set, _ := s.write(&rec)
	r := &request{cookies: cookieHeader(set)}
	headers := identity.NewHeaderSource([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	b.Run("source=oidc-login", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Identify(r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("source=headers", func(b *testing.B) {
		for b.Loop() {
			if _, err := headers.Identify(r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestRefreshRefused: on the session's clock, a refresh is asked for only
// in the ID token's last half (at most its last 30 s); a refused refresh
// sends an older session to sign in again, and makes a session younger
// than 30 s unavailable (503) instead, so a provider that will not renew
// what it just issued causes no sign-in loop; a provider that is down is
// unavailable.
func TestRefreshRefused(t *testing.T) {
	var status atomic.Int32
	status.Store(400)
	var calls atomic.Int32
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			json.NewEncoder(w).Encode(map[string]any{"issuer": srv.URL, "jwks_uri": srv.URL + "/jwks", "authorization_endpoint": srv.URL + "/auth",
				"token_endpoint": srv.URL + "/token", "id_token_signing_alg_values_supported": []string{"RS256"},
				"token_endpoint_auth_methods_supported": []string{"client_secret_basic"}})
		case "/token":
			calls.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(int(status.Load()))
			io.WriteString(w, `{"error":"invalid_grant"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	d, err := identity.Discover(context.Background(), srv.URL, slog.New(slog.DiscardHandler))
	if err != nil || d.Provider() == nil {
		t.Fatalf("discovery: %v", err)
	}
	now := time.Unix(1_800_000_000, 0)
	sealer, _ := session.NewSealer(bytes.Repeat([]byte{7}, session.KeySize))
	s, _ := New(d, Config{ClientID: "kmsgate", Sealer: sealer, Logger: slog.New(slog.DiscardHandler)}, "")
	s.SetClock(func() time.Time { return now })
	start := now
	cookie := func(lifetime time.Duration) []string {
		rec := record{Sub: "u-1", Created: start.Unix(), Seen: start.Unix(), Issued: start.Unix(), Expiry: start.Add(lifetime).Unix(), Refresh: "rt"}
		set, _ := s.write(&rec)
		return cookieHeader(set)
	}
	// A 10-minute token: due in its last 30 s.
	long := cookie(10 * time.Minute)
	now = start.Add(9*time.Minute + 29*time.Second)
	if _, err := s.Identify(&request{cookies: long}); err != nil || calls.Load() != 0 {
		t.Fatalf("before the margin: %v, %d refresh calls", err, calls.Load())
	}
	now = start.Add(9*time.Minute + 31*time.Second)
	if _, err := s.Identify(&request{cookies: long}); !errors.Is(err, identity.ErrSignIn) || calls.Load() != 1 {
		t.Fatalf("refused, older session: %v, %d refresh calls; want a new sign-in", err, calls.Load())
	}
	// A 20-second token: due in its last half, and refused while the
	// session is younger than 30 s.
	now = start
	short := cookie(20 * time.Second)
	now = start.Add(9 * time.Second)
	if _, err := s.Identify(&request{cookies: short}); err != nil || calls.Load() != 1 {
		t.Fatalf("first half of a short token: %v, %d refresh calls", err, calls.Load())
	}
	now = start.Add(11 * time.Second)
	if _, err := s.Identify(&request{cookies: short}); !errors.Is(err, identity.ErrUnavailable) || calls.Load() != 2 {
		t.Fatalf("refused, session made moments ago: %v; want unavailable, no new sign-in", err)
	}
	// The provider down: unavailable, whatever the session's age.
	status.Store(503)
	now = start.Add(9*time.Minute + 31*time.Second)
	if _, err := s.Identify(&request{cookies: long}); !errors.Is(err, identity.ErrUnavailable) {
		t.Fatalf("provider down: %v", err)
	}
}
