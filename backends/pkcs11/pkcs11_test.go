//go:build pkcs11 && cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/pkcs11"
	"github.com/kmsgate/kmsgate/jwks"
)

// verifyGoJose verifies token against the JWKS document with go-jose and
// returns its claims and kid.
func verifyGoJose(t testing.TB, token string, doc []byte) (map[string]any, string) {
	t.Helper()
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(doc, &set); err != nil {
		t.Fatalf("go-jose: JWKS: %v", err)
	}
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("go-jose: parse: %v", err)
	}
	kid := tok.Headers[0].KeyID
	keys := set.Key(kid)
	if len(keys) != 1 {
		t.Fatalf("go-jose: kid %q: %d keys in the JWKS", kid, len(keys))
	}
	var claims map[string]any
	if err := tok.Claims(keys[0].Key, &claims); err != nil {
		t.Fatalf("go-jose: verify: %v", err)
	}
	return claims, kid
}

// keyring returns a keyring over the backends, refreshed once.
func keyring(t testing.TB, bs ...backends.Backend) *jwks.Keyring {
	t.Helper()
	var srcs []jwks.Source
	for i, b := range bs {
		srcs = append(srcs, jwks.Source{URI: "pkcs11:test-" + string(rune('a'+i)), Backend: b})
	}
	kr, err := jwks.NewKeyring(srcs, jwks.Config{KIDFormat: jwks.KIDThumbprint, Prepublish: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.Refresh(ctx(t)); err != nil {
		t.Fatal(err)
	}
	return kr
}

// versionIDs returns the ids of vs in order.
func versionIDs(vs []backends.Version) []string {
	var ids []string
	for _, v := range vs {
		ids = append(ids, v.ID)
	}
	return ids
}

// TestSignVerify signs a JWT with the script's key through the keyring and
// verifies it with go-jose against the key set; and checks a bare Sign with
// crypto/ecdsa.
func TestSignVerify(t *testing.T) {
	h := newHSM(t)
	b := open(t, h.uri(h.key))
	vs, err := b.Versions(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := versionIDs(vs); !slices.Equal(got, []string{"object=" + h.key + ";id=01"}) {
		t.Fatalf("versions %v", got)
	}
	if b.Kind() != "pkcs11" || !b.Remote() || b.Ordering() != backends.FirstSigns {
		t.Fatalf("kind %s remote %v ordering %v", b.Kind(), b.Remote(), b.Ordering())
	}
	kr := keyring(t, b)
	tok, kid, err := kr.SignJWT(ctx(t), map[string]any{"sub": "alice", "aud": "app", "exp": time.Now().Add(time.Minute).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	claims, gotKID := verifyGoJose(t, tok, kr.State().Document.JSON)
	if claims["sub"] != "alice" || gotKID != kid {
		t.Fatalf("claims %v kid %s (want %s)", claims, gotKID, kid)
	}

	digest := sha256.Sum256([]byte("hello"))
	sig, err := b.Sign(ctx(t), vs[0].ID, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if len(sig) != 64 || !ecdsa.Verify(vs[0].PublicKey, digest[:], r, s) {
		t.Fatalf("signature %x does not verify", sig)
	}
	if _, err := b.Sign(ctx(t), vs[0].ID, digest[:20]); err == nil || !strings.Contains(err.Error(), "20 bytes") {
		t.Fatalf("20-byte digest: %v", err)
	}
	if _, err := b.Sign(ctx(t), "object=other;id=01", digest[:]); !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("unknown version: %v", err)
	}
}

// TestRotation follows the README's rotation with pkcs11-tool: a second key
// with a higher CKA_ID is published while the first signs (add); the first
// moved behind it with --set-id lets the second sign (swap); deleting the
// first drops it from the key set (remove).
func TestRotation(t *testing.T) {
	h := newHSM(t)
	l := label(t)
	h.genKey(t, "EC:prime256v1", l, "02")
	b := open(t, h.uri(l))
	kr := keyring(t, b)
	vs, _ := b.Versions(ctx(t))
	if got := versionIDs(vs); !slices.Equal(got, []string{"object=" + l + ";id=02"}) {
		t.Fatalf("versions %v", got)
	}
	first := kr.ActiveKID()

	// add
	h.genKey(t, "EC:prime256v1", l, "03")
	if err := kr.Refresh(ctx(t)); err != nil {
		t.Fatal(err)
	}
	vs, _ = b.Versions(ctx(t))
	if got := versionIDs(vs); !slices.Equal(got, []string{"object=" + l + ";id=02", "object=" + l + ";id=03"}) {
		t.Fatalf("after add: versions %v", got)
	}
	second, err := jwks.KID(vs[1].PublicKey, jwks.KIDThumbprint)
	if err != nil {
		t.Fatal(err)
	}
	got := roleOf(kr)
	if kr.ActiveKID() != first || got[first] != jwks.RoleActive || got[second] != jwks.RolePublished {
		t.Fatalf("after add: active %s, got %v (first %s, second %s)", kr.ActiveKID(), got, first, second)
	}
	tok, kid, err := kr.SignJWT(ctx(t), map[string]any{"sub": "a"})
	if err != nil || kid != first {
		t.Fatalf("after add: signed with %s (%v), want %s", kid, err, first)
	}
	verifyGoJose(t, tok, kr.State().Document.JSON)

	// swap
	h.setID(t, l, "02", "04")
	if err := kr.Refresh(ctx(t)); err != nil {
		t.Fatal(err)
	}
	got = roleOf(kr)
	if kr.ActiveKID() != second || got[first] != jwks.RolePublished {
		t.Fatalf("after swap: active %s, got %v", kr.ActiveKID(), got)
	}
	tok, kid, err = kr.SignJWT(ctx(t), map[string]any{"sub": "b"})
	if err != nil || kid != second {
		t.Fatalf("after swap: signed with %s (%v), want %s", kid, err, second)
	}
	verifyGoJose(t, tok, kr.State().Document.JSON)

	// remove
	h.deleteKey(t, l, "04")
	if err := kr.Refresh(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if got = roleOf(kr); len(got) != 1 || got[second] != jwks.RoleActive {
		t.Fatalf("after remove: got %v", got)
	}
}

// roleOf returns the published kids with their roles.
func roleOf(kr *jwks.Keyring) map[string]jwks.Role {
	out := map[string]jwks.Role{}
	for _, k := range kr.State().Plan.Keys {
		out[k.KID] = k.Role
	}
	return out
}

// TestRemovedKey: a key deleted from the token leaves the listing at the
// next refresh, the next key signs, and signing with the removed version
// fails as not found.
func TestRemovedKey(t *testing.T) {
	h := newHSM(t)
	l := label(t)
	h.genKey(t, "EC:prime256v1", l, "01")
	h.genKey(t, "EC:prime256v1", l, "02")
	b := open(t, h.uri(l))
	kr := keyring(t, b)
	if n := len(kr.State().Plan.Keys); n != 2 {
		t.Fatalf("%d keys published, want 2", n)
	}
	removed := "object=" + l + ";id=01"
	h.deleteKey(t, l, "01")
	if err := kr.Refresh(ctx(t)); err != nil {
		t.Fatal(err)
	}
	keys := kr.State().Plan.Keys
	if len(keys) != 1 || keys[0].Version.ID != "object="+l+";id=02" || keys[0].Role != jwks.RoleActive {
		t.Fatalf("after delete: %+v", keys)
	}
	tok, _, err := kr.SignJWT(ctx(t), map[string]any{"sub": "a"})
	if err != nil {
		t.Fatal(err)
	}
	verifyGoJose(t, tok, kr.State().Document.JSON)
	digest := sha256.Sum256([]byte("x"))
	if _, err := b.Sign(ctx(t), removed, digest[:]); !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("sign with the removed key: %v, want ErrNotFound", err)
	}

	// The last key gone: the listing fails as not found (the keyring keeps
	// serving its last good set).
	h.deleteKey(t, l, "02")
	if _, err := b.Versions(ctx(t)); !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("no key left: %v, want ErrNotFound", err)
	}
}

// TestLabelPrefixAndID: object=PREFIX* takes every key under the prefix, in
// CKA_ID order; id= narrows to one key or selects by id alone.
func TestLabelPrefixAndID(t *testing.T) {
	h := newHSM(t)
	p := label(t)
	h.genKey(t, "EC:prime256v1", p+"-b", "0a")
	h.genKey(t, "EC:prime256v1", p+"-a", "09")
	h.genKey(t, "EC:prime256v1", p+"-c", "0100")
	h.genKey(t, "EC:prime256v1", p+"x", "02") // not under "p-"
	vs, err := open(t, h.uri(p+"-*")).Versions(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"object=" + p + "-a;id=09", "object=" + p + "-b;id=0a", "object=" + p + "-c;id=0100"}
	if got := versionIDs(vs); !slices.Equal(got, want) {
		t.Fatalf("prefix: %v, want %v", got, want)
	}
	vs, err = open(t, h.uri(p+"-b;id=0a")).Versions(ctx(t))
	if err != nil || len(vs) != 1 || vs[0].ID != want[1] {
		t.Fatalf("label and id: %v %v", versionIDs(vs), err)
	}
	vs, err = open(t, h.uri(p+"-*;id=%01%00")).Versions(ctx(t))
	if err != nil || len(vs) != 1 || vs[0].ID != want[2] {
		t.Fatalf("prefix and percent-encoded id: %v %v", versionIDs(vs), err)
	}
}

// TestWrongPIN: a wrong PIN is a clear permission error naming the PIN
// file (never the PIN), is not tried again while the file holds the same
// PIN, and the backend logs in once the file holds the right one.
func TestWrongPIN(t *testing.T) {
	h := newHSM(t)
	pinFile := filepath.Join(t.TempDir(), "pin")
	const wrong = "wrong-pin-719243"
	if err := os.WriteFile(pinFile, []byte(wrong+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	uri := "pkcs11:token=" + h.token + ";object=" + h.key + "?module-path=" + h.module + "&pin-source=file://" + pinFile
	b := open(t, uri)
	_, err := b.Versions(ctx(t))
	if !errors.Is(err, backends.ErrPermission) || !errors.Is(err, backends.ErrConfig) {
		t.Fatalf("wrong PIN: %v, want ErrPermission and ErrConfig", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "PIN is wrong") || !strings.Contains(msg, "CKR_PIN_INCORRECT") || !strings.Contains(msg, pinFile) || strings.Contains(msg, wrong) {
		t.Fatalf("wrong PIN error: %s", msg)
	}
	if backends.Kind(err) != "permission" {
		t.Fatalf("kind %s", backends.Kind(err))
	}
	if n := b.LoginCount(); n != 1 {
		t.Fatalf("%d logins, want 1", n)
	}
	if _, err := b.Versions(ctx(t)); !errors.Is(err, backends.ErrPermission) {
		t.Fatalf("second try: %v", err)
	}
	if n := b.LoginCount(); n != 1 {
		t.Fatalf("the same wrong PIN was tried again: %d logins", n)
	}
	if err := os.WriteFile(pinFile, []byte(h.pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Versions(ctx(t)); err != nil {
		t.Fatalf("with the right PIN: %v", err)
	}
	if n := b.LoginCount(); n != 2 {
		t.Fatalf("%d logins, want 2", n)
	}
}

// TestRefusedKeys: an RSA key, a P-384 key, a key that may not sign, one
// that can be read in clear and one that needs the PIN for each signature
// are refused with an error naming the key and what it is, alone or beside a
// good key; an extractable key works with a warning.
func TestRefusedKeys(t *testing.T) {
	h := newHSM(t)
	p := label(t)
	h.genKey(t, "rsa:2048", p+"-rsa", "01")
	h.genKey(t, "EC:secp384r1", p+"-p384", "02")
	h.genKey(t, "EC:prime256v1", p+"-good", "04")
	h.genKey(t, "EC:prime256v1", p+"-extractable", "05", "--extractable")
	// pkcs11-tool cannot make these (SoftHSM's defaults fill the gaps).
	gen := open(t, h.uri(h.key))
	for label, attrs := range map[string]map[uint]bool{
		p + "-nosign":     {pkcs11.AttrSign: false, pkcs11.AttrSensitive: true},
		p + "-clear":      {pkcs11.AttrSign: true, pkcs11.AttrSensitive: false, pkcs11.AttrExtractable: true},
		p + "-alwaysauth": {pkcs11.AttrSign: true, pkcs11.AttrSensitive: true, pkcs11.AttrAlwaysAuth: true},
	} {
		if err := gen.GenerateP256(ctx(t), label, []byte{3}, attrs); err != nil {
			t.Fatalf("generate %s: %v", label, err)
		}
	}
	for _, c := range []struct{ object, want string }{
		{p + "-rsa", "key object=" + p + "-rsa;id=01: wrong key type: RSA key, want EC P-256"},
		{p + "-p384", "key object=" + p + "-p384;id=02: wrong key type: EC curve P-384, want P-256"},
		{p + "-nosign", "key object=" + p + "-nosign;id=03: wrong key type: CKA_SIGN is not true"},
		{p + "-clear", "key object=" + p + "-clear;id=03: wrong key type: CKA_SENSITIVE is false"},
		{p + "-alwaysauth", "key object=" + p + "-alwaysauth;id=03: wrong key type: CKA_ALWAYS_AUTHENTICATE is true"},
		{p + "-*", "key object=" + p + "-"}, // whichever refused key the token lists first
	} {
		_, err := open(t, h.uri(c.object)).Versions(ctx(t))
		if !errors.Is(err, backends.ErrKeyType) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrKeyType with %q", c.object, err, c.want)
		}
	}

	var logs bytes.Buffer
	b, err := backends.Open(ctx(t), h.uri(p+"-extractable"), backends.Options{Logger: slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for range 2 {
		if vs, err := b.Versions(ctx(t)); err != nil || len(vs) != 1 {
			t.Fatalf("extractable key: %v %v", vs, err)
		}
	}
	if n := strings.Count(logs.String(), "CKA_EXTRACTABLE"); n != 1 {
		t.Fatalf("%d warnings about the extractable key, want 1:\n%s", n, logs.String())
	}
}

// syncWriter serialises writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// TestPublicKeyMismatch: a public key object that belongs to another key is
// refused (the probe signature does not verify) before it is published.
func TestPublicKeyMismatch(t *testing.T) {
	h := newHSM(t)
	l := label(t)
	h.genKey(t, "EC:prime256v1", l, "01")
	h.genKey(t, "EC:prime256v1", l, "02")
	// Swap the two public keys' ids.
	h.run(t, "--set-id", "09", "--id", "01", "--label", l, "--type", "pubkey")
	h.run(t, "--set-id", "01", "--id", "02", "--label", l, "--type", "pubkey")
	h.run(t, "--set-id", "02", "--id", "09", "--label", l, "--type", "pubkey")
	_, err := open(t, h.uri(l)).Versions(ctx(t))
	if !errors.Is(err, backends.ErrIntegrity) || !strings.Contains(err.Error(), "is not its own") {
		t.Fatalf("mismatched public key: %v, want ErrIntegrity", err)
	}
}

// TestConcurrentSignatures: 64 concurrent signatures through the keyring
// all succeed and verify, with the default pool and with a pool of 4
// sessions that makes most of them wait; no more sessions are opened than
// allowed.
func TestConcurrentSignatures(t *testing.T) {
	h := newHSM(t)
	for _, c := range []struct {
		extra []string
		max   int
	}{{nil, pkcs11.DefaultMaxSessions}, {[]string{"x-max-sessions=4"}, 4}} {
		b := open(t, h.uri(h.key, c.extra...))
		kr := keyring(t, b)
		doc := kr.State().Document.JSON
		const n = 64
		toks := make([]string, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				toks[i], _, errs[i] = kr.SignJWT(ctx(t), map[string]any{"sub": "user", "n": i})
			})
		}
		close(start)
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("max %d: signature %d: %v", c.max, i, errs[i])
			}
			claims, _ := verifyGoJose(t, toks[i], doc)
			if claims["n"] != float64(i) {
				t.Fatalf("token %d carries %v", i, claims["n"])
			}
		}
		open, idle := b.PoolStats()
		if open > c.max || open < 1 || idle != open {
			t.Fatalf("max %d: %d sessions open, %d idle", c.max, open, idle)
		}
	}
}

// TestTokenReset: after every session on the token is closed (a token
// reset) or the token is logged out, the next signature recovers: new
// sessions, a new login, and it verifies.
func TestTokenReset(t *testing.T) {
	h := newHSM(t)
	b := open(t, h.uri(h.key))
	vs, err := b.Versions(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("reset"))
	sign := func(what string) {
		t.Helper()
		sig, err := b.Sign(ctx(t), vs[0].ID, digest[:])
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !backends.VerifyJOSE(vs[0].PublicKey, digest[:], sig) {
			t.Fatalf("%s: the signature does not verify", what)
		}
	}
	sign("before")
	logins := b.LoginCount()

	if err := b.DropAllSessions(ctx(t)); err != nil {
		t.Fatal(err)
	}
	sign("after C_CloseAllSessions")
	if n := b.LoginCount(); n != logins+1 {
		t.Fatalf("%d logins after the reset, want %d", n, logins+1)
	}

	if err := b.Logout(ctx(t)); err != nil {
		t.Fatal(err)
	}
	sign("after C_Logout")
	if n := b.LoginCount(); n != logins+2 {
		t.Fatalf("%d logins after the logout, want %d", n, logins+2)
	}
	if _, err := b.Versions(ctx(t)); err != nil {
		t.Fatalf("listing after the recoveries: %v", err)
	}
}

// TestSessionWaitEndsAtDeadline: with every session busy, a signature waits
// no longer than its context and fails as unavailable.
func TestSessionWaitEndsAtDeadline(t *testing.T) {
	h := newHSM(t)
	b := open(t, h.uri(h.key, "x-max-sessions=1"))
	vs, err := b.Versions(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	release, err := b.HoldSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	digest := sha256.Sum256([]byte("busy"))
	_, err = b.Sign(c, vs[0].ID, digest[:])
	if !errors.Is(err, backends.ErrUnavailable) || !strings.Contains(err.Error(), "x-max-sessions") {
		t.Fatalf("all sessions busy: %v, want ErrUnavailable naming x-max-sessions", err)
	}
	release()
	if _, err := b.Sign(ctx(t), vs[0].ID, digest[:]); err != nil {
		t.Fatalf("after the session came back: %v", err)
	}
}

// TestOpenErrors: a missing module, a missing PIN file, a token that is not
// there and a label that names nothing are reported as such.
func TestOpenErrors(t *testing.T) {
	h := newHSM(t)
	bg := context.Background()
	_, err := backends.Open(bg, "pkcs11:token=x;object=k?module-path=/nonexistent/lib.so&pin-source=file:"+h.pinFile, backends.Options{})
	if !errors.Is(err, backends.ErrConfig) || !strings.Contains(err.Error(), "/nonexistent/lib.so") {
		t.Errorf("missing module: %v", err)
	}
	_, err = backends.Open(bg, h.uri(h.key)+"x", backends.Options{})
	if !errors.Is(err, backends.ErrConfig) || !strings.Contains(err.Error(), h.pinFile+"x") {
		t.Errorf("missing PIN file: %v", err)
	}
	b := open(t, strings.Replace(h.uri(h.key), "token="+h.token, "token=no-such-token", 1))
	_, err = b.Versions(ctx(t))
	if !errors.Is(err, backends.ErrNotFound) || !strings.Contains(err.Error(), "no initialised token") || !strings.Contains(err.Error(), h.token) {
		t.Errorf("missing token: %v", err)
	}
	_, err = open(t, h.uri("no-such-label")).Versions(ctx(t))
	if !errors.Is(err, backends.ErrNotFound) || !strings.Contains(err.Error(), "no private key") {
		t.Errorf("missing key: %v", err)
	}
}

// TestHungToken: once a call to the token has outlived its caller's
// deadline, new signatures fail at once as unavailable without waiting,
// and work again when that call returns. The clock is a fake one.
func TestHungToken(t *testing.T) {
	h := newHSM(t)
	b := open(t, h.uri(h.key))
	vs, err := b.Versions(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	b.SetClock(func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	end, err := b.StartCall(now.Add(2 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("hung"))
	if _, err := b.Sign(ctx(t), vs[0].ID, digest[:]); err != nil {
		t.Fatalf("a call in progress within its deadline must not block others: %v", err)
	}
	mu.Lock()
	now = now.Add(3 * time.Second)
	mu.Unlock()
	_, err = b.Sign(ctx(t), vs[0].ID, digest[:])
	if !errors.Is(err, backends.ErrUnavailable) || !strings.Contains(err.Error(), "has not returned for 3s") {
		t.Fatalf("with a hung call: %v, want ErrUnavailable", err)
	}
	if _, err := b.Versions(ctx(t)); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("listing with a hung call: %v, want ErrUnavailable", err)
	}
	end()
	if _, err := b.Sign(ctx(t), vs[0].ID, digest[:]); err != nil {
		t.Fatalf("after the hung call returned: %v", err)
	}
	if hb, ok := any(b).(backends.DeadlineBound); !ok || !hb.HonorsDeadline() {
		t.Fatal("the backend does not claim DeadlineBound")
	}
}

// TestCloseWaitsForCalls: Close returns once the sessions in use come back,
// and calls after Close fail as unavailable.
func TestCloseWaitsForCalls(t *testing.T) {
	h := newHSM(t)
	b := open(t, h.uri(h.key))
	vs, err := b.Versions(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	release, err := b.HoldSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() { _ = b.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while a session was in use")
	case <-time.After(50 * time.Millisecond):
	}
	release()
	<-closed
	digest := sha256.Sum256([]byte("closed"))
	if _, err := b.Sign(ctx(t), vs[0].ID, digest[:]); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("sign after Close: %v", err)
	}
}

// TestSharedModule: two key URIs on the same library share it; closing one
// leaves the other signing, and the library is loaded again after both
// closed.
func TestSharedModule(t *testing.T) {
	h := newHSM(t)
	for round := range 2 {
		b1 := open(t, h.uri(h.key))
		b2 := open(t, h.uri(h.key, "x-max-sessions=2"))
		vs, err := b2.Versions(ctx(t))
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if _, err := b1.Versions(ctx(t)); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if err := b1.Close(); err != nil {
			t.Fatal(err)
		}
		digest := sha256.Sum256([]byte("shared"))
		sig, err := b2.Sign(ctx(t), vs[0].ID, digest[:])
		if err != nil || !backends.VerifyJOSE(vs[0].PublicKey, digest[:], sig) {
			t.Fatalf("round %d: the other URI after one closed: %v", round, err)
		}
		if err := b2.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
