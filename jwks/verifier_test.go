package jwks_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/labstack/echo/v4"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	_ "github.com/kmsgate/kmsgate/backends/pem" // file:// keys
	"github.com/kmsgate/kmsgate/jwks"
	"github.com/kmsgate/kmsgate/jwks/verify"
	"github.com/kmsgate/kmsgate/jwks/verify/echoverify"
)

const (
	testIssuer   = "https://gw.example"
	testAudience = "app.example"
)

// issuer is a kmsgate keyring over a PEM file and an HTTP server that
// serves its JWKS document the way the gateway does (strong ETag, 304,
// Cache-Control), counting what it is asked.
type issuer struct {
	t    *testing.T
	path string
	kr   *jwks.Keyring
	srv  *httptest.Server // nil for an in-memory issuer
	base string           // scheme and host of the JWKS URL
	// client reaches an in-memory issuer; nil for one with a server.
	client *http.Client

	hits        atomic.Int64 // every request
	full        atomic.Int64 // 200 answers
	notModified atomic.Int64 // 304 answers
	lastINM     atomic.Pointer[string]
	cc          atomic.Pointer[string] // Cache-Control; none when nil
	age         atomic.Pointer[string] // Age header; none when nil
	fail        atomic.Bool            // answer 500
	delay       atomic.Int64           // ns to wait before answering
	gaveUp      atomic.Int64           // requests whose client left during the delay
	bare304     atomic.Bool            // 304 answers without Cache-Control and Age

	mu     sync.Mutex
	tokens []string // every token made in the test, checked against the logs
}

func writeKeys(t *testing.T, path string, keys ...*ecdsa.PrivateKey) {
	t.Helper()
	var buf bytes.Buffer
	for _, k := range keys {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		if err := pem.Encode(&buf, &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func kidOf(t testing.TB, k *ecdsa.PrivateKey) string {
	t.Helper()
	kid, err := jwks.KID(&k.PublicKey, jwks.KIDThumbprint)
	if err != nil {
		t.Fatal(err)
	}
	return kid
}

// newIssuer starts an issuer whose PEM file holds keys (the first signs),
// served over HTTP on 127.0.0.1.
func newIssuer(t *testing.T, keys ...*ecdsa.PrivateKey) *issuer {
	t.Helper()
	is := loadIssuer(t, keys...)
	is.srv = httptest.NewServer(http.HandlerFunc(is.serve))
	t.Cleanup(is.srv.Close)
	is.base = is.srv.URL
	return is
}

// newMemIssuer is newIssuer without a listener: verifiers reach it through
// backendtest.MemTransport, so that a test of the refresh timing can run in a synctest
// bubble (a goroutine blocked on a real connection is not durably blocked,
// and the bubble's clock would not move).
func newMemIssuer(t *testing.T, keys ...*ecdsa.PrivateKey) *issuer {
	t.Helper()
	is := loadIssuer(t, keys...)
	is.base = "http://jwks.invalid"
	is.client = &http.Client{Transport: backendtest.MemTransport{Handler: http.HandlerFunc(is.serve)}}
	return is
}

// loadIssuer writes keys to a PEM file and loads them into a keyring.
func loadIssuer(t *testing.T, keys ...*ecdsa.PrivateKey) *issuer {
	t.Helper()
	is := &issuer{t: t, path: filepath.Join(t.TempDir(), "keys.pem")}
	writeKeys(t, is.path, keys...)
	uri := "file://" + is.path
	b, err := backends.Open(context.Background(), uri, backends.Options{})
	if err != nil {
		t.Fatal(err)
	}
	is.kr, err = jwks.NewKeyring([]jwks.Source{{URI: uri, Backend: b}}, jwks.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := is.kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	is.setCacheControl("public, max-age=3600")
	return is
}

func (is *issuer) serve(w http.ResponseWriter, r *http.Request) {
	is.hits.Add(1)
	if d := is.delay.Load(); d > 0 {
		// A slow server: it answers after d, or gives up when the client
		// does.
		tm := time.NewTimer(time.Duration(d))
		select {
		case <-tm.C:
		case <-r.Context().Done():
			tm.Stop()
			is.gaveUp.Add(1)
			return
		}
	}
	if r.URL.Path != "/.well-known/jwks.json" {
		http.NotFound(w, r)
		return
	}
	if is.fail.Load() {
		http.Error(w, "down", http.StatusInternalServerError)
		return
	}
	doc := is.kr.State().Document
	w.Header().Set("ETag", doc.ETag)
	inm := r.Header.Get("If-None-Match")
	if inm != "" {
		is.lastINM.Store(&inm)
	}
	notModified := inm != "" && inm == doc.ETag
	if !notModified || !is.bare304.Load() {
		if cc := is.cc.Load(); cc != nil {
			w.Header().Set("Cache-Control", *cc)
		}
		if age := is.age.Load(); age != nil {
			w.Header().Set("Age", *age)
		}
	}
	if notModified {
		is.notModified.Add(1)
		w.WriteHeader(http.StatusNotModified)
		return
	}
	is.full.Add(1)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(doc.JSON)
}

func (is *issuer) setCacheControl(v string) { is.cc.Store(&v) }

func (is *issuer) url() string { return is.base + "/.well-known/jwks.json" }

// rotate rewrites the PEM file and refreshes the keyring, as the gateway
// does on its --refresh tick.
func (is *issuer) rotate(keys ...*ecdsa.PrivateKey) {
	is.t.Helper()
	writeKeys(is.t, is.path, keys...)
	if err := is.kr.Refresh(context.Background()); err != nil {
		is.t.Fatal(err)
	}
}

func (is *issuer) remember(tok string) string {
	is.mu.Lock()
	is.tokens = append(is.tokens, tok)
	is.mu.Unlock()
	return tok
}

// claims returns a gateway assertion's claims with changes applied; a nil
// value removes a claim.
func claims(changes map[string]any) map[string]any {
	now := time.Now()
	c := map[string]any{
		"iss": testIssuer, "aud": testAudience, "sub": "u-123", "user": "alice",
		"email": "alice@example.com", "groups": []string{"admins", "dev"}, "name": "Alice",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "jti": "jti-1",
	}
	for k, v := range changes {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

// sign signs claims with the keyring's active key.
func (is *issuer) sign(c map[string]any) string {
	is.t.Helper()
	tok, _, err := is.kr.SignJWT(context.Background(), c)
	if err != nil {
		is.t.Fatal(err)
	}
	return is.remember(tok)
}

// forge signs claims with go-jose, with any key, algorithm and headers.
func (is *issuer) forge(alg jose.SignatureAlgorithm, key any, headers map[jose.HeaderKey]any, c map[string]any) string {
	is.t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	for k, v := range headers {
		opts = opts.WithHeader(k, v)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		is.t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(c).Serialize()
	if err != nil {
		is.t.Fatal(err)
	}
	return is.remember(tok)
}

// newVerifier makes a verifier of the issuer's JWKS URL with debug logs
// captured; at the end of the test it is closed and the logs are checked to
// hold none of the test's tokens.
func newVerifier(t *testing.T, is *issuer, change func(*verify.VerifierConfig)) (*verify.Verifier, *backendtest.SyncBuffer) {
	t.Helper()
	logs := &backendtest.SyncBuffer{}
	cfg := verify.VerifierConfig{
		JWKSURL:  is.url(),
		Issuer:   testIssuer,
		Audience: testAudience,
		Logger:   slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		// nil for an issuer with a server: the verifier's default client.
		HTTPClient: is.client,
	}
	if change != nil {
		change(&cfg)
	}
	v, err := verify.NewVerifier(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := v.Close(); err != nil {
			t.Error(err)
		}
		out := logs.String()
		is.mu.Lock()
		defer is.mu.Unlock()
		for _, tok := range is.tokens {
			// The signature segment alone would already be a leak.
			if sig := tok[strings.LastIndexByte(tok, '.')+1:]; len(sig) > 8 && strings.Contains(out, sig) {
				t.Errorf("a token reached the logs:\n%s", out)
				return
			}
		}
	})
	return v, logs
}

// app is an upstream app behind the middleware that answers the claims it
// got from the context as JSON.
func app(t *testing.T, v *verify.Verifier) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(appHandler(v))
	t.Cleanup(srv.Close)
	return srv
}

// appHandler is app's handler, for calls in memory (callHandler).
func appHandler(v *verify.Verifier) http.Handler {
	return v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := verify.ClaimsFromContext(r.Context())
		if !ok {
			http.Error(w, "no claims in the context", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(c)
	}))
}

type answer struct {
	status int
	body   string
	claims verify.Claims
	err    struct{ Error, Code string }
}

// call sends a request carrying the given values of header to srv.
func call(t testing.TB, srv *httptest.Server, header string, values ...string) answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range values {
		req.Header.Add(header, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return parseAnswer(t, resp.StatusCode, body, values)
}

// callHandler is call without a network: it serves the request with h in
// the calling goroutine.
func callHandler(t testing.TB, h http.Handler, header string, values ...string) answer {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	for _, v := range values {
		req.Header.Add(header, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return parseAnswer(t, rec.Code, rec.Body.Bytes(), values)
}

// parseAnswer decodes the app's answer: claims on 200, the error otherwise.
// It fails the test when the answer holds one of the tokens sent.
func parseAnswer(t testing.TB, status int, body []byte, sent []string) answer {
	t.Helper()
	a := answer{status: status, body: string(body)}
	var err error
	if status == http.StatusOK {
		err = json.Unmarshal(body, &a.claims)
	} else {
		err = json.Unmarshal(body, &a.err)
	}
	if err != nil {
		t.Fatalf("status %d body %q: %v", status, body, err)
	}
	for _, v := range sent {
		if len(v) > 8 && strings.Contains(a.body, v) {
			t.Fatalf("the answer echoes the token: %s", a.body)
		}
	}
	return a
}

func TestVerifierAcceptsGatewayAssertion(t *testing.T) {
	k1 := newKey(t)
	is := newIssuer(t, k1)
	v, _ := newVerifier(t, is, nil)
	srv := app(t, v)

	tok := is.sign(claims(nil))
	a := call(t, srv, verify.DefaultHeader, tok)
	if a.status != http.StatusOK {
		t.Fatalf("status %d: %s", a.status, a.body)
	}
	c := a.claims
	if c.Subject != "u-123" || c.User != "alice" || c.Email != "alice@example.com" || c.Name != "Alice" ||
		!slices.Equal(c.Groups, []string{"admins", "dev"}) || c.Issuer != testIssuer ||
		!slices.Equal(c.Audience, []string{testAudience}) || c.ID != "jti-1" {
		t.Fatalf("claims in the handler: %+v", c)
	}
	if d := time.Until(c.ExpiresAt); d < 4*time.Minute || d > 5*time.Minute {
		t.Fatalf("ExpiresAt %s", c.ExpiresAt)
	}
	if c.IssuedAt.IsZero() || c.NotBefore.IsZero() || c.Raw["email"] != "alice@example.com" {
		t.Fatalf("claims in the handler: %+v", c)
	}
	// The independent library agrees on the same token and document.
	ind := backendtest.VerifyIndependently(t, tok, is.kr.State().Document.JSON)
	if ind["sub"] != "u-123" {
		t.Fatalf("independent verifier claims %v", ind)
	}

	// Verify directly; aud may be an array holding the audience.
	multi := is.sign(claims(map[string]any{"aud": []string{"other.example", testAudience}}))
	got, err := v.Verify(context.Background(), multi)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Audience, []string{"other.example", testAudience}) {
		t.Fatalf("aud %v", got.Audience)
	}
	backendtest.VerifyIndependently(t, multi, is.kr.State().Document.JSON)

	if _, ok := verify.ClaimsFromContext(context.Background()); ok {
		t.Fatal("claims in a bare context")
	}
	if hits := is.hits.Load(); hits != 1 {
		t.Fatalf("%d JWKS requests, want the one at construction", hits)
	}
}

func TestVerifierCustomHeader(t *testing.T) {
	is := newIssuer(t, newKey(t))
	v, _ := newVerifier(t, is, func(c *verify.VerifierConfig) { c.Header = "X-Pomerium-Jwt-Assertion" })
	srv := app(t, v)
	tok := is.sign(claims(nil))
	if a := call(t, srv, "x-pomerium-jwt-assertion", tok); a.status != http.StatusOK {
		t.Fatalf("status %d: %s", a.status, a.body)
	}
	a := call(t, srv, verify.DefaultHeader, tok)
	if a.status != http.StatusUnauthorized || a.err.Code != "missing_assertion" || !strings.Contains(a.err.Error, "X-Pomerium-Jwt-Assertion") {
		t.Fatalf("token in the default header: %d %s", a.status, a.body)
	}
}

func TestVerifierHeaderCount(t *testing.T) {
	is := newIssuer(t, newKey(t))
	v, _ := newVerifier(t, is, nil)
	srv := app(t, v)
	tok := is.sign(claims(nil))
	for _, tc := range []struct {
		name   string
		values []string
		code   string
	}{
		{"missing", nil, "missing_assertion"},
		{"empty", []string{""}, "missing_assertion"},
		{"two", []string{tok, tok}, "multiple_assertions"},
		{"garbage", []string{"not.a.jwt"}, "invalid_assertion"},
		{"two joined", []string{tok + "," + tok}, "invalid_assertion"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := call(t, srv, verify.DefaultHeader, tc.values...)
			if a.status != http.StatusUnauthorized || a.err.Code != tc.code {
				t.Fatalf("got %d %s, want 401 %s", a.status, a.body, tc.code)
			}
		})
	}
}

func TestVerifierClaimRules(t *testing.T) {
	is := newIssuer(t, newKey(t))
	v, _ := newVerifier(t, is, nil)
	srv := app(t, v)
	now := time.Now()
	at := func(d time.Duration) int64 { return now.Add(d).Unix() }
	for _, tc := range []struct {
		name    string
		changes map[string]any
		is      error  // nil: accepted
		text    string // else a part of the error
		code    string
	}{
		{"expired beyond leeway", map[string]any{"iat": at(-10 * time.Minute), "nbf": at(-10 * time.Minute), "exp": at(-time.Minute)}, jwt.ErrExpired, "", "expired_assertion"},
		{"expired within leeway", map[string]any{"iat": at(-10 * time.Minute), "nbf": at(-10 * time.Minute), "exp": at(-15 * time.Second)}, nil, "", ""},
		{"nbf beyond leeway", map[string]any{"nbf": at(time.Minute)}, jwt.ErrNotValidYet, "", "invalid_assertion"},
		{"nbf within leeway", map[string]any{"nbf": at(15 * time.Second), "iat": at(15 * time.Second)}, nil, "", ""},
		{"iat in the future", map[string]any{"iat": at(time.Minute)}, jwt.ErrIssuedInTheFuture, "", "invalid_assertion"},
		{"no exp", map[string]any{"exp": nil}, nil, "no exp", "invalid_assertion"},
		{"wrong iss", map[string]any{"iss": "https://evil.example"}, jwt.ErrInvalidIssuer, "", "invalid_assertion"},
		{"no iss", map[string]any{"iss": nil}, jwt.ErrInvalidIssuer, "", "invalid_assertion"},
		{"wrong aud", map[string]any{"aud": "other.example"}, jwt.ErrInvalidAudience, "", "invalid_assertion"},
		{"no aud", map[string]any{"aud": nil}, jwt.ErrInvalidAudience, "", "invalid_assertion"},
		{"groups not an array", map[string]any{"groups": "admins"}, nil, "claims", "invalid_assertion"},
		{"minimal", map[string]any{"user": nil, "email": nil, "groups": nil, "name": nil, "iat": nil, "nbf": nil, "jti": nil}, nil, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := is.sign(claims(tc.changes))
			_, err := v.Verify(context.Background(), tok)
			a := call(t, srv, verify.DefaultHeader, tok)
			if tc.is == nil && tc.text == "" {
				if err != nil || a.status != http.StatusOK {
					t.Fatalf("refused: %v; middleware %d %s", err, a.status, a.body)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("error %v, want %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("error %q does not say %q", err, tc.text)
			}
			if a.status != http.StatusUnauthorized || a.err.Code != tc.code {
				t.Fatalf("middleware: %d %s, want 401 %s", a.status, a.body, tc.code)
			}
		})
	}
}

func TestVerifierRefusesOtherAlgorithmsAndKeys(t *testing.T) {
	k1 := newKey(t)
	is := newIssuer(t, k1)
	v, _ := newVerifier(t, is, nil)
	srv := app(t, v)
	kid := kidOf(t, k1)
	c := claims(nil)
	payload, _ := json.Marshal(c)
	b64 := base64.RawURLEncoding.EncodeToString

	var x [32]byte
	k1.PublicKey.X.FillBytes(x[:]) // the public x coordinate as an HMAC secret
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	good := is.sign(c)
	parts := strings.Split(good, ".")
	withKID := map[jose.HeaderKey]any{"kid": kid}

	for name, tok := range map[string]string{
		"alg none":        is.remember(b64([]byte(`{"alg":"none","kid":"`+kid+`","typ":"JWT"}`)) + "." + b64(payload) + "."),
		"alg none, sig":   is.remember(b64([]byte(`{"alg":"none","kid":"`+kid+`","typ":"JWT"}`)) + "." + parts[1] + "." + parts[2]),
		"HS256":           is.forge(jose.HS256, x[:], withKID, c),
		"RS256":           is.forge(jose.RS256, rsaKey, withKID, c),
		"ES384":           is.forge(jose.ES384, p384, withKID, c),
		"ES256 no kid":    is.forge(jose.ES256, k1, nil, c),
		"ES256 other key": is.forge(jose.ES256, newKey(t), withKID, c),
		"payload swapped": is.remember(parts[0] + "." + b64(mustJSON(t, claims(map[string]any{"sub": "admin"}))) + "." + parts[2]),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := v.Verify(context.Background(), tok); err == nil {
				t.Fatal("accepted")
			}
			if a := call(t, srv, verify.DefaultHeader, tok); a.status != http.StatusUnauthorized || a.err.Code != "invalid_assertion" {
				t.Fatalf("middleware: %d %s", a.status, a.body)
			}
		})
	}
	// The untampered ES256 token still passes, so the refusals above are
	// about what was changed.
	if _, err := v.Verify(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	// None of these has an unknown kid, so none caused a refresh.
	if hits := is.hits.Load(); hits != 1 {
		t.Fatalf("%d JWKS requests, want 1", hits)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// concurrently sends n requests with tok to h at once, in memory, and
// returns their statuses.
func concurrently(t *testing.T, h http.Handler, n int, tok string) map[int]int {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			a := callHandler(t, h, verify.DefaultHeader, tok)
			mu.Lock()
			statuses[a.status]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	return statuses
}

// The tests below are about when the verifier fetches the key set. Each runs
// in a synctest bubble against an in-memory issuer: the clock stands still
// while any goroutine of the test can run and jumps to the next timer when
// all are blocked, so every interval is checked to the nanosecond, without
// sleeping and whatever the machine's load.

func TestVerifierUnknownKIDRefreshesOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k1, k2, k3, k4 := newKey(t), newKey(t), newKey(t), newKey(t)
		is := newMemIssuer(t, k1)
		// Long bounds: every refresh in this test is caused by an unknown kid.
		v, _ := newVerifier(t, is, func(c *verify.VerifierConfig) { c.MinRefresh, c.MaxRefresh = time.Hour, time.Hour })
		h := appHandler(v)
		if n := is.hits.Load(); n != 1 {
			t.Fatalf("%d hits after construction", n)
		}

		// The gateway rotates: k2 now signs. 50 requests with a k2 token
		// arrive at once while the JWKS server takes 100 ms to answer: one
		// refresh, all accepted, none waiting longer than that refresh.
		is.rotate(k2, k1)
		tok2 := is.sign(claims(nil))
		if parsed, _ := jwt.ParseSigned(tok2, []jose.SignatureAlgorithm{jose.ES256}); parsed.Headers[0].KeyID != kidOf(t, k2) {
			t.Fatal("the rotated keyring does not sign with k2")
		}
		is.delay.Store(int64(100 * time.Millisecond))
		start := time.Now()
		if st := concurrently(t, h, 50, tok2); st[http.StatusOK] != 50 {
			t.Fatalf("statuses %v, want 50 × 200", st)
		}
		if took := time.Since(start); took != 100*time.Millisecond {
			t.Fatalf("the requests took %s, want the one 100ms refresh", took)
		}
		if n := is.hits.Load(); n != 2 {
			t.Fatalf("%d JWKS requests, want 2 (construction + one refresh)", n)
		}
		backendtest.VerifyIndependently(t, tok2, is.kr.State().Document.JSON)

		// 50 tokens of a key that is published nowhere, just before the
		// 30 s since that refresh have passed: no refresh.
		is.delay.Store(0)
		time.Sleep(time.Until(start.Add(verify.DefaultUnknownKIDInterval - 1)))
		k3tok := is.forge(jose.ES256, k3, map[jose.HeaderKey]any{"kid": kidOf(t, k3)}, claims(nil))
		if st := concurrently(t, h, 50, k3tok); st[http.StatusUnauthorized] != 50 {
			t.Fatalf("statuses %v, want 50 × 401", st)
		}
		if n := is.hits.Load(); n != 2 {
			t.Fatalf("%d JWKS requests, want still 2: unknown kids may refresh once per 30 s", n)
		}
		// The limit holds for a genuinely new key too...
		is.rotate(k4, k2, k1)
		tok4 := is.sign(claims(nil))
		if _, err := v.Verify(context.Background(), tok4); !errors.Is(err, verify.ErrUnknownKID) {
			t.Fatalf("new key within the unknown-kid interval: %v", err)
		}
		if n := is.hits.Load(); n != 2 {
			t.Fatalf("%d JWKS requests, want 2", n)
		}
		// ...until the interval has passed: then one refresh picks it up.
		time.Sleep(1)
		if st := concurrently(t, h, 50, tok4); st[http.StatusOK] != 50 {
			t.Fatalf("statuses %v, want 50 × 200 once the interval has passed", st)
		}
		if _, err := v.Verify(context.Background(), k3tok); !errors.Is(err, verify.ErrUnknownKID) {
			t.Fatalf("unknown kid: %v", err)
		}
		if n := is.hits.Load(); n != 3 {
			t.Fatalf("%d JWKS requests, want 3", n)
		}
	})
}

func TestVerifierUnknownKIDInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = 5 * time.Minute
		k1, k2 := newKey(t), newKey(t)
		is := newMemIssuer(t, k1)
		v, _ := newVerifier(t, is, func(c *verify.VerifierConfig) {
			c.MinRefresh, c.MaxRefresh = time.Hour, time.Hour
			c.UnknownKIDInterval = interval
		})
		tok := is.forge(jose.ES256, k2, map[jose.HeaderKey]any{"kid": kidOf(t, k2)}, claims(nil))
		ctx := context.Background()
		for _, step := range []struct {
			wait time.Duration // before the request
			hits int64         // JWKS requests after it
		}{
			{0, 2},            // the first unknown kid refreshes at once
			{0, 2},            // the next one, at the same instant, does not
			{interval - 1, 2}, // nor one just inside the interval
			{1, 3},            // the interval has passed: one more refresh
			{interval - 1, 3}, // the interval counts from that refresh
			{1, 4},            //
			{2 * interval, 5}, // a long quiet time allows one, not two
			{0, 5},            //
		} {
			time.Sleep(step.wait)
			if _, err := v.Verify(ctx, tok); !errors.Is(err, verify.ErrUnknownKID) {
				t.Fatal(err)
			}
			if n := is.hits.Load(); n != step.hits {
				t.Fatalf("after waiting %s: %d JWKS requests, want %d", step.wait, n, step.hits)
			}
		}
	})
}

func TestVerifierRotation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const maxRefresh = 5 * time.Minute
		k1, k2 := newKey(t), newKey(t)
		is := newMemIssuer(t, k1) // max-age=3600: the set is refreshed after MaxRefresh
		v, _ := newVerifier(t, is, func(c *verify.VerifierConfig) { c.MinRefresh, c.MaxRefresh = time.Minute, maxRefresh })
		h := appHandler(v)
		ok := func(tok string) {
			t.Helper()
			if a := callHandler(t, h, verify.DefaultHeader, tok); a.status != http.StatusOK {
				t.Fatalf("status %d: %s", a.status, a.body)
			}
			backendtest.VerifyIndependently(t, tok, is.kr.State().Document.JSON)
		}
		tok1 := is.sign(claims(nil))
		ok(tok1)

		// Pomerium's three steps: add, swap, remove.
		is.rotate(k1, k2)
		ok(is.sign(claims(nil)))
		is.rotate(k2, k1)
		tok2 := is.sign(claims(nil)) // an unknown kid: fetched at once
		ok(tok2)
		ok(tok1) // k1 is still published
		if n := is.hits.Load(); n != 2 {
			t.Fatalf("%d JWKS requests, want 2 (construction + the swap's unknown kid)", n)
		}
		swapped := time.Now()
		is.rotate(k2)
		// The removed key stays accepted until the set is due (MaxRefresh
		// after the last fetch) and is refused from then on, without a
		// restart; k2 keeps working.
		time.Sleep(maxRefresh - 1)
		synctest.Wait()
		if _, err := v.Verify(context.Background(), tok1); err != nil {
			t.Fatalf("token of the removed key before the set is due: %v", err)
		}
		time.Sleep(1)
		synctest.Wait()
		if n := is.hits.Load(); n != 3 {
			t.Fatalf("%d JWKS requests %s after the last fetch, want 3", n, time.Since(swapped))
		}
		if _, err := v.Verify(context.Background(), tok1); !errors.Is(err, verify.ErrUnknownKID) {
			t.Fatalf("token of the removed key: %v", err)
		}
		ok(is.sign(claims(nil))) // tok2 has expired by now; a new k2 token passes
	})
}

func TestVerifierCacheControl(t *testing.T) {
	for _, tc := range []struct {
		name, cc, age string
		min, max      time.Duration // zero: the default
		interval      time.Duration // the refresh interval this should give
		bare304       bool          // 304 answers carry no Cache-Control
	}{
		{"max-age honoured", "public, max-age=600", "", 0, 0, 10 * time.Minute, false},
		{"max-age raised to MinRefresh", "public, max-age=10", "", 0, 0, verify.DefaultMinRefresh, false},
		{"max-age=0 means MinRefresh", "public, max-age=0", "", 2 * time.Minute, 0, 2 * time.Minute, false},
		{"no-cache means MinRefresh", "no-cache", "", 2 * time.Minute, 0, 2 * time.Minute, false},
		{"no-store means MinRefresh", "no-store, max-age=600", "", 2 * time.Minute, 0, 2 * time.Minute, false},
		{"max-age lowered to MaxRefresh", "public, max-age=86400", "", 0, 0, verify.DefaultMaxRefresh, false},
		{"max-age lowered to a set MaxRefresh", "public, max-age=3600", "", 0, 5 * time.Minute, 5 * time.Minute, false},
		{"Age is subtracted", "public, max-age=3600", "1200", 0, 0, 40 * time.Minute, false},
		{"Age beyond max-age means MinRefresh", "public, max-age=60", "600", 0, 0, verify.DefaultMinRefresh, false},
		{"unreadable max-age means MinRefresh", "max-age=soon", "", 0, 0, verify.DefaultMinRefresh, false},
		{"no Cache-Control means MinRefresh", "", "", 3 * time.Minute, 0, 3 * time.Minute, false},
		// RFC 9111 section 4.3.4: a 304 updates only the headers it carries.
		{"a 304 without Cache-Control keeps the stored max-age", "public, max-age=600", "", 0, 0, 10 * time.Minute, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				is := newMemIssuer(t, newKey(t))
				if tc.cc == "" {
					is.cc.Store(nil)
				} else {
					is.setCacheControl(tc.cc)
				}
				if tc.age != "" {
					is.age.Store(&tc.age)
				}
				is.bare304.Store(tc.bare304)
				start := time.Now()
				newVerifier(t, is, func(c *verify.VerifierConfig) { c.MinRefresh, c.MaxRefresh = tc.min, tc.max })
				// The first refresh is exactly one interval after the fetch at
				// construction, and the next (a 304) one interval later.
				for i, wait := range []time.Duration{tc.interval - 1, 1, tc.interval - 1, 1} {
					time.Sleep(wait)
					synctest.Wait()
					if n, want := is.hits.Load(), int64(1+(i+1)/2); n != want {
						t.Fatalf("%d JWKS requests at %s, want %d", n, time.Since(start), want)
					}
				}
				if n := is.notModified.Load(); n != 2 {
					t.Fatalf("%d answers 304, want 2", n)
				}
			})
		})
	}
}

func TestVerifierNotModified(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const minRefresh = time.Minute
		k1, k2 := newKey(t), newKey(t)
		is := newMemIssuer(t, k1)
		is.setCacheControl("public, max-age=0")
		v, _ := newVerifier(t, is, func(c *verify.VerifierConfig) {
			c.MinRefresh, c.MaxRefresh = minRefresh, time.Hour
			c.UnknownKIDInterval = time.Hour
		})
		time.Sleep(2 * minRefresh)
		synctest.Wait()
		if n := is.notModified.Load(); n != 2 {
			t.Fatalf("%d answers 304 after two intervals, want 2", n)
		}
		etag := is.kr.State().Document.ETag
		if got := is.lastINM.Load(); got == nil || *got != etag {
			t.Fatalf("If-None-Match %v, want %s", got, etag)
		}
		if n := is.full.Load(); n != 1 {
			t.Fatalf("%d full answers, want 1: an unchanged set must cost a 304", n)
		}
		tok1 := is.sign(claims(nil))
		if _, err := v.Verify(context.Background(), tok1); err != nil {
			t.Fatalf("after 304s: %v", err)
		}
		// A changed set comes back as a 200 at the next refresh and replaces
		// the old one.
		is.rotate(k2, k1)
		time.Sleep(minRefresh)
		synctest.Wait()
		if full, nm := is.full.Load(), is.notModified.Load(); full != 2 || nm != 2 {
			t.Fatalf("after the rotation: %d full answers and %d 304s, want 2 and 2", full, nm)
		}
		hits := is.hits.Load()
		tok2 := is.sign(claims(nil))
		if _, err := v.Verify(context.Background(), tok2); err != nil {
			t.Fatalf("new key after the background refresh: %v", err)
		}
		if n := is.hits.Load(); n != hits {
			t.Fatalf("the new key cost %d more JWKS requests; the background refresh had fetched it", n-hits)
		}
		// The next refresh asks with the new ETag and gets a 304.
		time.Sleep(minRefresh)
		synctest.Wait()
		if got := is.lastINM.Load(); got == nil || *got != is.kr.State().Document.ETag || is.notModified.Load() != 3 {
			t.Fatalf("If-None-Match %v after the rotation, want the new ETag and a 304", got)
		}
	})
}

func TestVerifierKeepsLastGoodSet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const minRefresh = time.Minute
		k1, k2 := newKey(t), newKey(t)
		is := newMemIssuer(t, k1)
		is.setCacheControl("public, max-age=0")
		v, logs := newVerifier(t, is, func(c *verify.VerifierConfig) {
			c.MinRefresh, c.MaxRefresh = minRefresh, minRefresh
			c.UnknownKIDInterval = time.Hour
		})
		tok1 := is.sign(claims(nil))
		is.fail.Store(true)
		// A failed refresh is tried again after MinRefresh: three in three
		// intervals, and the old set stays.
		time.Sleep(3 * minRefresh)
		synctest.Wait()
		if n := is.hits.Load(); n != 4 {
			t.Fatalf("%d JWKS requests after three intervals of failures, want 4", n)
		}
		if _, err := v.Verify(context.Background(), tok1); err != nil {
			t.Fatalf("after failed refreshes: %v", err)
		}
		// An unknown kid's refresh fails too: refused, and the old set stays.
		is.rotate(k2, k1)
		tok2 := is.sign(claims(nil))
		if _, err := v.Verify(context.Background(), tok2); !errors.Is(err, verify.ErrUnknownKID) {
			t.Fatalf("kid of a set that could not be fetched: %v", err)
		}
		if n := is.hits.Load(); n != 5 {
			t.Fatalf("%d JWKS requests, want 5 (one for the unknown kid)", n)
		}
		if _, err := v.Verify(context.Background(), tok1); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs.String(), "keeping the last good set") || !strings.Contains(logs.String(), "500") {
			t.Fatalf("logs do not report the failed refresh:\n%s", logs.String())
		}
		// The server comes back: the next refresh, MinRefresh after the
		// failed one, picks up the new key.
		is.fail.Store(false)
		time.Sleep(minRefresh - 1)
		synctest.Wait()
		if _, err := v.Verify(context.Background(), tok2); !errors.Is(err, verify.ErrUnknownKID) {
			t.Fatalf("before the next refresh: %v", err)
		}
		time.Sleep(1)
		synctest.Wait()
		if _, err := v.Verify(context.Background(), tok2); err != nil {
			t.Fatalf("after the server came back: %v", err)
		}
		if n := is.hits.Load(); n != 6 {
			t.Fatalf("%d JWKS requests, want 6", n)
		}
	})
}

// TestVerifierSilentServer: a JWKS server that takes the request and never
// answers costs a background refresh 10 s and a request no more than its own
// deadline; the last good set is kept meanwhile.
func TestVerifierSilentServer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const minRefresh = time.Minute
		k1, k2 := newKey(t), newKey(t)
		is := newMemIssuer(t, k1)
		v, logs := newVerifier(t, is, func(c *verify.VerifierConfig) { c.MinRefresh, c.MaxRefresh = minRefresh, minRefresh })
		tok1 := is.sign(claims(nil))
		is.delay.Store(int64(24 * time.Hour))
		time.Sleep(minRefresh) // the background refresh starts and hangs
		synctest.Wait()
		start := time.Now()
		if _, err := v.Verify(context.Background(), tok1); err != nil {
			t.Fatalf("while a refresh hangs: %v", err)
		}
		// A new kid: the request waits for the refresh under way, up to its
		// own deadline.
		is.rotate(k2, k1)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := v.Verify(ctx, is.sign(claims(nil)))
		if !errors.Is(err, verify.ErrUnknownKID) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("unknown kid while the server hangs: %v", err)
		}
		if took := time.Since(start); took != 2*time.Second {
			t.Fatalf("the request took %s, want its 2s deadline", took)
		}
		// The hanging fetch gives up 10 s after it started.
		time.Sleep(8*time.Second - 1)
		synctest.Wait()
		if strings.Contains(logs.String(), "refresh failed") {
			t.Fatalf("the fetch gave up before 10 s:\n%s", logs.String())
		}
		time.Sleep(1)
		synctest.Wait()
		if !strings.Contains(logs.String(), "refresh failed; keeping the last good set") || !strings.Contains(logs.String(), "deadline exceeded") {
			t.Fatalf("no failed refresh logged 10 s after it started:\n%s", logs.String())
		}
		if _, err := v.Verify(context.Background(), tok1); err != nil {
			t.Fatalf("after the fetch gave up: %v", err)
		}
		// A verifier cannot be made from a silent server: the first fetch
		// gives up after 10 s even without a deadline of its own.
		start = time.Now()
		_, err = verify.NewVerifier(context.Background(), verify.VerifierConfig{JWKSURL: is.url(), Issuer: testIssuer, Audience: testAudience, HTTPClient: is.client})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("NewVerifier with a silent server: %v", err)
		}
		if took := time.Since(start); took != 10*time.Second {
			t.Fatalf("NewVerifier gave up after %s, want 10s", took)
		}
	})
}

func TestVerifierIgnoresKeyURLsInToken(t *testing.T) {
	k1, evil := newKey(t), newKey(t)
	is := newIssuer(t, k1)
	// The attacker's server publishes the attacker's key.
	other := newIssuer(t, evil)
	v, _ := newVerifier(t, is, nil)
	srv := app(t, v)
	headers := func(kid string) map[jose.HeaderKey]any {
		return map[jose.HeaderKey]any{"kid": kid, "jku": other.url(), "x5u": other.url()}
	}

	// A good token with jku/x5u is verified against the configured set.
	good := is.forge(jose.ES256, k1, headers(kidOf(t, k1)), claims(nil))
	if a := call(t, srv, verify.DefaultHeader, good); a.status != http.StatusOK {
		t.Fatalf("status %d: %s", a.status, a.body)
	}
	// The attacker's token names the attacker's set: refused.
	bad := other.forge(jose.ES256, evil, headers(kidOf(t, evil)), claims(nil))
	is.mu.Lock()
	is.tokens = append(is.tokens, bad)
	is.mu.Unlock()
	if a := call(t, srv, verify.DefaultHeader, bad); a.status != http.StatusUnauthorized {
		t.Fatalf("attacker's token: %d %s", a.status, a.body)
	}
	// An embedded jwk is not trusted either.
	embedded, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: evil},
		(&jose.SignerOptions{EmbedJWK: true}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	etok, err := jwt.Signed(embedded).Claims(claims(nil)).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	is.remember(etok)
	if a := call(t, srv, verify.DefaultHeader, etok); a.status != http.StatusUnauthorized {
		t.Fatalf("token with an embedded jwk: %d %s", a.status, a.body)
	}
	if n := other.hits.Load(); n != 0 {
		t.Fatalf("the URL named in the token got %d requests", n)
	}
	if n := is.hits.Load(); n != 2 {
		t.Fatalf("the configured JWKS URL got %d requests, want 2 (construction + one unknown kid)", n)
	}
}

func TestVerifierEcho(t *testing.T) {
	is := newIssuer(t, newKey(t))
	v, _ := newVerifier(t, is, nil)
	e := echo.New()
	e.HideBanner = true
	e.Use(echoverify.Middleware(v))
	e.GET("/", func(c echo.Context) error {
		cl, ok := verify.ClaimsFromContext(c.Request().Context())
		if !ok {
			return echo.NewHTTPError(http.StatusInternalServerError, "no claims")
		}
		return c.JSON(http.StatusOK, cl)
	})
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)

	tok := is.sign(claims(nil))
	a := call(t, srv, verify.DefaultHeader, tok)
	if a.status != http.StatusOK || a.claims.Email != "alice@example.com" || !slices.Equal(a.claims.Groups, []string{"admins", "dev"}) {
		t.Fatalf("%d %s", a.status, a.body)
	}
	backendtest.VerifyIndependently(t, tok, is.kr.State().Document.JSON)
	for _, tc := range []struct {
		values []string
		code   string
	}{
		{nil, "missing_assertion"},
		{[]string{tok, tok}, "multiple_assertions"},
		{[]string{is.sign(claims(map[string]any{"exp": time.Now().Add(-time.Hour).Unix(), "iat": nil, "nbf": nil}))}, "expired_assertion"},
		{[]string{is.sign(claims(map[string]any{"aud": "other.example"}))}, "invalid_assertion"},
	} {
		if a := call(t, srv, verify.DefaultHeader, tc.values...); a.status != http.StatusUnauthorized || a.err.Code != tc.code {
			t.Fatalf("%d %s, want 401 %s", a.status, a.body, tc.code)
		}
	}
}

func TestNewVerifierRefusesBadConfig(t *testing.T) {
	is := newIssuer(t, newKey(t))
	empty := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/empty":
			_, _ = w.Write([]byte(`{"keys":[]}`))
		case "/rsa":
			_, _ = w.Write([]byte(`{"keys":[{"kty":"RSA","n":"sXch","e":"AQAB","kid":"r"}]}`))
		case "/html":
			_, _ = w.Write([]byte(`<html></html>`))
		case "/big":
			_, _ = w.Write(bytes.Repeat([]byte(" "), 2<<20))
		default:
			http.Error(w, "nope", http.StatusInternalServerError)
		}
	}))
	t.Cleanup(empty.Close)
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	good := verify.VerifierConfig{JWKSURL: is.url(), Issuer: testIssuer, Audience: testAudience}
	for _, tc := range []struct {
		name   string
		change func(*verify.VerifierConfig)
		want   string
	}{
		{"no URL", func(c *verify.VerifierConfig) { c.JWKSURL = "" }, "JWKSURL is required"},
		{"file URL", func(c *verify.VerifierConfig) { c.JWKSURL = "file:///etc/jwks.json" }, "scheme must be http or https"},
		{"no host", func(c *verify.VerifierConfig) { c.JWKSURL = "https:///jwks.json" }, "no host"},
		{"no issuer", func(c *verify.VerifierConfig) { c.Issuer = "" }, "Issuer is required"},
		{"no audience", func(c *verify.VerifierConfig) { c.Audience = "" }, "Audience is required"},
		{"bad header", func(c *verify.VerifierConfig) { c.Header = "X-A: b" }, "not a header name"},
		{"negative leeway", func(c *verify.VerifierConfig) { c.Leeway = -time.Second }, "Leeway -1s is negative"},
		{"min above max", func(c *verify.VerifierConfig) { c.MinRefresh, c.MaxRefresh = time.Hour, time.Minute }, "MinRefresh 1h0m0s is above MaxRefresh 1m0s"},
		{"server error", func(c *verify.VerifierConfig) { c.JWKSURL = empty.URL + "/down" }, "status 500"},
		{"not found", func(c *verify.VerifierConfig) { c.JWKSURL = is.srv.URL + "/jwks" }, "status 404"},
		{"no keys", func(c *verify.VerifierConfig) { c.JWKSURL = empty.URL + "/empty" }, "no EC P-256 (ES256) key"},
		{"only RSA", func(c *verify.VerifierConfig) { c.JWKSURL = empty.URL + "/rsa" }, "no EC P-256 (ES256) key"},
		{"not JSON", func(c *verify.VerifierConfig) { c.JWKSURL = empty.URL + "/html" }, "parse key set"},
		{"too big", func(c *verify.VerifierConfig) { c.JWKSURL = empty.URL + "/big" }, "larger than"},
		{"unreachable", func(c *verify.VerifierConfig) { c.JWKSURL = closedURL + "/jwks.json" }, "connect"},
		{"user info is not shown", func(c *verify.VerifierConfig) {
			c.JWKSURL = "http://user:s3cret@" + closedURL[len("http://"):] + "/jwks.json"
		}, "user:xxxxx@"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.change(&cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			v, err := verify.NewVerifier(ctx, cfg)
			if err == nil {
				v.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("error shows the password: %v", err)
			}
		})
	}
	// A context that has ended stops the first fetch.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := verify.NewVerifier(ctx, good); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func TestVerifierClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const minRefresh = time.Minute
		is := newMemIssuer(t, newKey(t))
		is.setCacheControl("no-store")
		v, _ := newVerifier(t, is, func(c *verify.VerifierConfig) { c.MinRefresh, c.MaxRefresh = minRefresh, time.Hour })
		time.Sleep(minRefresh)
		synctest.Wait()
		if n := is.hits.Load(); n != 2 {
			t.Fatalf("%d JWKS requests after one interval, want 2", n)
		}
		// The next refresh hangs on a silent server; Close ends it at once.
		is.delay.Store(int64(24 * time.Hour))
		time.Sleep(minRefresh)
		synctest.Wait()
		start := time.Now()
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if took, left := time.Since(start), is.gaveUp.Load(); took != 0 || left != 1 {
			t.Fatalf("Close took %s and %d hanging fetches were ended, want 0s and 1", took, left)
		}
		is.delay.Store(0)
		// No refresh comes after a day (and the bubble would report the
		// background loop's goroutine if Close had left it running).
		time.Sleep(24 * time.Hour)
		synctest.Wait()
		if n := is.hits.Load(); n != 3 {
			t.Fatalf("%d requests after Close", n-3)
		}
		// Verify keeps working with the last set; an unknown kid does not fetch.
		if _, err := v.Verify(context.Background(), is.sign(claims(nil))); err != nil {
			t.Fatal(err)
		}
		k := newKey(t)
		if _, err := v.Verify(context.Background(), is.forge(jose.ES256, k, map[jose.HeaderKey]any{"kid": kidOf(t, k)}, claims(nil))); !errors.Is(err, verify.ErrUnknownKID) {
			t.Fatal(err)
		}
		if n := is.hits.Load(); n != 3 {
			t.Fatalf("%d requests after Close", n-3)
		}
		if err := v.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})
}

// The example app of README.md: an upstream behind kmsgate that greets the
// user the gateway vouches for.
func ExampleVerifier_Middleware() {
	v, err := verify.NewVerifier(context.Background(), verify.VerifierConfig{
		JWKSURL:  "https://gw.example/.well-known/jwks.json",
		Issuer:   "https://gw.example",
		Audience: "app.example",
	})
	if err != nil {
		log.Fatal(err) // the key set could not be fetched
	}
	defer v.Close()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		c, _ := verify.ClaimsFromContext(r.Context())
		fmt.Fprintf(w, "hello %s (%s), groups %v\n", c.Name, c.Email, c.Groups)
	})
	log.Fatal(http.ListenAndServe(":8080", v.Middleware(mux)))
}

func TestNewContext(t *testing.T) {
	want := &verify.Claims{Subject: "bob"}
	got, ok := verify.ClaimsFromContext(verify.NewContext(context.Background(), want))
	if !ok || got != want {
		t.Fatalf("got %v %v", got, ok)
	}
}

// BenchmarkVerifier compares the middleware and Verify with the bare
// VerifyWithSet they are built on (ECDSA verification dominates).
func BenchmarkVerifier(b *testing.B) {
	k := newKey(b)
	dir := b.TempDir()
	path := filepath.Join(dir, "keys.pem")
	der, _ := x509.MarshalECPrivateKey(k)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		b.Fatal(err)
	}
	bk, err := backends.Open(context.Background(), "file://"+path, backends.Options{})
	if err != nil {
		b.Fatal(err)
	}
	kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "file://" + path, Backend: bk}}, jwks.Config{})
	if err := kr.Refresh(context.Background()); err != nil {
		b.Fatal(err)
	}
	doc := kr.State().Document
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(doc.JSON) }))
	defer srv.Close()
	v, err := verify.NewVerifier(context.Background(), verify.VerifierConfig{
		JWKSURL: srv.URL, Issuer: testIssuer, Audience: testAudience,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	tok, _, err := kr.SignJWT(context.Background(), claims(nil))
	if err != nil {
		b.Fatal(err)
	}
	set, err := verify.ParseSet(doc.JSON)
	if err != nil {
		b.Fatal(err)
	}
	want := verify.Expect{Issuer: testIssuer, Audience: testAudience, Leeway: 30 * time.Second}

	b.Run("VerifyWithSet", func(b *testing.B) {
		for b.Loop() {
			if _, err := verify.VerifyWithSet(tok, set, want); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Verify", func(b *testing.B) {
		for b.Loop() {
			if _, err := v.Verify(context.Background(), tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	h := v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	b.Run("Middleware", func(b *testing.B) {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header.Set(verify.DefaultHeader, tok)
		for b.Loop() {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != http.StatusOK {
				b.Fatal(w.Code)
			}
		}
	})
}
