package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/kmsgate/kmsgate/backends/backendtest"
)

// bearer is a Request carrying only an Authorization header.
type bearer string

func (b bearer) Context() context.Context { return context.Background() }
func (b bearer) Header(name string) string {
	if name == "Authorization" {
		return "Bearer " + string(b)
	}
	return ""
}
func (b bearer) HeaderValues(name string) []string {
	if v := b.Header(name); v != "" {
		return []string{v}
	}
	return nil
}
func (b bearer) HasHeader([]string) bool   { return false }
func (b bearer) Peer() netip.Addr          { return netip.MustParseAddr("127.0.0.1") }
func (b bearer) TLS() *tls.ConnectionState { return nil }

// TestOIDCRetrySchedule: an issuer that is down when the source is made is
// tried again after 1 s, 2 s, 4 s, … up to every 30 s, each wait as logged,
// and the source judges tokens from the attempt that reaches it. It runs in
// a synctest bubble, so every attempt is checked at its exact time.
func TestOIDCRetrySchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const issuer = "https://idp.invalid"
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		var up atomic.Bool
		var mu sync.Mutex
		var attempts []time.Duration // discovery requests, since the start
		start := time.Now()
		mux := http.NewServeMux()
		mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			attempts = append(attempts, time.Since(start))
			mu.Unlock()
			if !up.Load() {
				http.Error(w, "starting", http.StatusServiceUnavailable)
				return
			}
			json.NewEncoder(w).Encode(map[string]any{"issuer": issuer, "jwks_uri": issuer + "/jwks", "authorization_endpoint": issuer + "/auth",
				"id_token_signing_alg_values_supported": []string{"ES256"}})
		})
		mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
			json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
		})
		var logs strings.Builder
		var logMu sync.Mutex
		log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
			logMu.Lock()
			defer logMu.Unlock()
			return logs.Write(p)
		}), nil))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		d, err := discover(ctx, issuer, log, &http.Client{Transport: backendtest.MemTransport{Handler: mux}})
		if err != nil {
			t.Fatal(err)
		}
		src, err := NewOIDCSource(d, "app", "groups", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		sign := func() bearer {
			s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			tok, err := jwt.Signed(s).Claims(map[string]any{"iss": issuer, "aud": "app", "sub": "u-1", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}).Serialize()
			if err != nil {
				t.Fatal(err)
			}
			return bearer(tok)
		}
		if _, err := src.Identify(sign()); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("before the issuer is reached: %v, want ErrUnavailable", err)
		}

		// Down for two minutes: attempts at 0 (discover itself), then
		// after waits of 1, 2, 4, 8, 16, 30, 30 s; the next is due at 121 s.
		time.Sleep(121*time.Second - 1)
		synctest.Wait()
		want := []time.Duration{0, 1, 3, 7, 15, 31, 61, 91}
		mu.Lock()
		got := append([]time.Duration(nil), attempts...)
		mu.Unlock()
		if len(got) != len(want) {
			t.Fatalf("attempts at %v, want at %v seconds", got, want)
		}
		for i := range want {
			if got[i] != want[i]*time.Second {
				t.Fatalf("attempts at %v, want at %v seconds", got, want)
			}
		}
		if ok, what := src.(Readier).Ready(); ok || what != "oidc issuer "+issuer {
			t.Fatalf("Ready() = %v %q while the issuer is down", ok, what)
		}
		logMu.Lock()
		for _, w := range []string{"retry_in=2s", "retry_in=4s", "retry_in=16s", "retry_in=30s"} {
			if !strings.Contains(logs.String(), w) {
				t.Errorf("the logs do not say %s:\n%s", w, logs.String())
			}
		}
		if strings.Contains(logs.String(), "retry_in=32s") {
			t.Errorf("a logged wait is not the one waited:\n%s", logs.String())
		}
		logMu.Unlock()

		// The issuer comes up; the next attempt, at 121 s, reaches it.
		up.Store(true)
		time.Sleep(1)
		synctest.Wait()
		if ok, _ := src.(Readier).Ready(); !ok {
			t.Fatal("not ready after the attempt that reached the issuer")
		}
		if id, err := src.Identify(sign()); err != nil || id.Subject != "u-1" {
			t.Fatalf("once the issuer is reached: %+v, %v", id, err)
		}
		// No more attempts: the retry loop has ended.
		time.Sleep(time.Hour)
		synctest.Wait()
		mu.Lock()
		n := len(attempts)
		mu.Unlock()
		if n != len(want)+1 {
			t.Fatalf("%d discovery requests, want %d", n, len(want)+1)
		}
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
