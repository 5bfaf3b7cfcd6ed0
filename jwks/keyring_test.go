package jwks_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/backends/pem"
	"github.com/kmsgate/kmsgate/jwks"
	"github.com/kmsgate/kmsgate/jwks/verify"
)

func header(t *testing.T, token string) jose.Header {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Headers[0]
}

func TestSignJWTVerifiesIndependently(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b, err := pem.New("mem", k1, k2)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: "mem://", Backend: b}}, jwks.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, _, err := kr.SignJWT(ctx, map[string]any{}); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("sign before the first refresh: %v", err)
	}
	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	claims, err := jwks.NewClaims("https://issuer.example", time.Now(), time.Minute, map[string]any{"sub": "alice", "aud": "app", "groups": []string{"a", "b"}})
	if err != nil {
		t.Fatal(err)
	}
	tok, kid, err := kr.SignJWT(ctx, claims)
	if err != nil {
		t.Fatal(err)
	}
	wantKID, _ := jwks.KID(&k1.PublicKey, jwks.KIDThumbprint)
	if kid != wantKID {
		t.Fatalf("signed with %s, want the first PEM key %s", kid, wantKID)
	}
	h := header(t, tok)
	if h.Algorithm != "ES256" || h.KeyID != kid || h.ExtraHeaders["typ"] != "JWT" {
		t.Fatalf("header %+v", h)
	}
	// lestrrat-go/jwx against the served document.
	got := backendtest.VerifyIndependently(t, tok, kr.State().Document.JSON)
	if got["sub"] != "alice" || got["iss"] != "https://issuer.example" || got["jti"] == "" {
		t.Fatalf("claims %v", got)
	}
	// go-jose with the public key alone.
	parsed, _ := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	var std jwt.Claims
	if err := parsed.Claims(&k1.PublicKey, &std); err != nil || std.Subject != "alice" {
		t.Fatalf("go-jose: %v %+v", err, std)
	}
	// And kmsgate's own verifier.
	set, err := verify.ParseSet(kr.State().Document.JSON)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify.VerifyWithSet(tok, set, verify.Expect{Issuer: "https://issuer.example", Audience: "app"}); err != nil {
		t.Fatal(err)
	}
	if _, err := verify.VerifyWithSet(tok, set, verify.Expect{Audience: "other"}); err == nil {
		t.Fatal("wrong audience accepted")
	}
	tampered := tok[:len(tok)-4] + "AAAA"
	if _, err := verify.VerifyWithSet(tampered, set, verify.Expect{}); err == nil {
		t.Fatal("tampered signature accepted")
	}
}

func TestNewClaimsRefusesReserved(t *testing.T) {
	for _, r := range jwks.Reserved {
		if _, err := jwks.NewClaims("i", time.Now(), time.Minute, map[string]any{r: 1}); err == nil || !strings.Contains(err.Error(), r) {
			t.Errorf("%s: %v", r, err)
		}
	}
	if _, err := jwks.NewClaims("i", time.Now(), 0, nil); err == nil {
		t.Error("zero ttl accepted")
	}
}

func TestRemoteSignatureIsVerified(t *testing.T) {
	f := &backendtest.Fake{}
	f.Add("v1", time.Now().Add(-time.Hour))
	f.Add("v2", time.Now().Add(-30*time.Minute))
	kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{})
	ctx := context.Background()
	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := kr.SignJWT(ctx, map[string]any{"sub": "x"}); err != nil {
		t.Fatal(err)
	}
	f.SetWrongKey(true)
	var signErrs atomic.Int32
	kr2, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{OnSign: func(_, _ string, _ time.Duration, err error) {
		if err != nil {
			signErrs.Add(1)
		}
	}})
	_ = kr2.Refresh(ctx)
	if _, _, err := kr2.SignJWT(ctx, map[string]any{"sub": "x"}); !errors.Is(err, backends.ErrIntegrity) {
		t.Fatalf("signature by the wrong key: %v", err)
	}
	if signErrs.Load() != 1 {
		t.Fatalf("OnSign saw %d errors", signErrs.Load())
	}
}

func TestRotationAndLastGoodSet(t *testing.T) {
	c := backendtest.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	f := &backendtest.Fake{}
	f.Add("v1", c.Now().Add(-24*time.Hour))
	kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{Prepublish: 2 * time.Hour, Clock: c.Now})
	ctx := context.Background()
	if kr.State().Ready {
		t.Fatal("ready before the first refresh")
	}
	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	_, kid1, _ := kr.SignJWT(ctx, map[string]any{})

	// A new version appears: published at once, pending for 2h.
	f.Add("v2", c.Now())
	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	st := kr.State()
	if len(st.Plan.Keys) != 2 {
		t.Fatalf("%d keys published", len(st.Plan.Keys))
	}
	if _, kid, _ := kr.SignJWT(ctx, map[string]any{}); kid != kid1 {
		t.Fatal("pending version signed")
	}
	etag := st.Document.ETag

	// The backend goes down: the last good set keeps being served.
	f.SetFail(errors.New("connection refused"))
	if err := kr.Refresh(ctx); err == nil {
		t.Fatal("failed refresh returned no error")
	}
	if kr.State().Document.ETag != etag || !kr.State().Ready {
		t.Fatal("a failed refresh changed the served set")
	}

	// Past the window the new version signs without any refresh: the
	// choice depends on the clock alone.
	lists := f.Lists.Load()
	c.Add(2*time.Hour + time.Second)
	f.SetFail(nil)
	_, kid2, err := kr.SignJWT(ctx, map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	if kid2 == kid1 {
		t.Fatal("the new version did not become active after prepublish")
	}
	if f.Lists.Load() != lists {
		t.Fatal("signing listed versions")
	}
	if kr.State().Document.ETag != etag {
		t.Fatal("activation changed the published document")
	}
}

func TestNewKeyringRefuses(t *testing.T) {
	if _, err := jwks.NewKeyring(nil, jwks.Config{}); err == nil {
		t.Fatal("no sources accepted")
	}
	f := &backendtest.Fake{}
	if _, err := jwks.NewKeyring([]jwks.Source{{URI: "x", Backend: f}}, jwks.Config{KIDFormat: "md5"}); err == nil {
		t.Fatal("bad kid format accepted")
	}
}

// TestSignDeadlineWithHangingBackend: a remote backend whose client ignores
// its context does not hold SignJWT past the caller's deadline. It runs in a
// synctest bubble, so the answer is checked to come at the deadline exactly.
func TestSignDeadlineWithHangingBackend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &backendtest.Fake{}
		f.Add("v1", time.Now().Add(-time.Hour))
		kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{})
		if err := kr.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
		f.SetHang(true)
		defer f.SetHang(false) // the held call ends with the bubble
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, _, err := kr.SignJWT(ctx, map[string]any{})
		if !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("hanging backend: %v", err)
		}
		if took := time.Since(start); took != 100*time.Millisecond {
			t.Fatalf("SignJWT returned after %s, want the 100ms deadline", took)
		}
		if n := f.Signs.Load(); n != 1 {
			t.Fatalf("%d backend calls, want 1", n)
		}
	})
}

// TestReenabledVersionIsPendingFromReenabling: a version created long ago
// that becomes usable again while the keyring watches is pending for
// --prepublish from then, not from its creation, so verifiers get its key
// before it signs. A keyring that starts after the re-enabling cannot know
// and counts from creation (the risk the README and `kmsgate keys` state).
func TestReenabledVersionIsPendingFromReenabling(t *testing.T) {
	c := backendtest.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	f := &backendtest.Fake{}
	f.Add("v1", c.Now().Add(-72*time.Hour))
	f.Add("v2", c.Now().Add(-24*time.Hour))
	f.SetState("v2", backends.StateDisabled)
	kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{Prepublish: 2 * time.Hour, Clock: c.Now})
	if err := kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	v1 := kr.ActiveKID()
	c.Add(10 * time.Minute)
	f.SetState("v2", backends.StateEnabled)
	if err := kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if kr.ActiveKID() != v1 {
		t.Fatal("the re-enabled version signs at once")
	}
	var v2 jwks.Key
	for _, k := range kr.State().Plan.Keys {
		if k.Version.ID == "v2" {
			v2 = k
		}
	}
	if v2.Role != jwks.RolePending || !v2.ActiveFrom.Equal(c.Now().Add(2*time.Hour)) {
		t.Fatalf("re-enabled v2: %s, active from %s; want pending until %s", v2.Role, v2.ActiveFrom, c.Now().Add(2*time.Hour))
	}
	c.Add(2*time.Hour - time.Second)
	if kr.ActiveKID() != v1 {
		t.Fatal("v2 signs before --prepublish has passed since its re-enabling")
	}
	c.Add(time.Second)
	if kr.ActiveKID() != v2.KID {
		t.Fatal("v2 does not sign once --prepublish has passed since its re-enabling")
	}
	// Disabled and re-enabled again: timed anew.
	f.SetState("v2", backends.StateDisabled)
	_ = kr.Refresh(context.Background())
	c.Add(time.Minute)
	f.SetState("v2", backends.StateEnabled)
	_ = kr.Refresh(context.Background())
	if kr.ActiveKID() != v1 {
		t.Fatal("a second re-enabling is not timed anew")
	}
	// A fresh keyring sees v2 usable at its first load: by creation.
	fresh, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{Prepublish: 2 * time.Hour, Clock: c.Now})
	if err := fresh.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fresh.ActiveKID() != v2.KID {
		t.Fatal("a fresh keyring does not count from creation")
	}
}

// TestNewAndHiddenVersions: a version created since the last load is new
// and counts from its creation, as on every replica; one listed for the
// first time though created before the last load (an alias moved onto an
// old key) counts from when it was seen.
func TestNewAndHiddenVersions(t *testing.T) {
	c := backendtest.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	f := &backendtest.Fake{}
	f.Add("v1", c.Now().Add(-72*time.Hour))
	kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{Prepublish: 2 * time.Hour, Clock: c.Now})
	if err := kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.Add(time.Minute)
	f.Add("new", c.Now().Add(-30*time.Second))  // created since the last load
	f.Add("hidden", c.Now().Add(-48*time.Hour)) // old, first listed now
	if err := kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	from := map[string]time.Time{}
	for _, k := range kr.State().Plan.Keys {
		from[k.Version.ID] = k.ActiveFrom
	}
	if want := c.Now().Add(-30 * time.Second).Add(2 * time.Hour); !from["new"].Equal(want) {
		t.Errorf("new version active from %s, want %s (its creation + prepublish)", from["new"], want)
	}
	if want := c.Now().Add(2 * time.Hour); !from["hidden"].Equal(want) {
		t.Errorf("hidden version active from %s, want %s (first seen + prepublish)", from["hidden"], want)
	}
}

// TestRunSchedule follows the background refresh (kmsgate's --refresh loop)
// on the fake clock of a synctest bubble: until every URI has loaded it tries
// every 2 s (or the interval, when shorter), then every interval; a version
// that appears is published at the next refresh and signs --prepublish
// after it was first seen, to the nanosecond and without a refresh.
func TestRunSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval, prepublish = time.Minute, 2 * time.Hour
		f := &backendtest.Fake{}
		f.Add("v1", time.Now().Add(-24*time.Hour))
		f.SetFail(fmt.Errorf("fake: connection refused: %w", backends.ErrUnavailable))
		kr, err := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{
			Prepublish: prepublish, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { kr.Run(ctx, interval, 10*time.Second); close(done) }()
		defer func() { cancel(); <-done }()
		at := func(wait time.Duration, lists int64, what string) {
			t.Helper()
			time.Sleep(wait)
			synctest.Wait()
			if n := f.Lists.Load(); n != lists {
				t.Fatalf("%s: %d refreshes, want %d", what, n, lists)
			}
		}
		at(2*time.Second-1, 0, "just before the first retry")
		at(1, 1, "the first retry, failing")
		at(2*time.Second, 2, "the second retry, failing")
		f.SetFail(nil)
		at(2*time.Second, 3, "the third retry")
		if !kr.State().Ready {
			t.Fatal("not ready after a successful refresh")
		}
		at(interval-1, 3, "ready: just before the interval")
		at(1, 4, "ready: one interval")
		_, kid1, err := kr.SignJWT(ctx, map[string]any{})
		if err != nil {
			t.Fatal(err)
		}

		f.Add("v2", time.Now())
		at(interval, 5, "the refresh that sees v2")
		seen := time.Now()
		if st := kr.State(); len(st.Plan.Keys) != 2 || !st.Plan.NextChange.Equal(seen.Add(prepublish)) {
			t.Fatalf("after v2 appeared: %d keys published, next change %s, want 2 and %s", len(st.Plan.Keys), st.Plan.NextChange, seen.Add(prepublish))
		}
		// With the loop stopped, the switch comes from the clock alone.
		cancel()
		<-done
		lists := f.Lists.Load()
		time.Sleep(time.Until(seen.Add(prepublish - 1)))
		if _, kid, _ := kr.SignJWT(context.Background(), map[string]any{}); kid != kid1 {
			t.Fatal("v2 signed before it had been published for --prepublish")
		}
		time.Sleep(1)
		_, kid2, err := kr.SignJWT(context.Background(), map[string]any{})
		if err != nil || kid2 == kid1 {
			t.Fatalf("--prepublish after v2 was seen: kid %s, err %v; want v2's kid", kid2, err)
		}
		if n := f.Lists.Load(); n != lists {
			t.Fatal("the switch to v2 called the backend's list")
		}
	})
}
