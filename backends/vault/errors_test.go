package vault_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/vault"
)

// faultProxy is a reverse proxy on 127.0.0.1 in front of the real test
// Vault. Requests whose path contains a fault's path part are answered by
// the proxy with the fault's status (or held for its delay) while the
// fault's count lasts; everything else reaches Vault.
type faultProxy struct {
	srv *httptest.Server

	mu     sync.Mutex
	faults []*fault
	seen   map[string]int // requests per path part of a fault, answered or not
	// observe, when set before the first request, sees every request
	// first and may change its headers.
	observe func(r *http.Request)
}

type fault struct {
	path   string
	status int
	body   string
	delay  time.Duration
	count  int // how many requests it answers; < 0: all
}

func newFaultProxy(t testing.TB, vaultAddr string) *faultProxy {
	t.Helper()
	target, err := url.Parse(vaultAddr)
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{seen: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(target)
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.observe != nil {
			p.observe(r)
		}
		if f := p.match(r.URL.Path); f != nil {
			// Read the body first, so that the server notices when the
			// client gives up and ends the request's context; keep it for
			// Vault when the fault only delays.
			body, err := io.ReadAll(r.Body)
			if err != nil {
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			if f.delay > 0 {
				select {
				case <-time.After(f.delay):
				case <-r.Context().Done():
					return
				}
			}
			if f.status != 0 {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(f.status)
				_, _ = w.Write([]byte(f.body))
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *faultProxy) match(path string) *fault {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.faults {
		if strings.Contains(path, f.path) {
			p.seen[f.path]++
			if f.count == 0 {
				continue
			}
			if f.count > 0 {
				f.count--
			}
			return f
		}
	}
	return nil
}

func (p *faultProxy) set(faults ...*fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults, p.seen = faults, map[string]int{}
}

func (p *faultProxy) requests(path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[path]
}

// TestErrorMapping puts a fault-injecting proxy between the backend and the
// real Vault: 429 and 5xx are retried with backoff and succeed when Vault
// recovers within the deadline, end as ErrThrottled / ErrUnavailable when it
// does not, 403 is not retried, and a Vault that does not answer gives
// ErrUnavailable at the deadline.
func TestErrorMapping(t *testing.T) {
	e := newEnv(t)
	name := keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	proxy := newFaultProxy(t, e.addr)
	t.Setenv("VAULT_ADDR", proxy.srv.URL)
	b := e.open("hashivault://" + name)
	id := name + "/v1"
	sign := "/transit/sign/" + name
	keys := "/transit/keys/" + name
	digest := sha256.Sum256([]byte("x"))
	pub := e.keyVersions("transit", name)[1].pub

	cases := []struct {
		name     string
		fault    *fault
		deadline time.Duration
		want     error // nil: the call succeeds
		requests int   // requests that reached the proxy; 0: don't check
	}{
		{"429 then ok", &fault{path: sign, status: 429, body: `{"errors":["rate limit quota exceeded"]}`, count: 2}, 5 * time.Second, nil, 3},
		{"503 then ok", &fault{path: sign, status: 503, body: `{"errors":["Vault is sealed"]}`, count: 1}, 5 * time.Second, nil, 2},
		{"502 then ok", &fault{path: sign, status: 502, body: `bad gateway`, count: 3}, 5 * time.Second, nil, 4},
		{"429 always", &fault{path: sign, status: 429, body: `{"errors":["rate limit quota exceeded"]}`, count: -1}, 5 * time.Second, backends.ErrThrottled, vault.DefaultAttempts},
		{"sealed always", &fault{path: sign, status: 503, body: `{"errors":["Vault is sealed"]}`, count: -1}, 5 * time.Second, backends.ErrUnavailable, vault.DefaultAttempts},
		{"500 always", &fault{path: sign, status: 500, body: `{"errors":["internal error"]}`, count: -1}, 5 * time.Second, backends.ErrUnavailable, vault.DefaultAttempts},
		{"403 not retried", &fault{path: sign, status: 403, body: `{"errors":["permission denied"]}`, count: -1}, 5 * time.Second, backends.ErrPermission, 1},
		{"400 not found not retried", &fault{path: sign, status: 400, body: `{"errors":["encryption key not found"]}`, count: -1}, 5 * time.Second, backends.ErrNotFound, 1},
		{"hangs", &fault{path: sign, delay: 20 * time.Second, count: -1}, 700 * time.Millisecond, backends.ErrUnavailable, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			proxy.set(c.fault)
			start := time.Now()
			sig, err := b.Sign(ctxTimeout(t, c.deadline), id, digest[:])
			took := time.Since(start)
			if c.want == nil {
				if err != nil {
					t.Fatalf("sign: %v", err)
				}
				if !backends.VerifyJOSE(pub, digest[:], sig) {
					t.Fatal("signature does not verify")
				}
			} else if !errors.Is(err, c.want) {
				t.Fatalf("sign: %v, want %v", err, c.want)
			}
			if c.requests > 0 && proxy.requests(sign) != c.requests {
				t.Fatalf("%d sign requests, want %d", proxy.requests(sign), c.requests)
			}
			if took > c.deadline+500*time.Millisecond {
				t.Fatalf("returned after %s with a %s deadline", took, c.deadline)
			}
		})
	}

	t.Run("versions 502 then ok", func(t *testing.T) {
		proxy.set(&fault{path: keys, status: 502, body: "bad gateway", count: 1})
		vs, err := b.Versions(ctxTimeout(t, 5*time.Second))
		if err != nil || len(vs) != 1 {
			t.Fatalf("versions: %v %v", vs, err)
		}
		if proxy.requests(keys) != 2 {
			t.Fatalf("%d requests, want 2", proxy.requests(keys))
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		proxy.set()
		t.Setenv("VAULT_ADDR", "http://"+closedAddr(t))
		down := e.open("hashivault://" + name)
		start := time.Now()
		_, err := down.Sign(ctxTimeout(t, 2*time.Second), id, digest[:])
		if !errors.Is(err, backends.ErrUnavailable) || backends.Kind(err) != "unavailable" {
			t.Fatalf("sign: %v, want ErrUnavailable", err)
		}
		if took := time.Since(start); took > 2500*time.Millisecond {
			t.Fatalf("took %s", took)
		}
		if _, err := down.Versions(ctxTimeout(t, 2*time.Second)); !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("versions: %v, want ErrUnavailable", err)
		}
	})
}

// closedAddr returns a 127.0.0.1 address nothing listens on.
func closedAddr(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close()
	return addr
}

// TestLimiterRefusal: a call that --backend-qps cannot fit before its
// deadline is treated as in every remote backend (backends.Caller): it is
// ErrThrottled, returned at once and never retried. Refused before the
// first attempt, nothing reaches Vault; refused before a retry, the one
// failed request is all that did.
func TestLimiterRefusal(t *testing.T) {
	e := newEnv(t)
	name := keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	proxy := newFaultProxy(t, e.addr)
	t.Setenv("VAULT_ADDR", proxy.srv.URL)
	b := e.openWith("hashivault://"+name, backends.Options{QPS: 1}) // burst 1
	id := name + "/v1"
	sign := "/transit/sign/" + name
	digest := sha256.Sum256([]byte("x"))
	// This signature takes the only token: the next one is a second away.
	if _, err := b.Sign(ctxTimeout(t, 5*time.Second), id, digest[:]); err != nil {
		t.Fatal(err)
	}
	before := vault.CallStats(b)

	// Deadline 500ms, next slot in 1s: refused before the first attempt.
	proxy.set(&fault{path: sign}) // counts sign requests, answers none
	start := time.Now()
	_, err := b.Sign(ctxTimeout(t, 500*time.Millisecond), id, digest[:])
	if took := time.Since(start); took > 250*time.Millisecond {
		t.Fatalf("refusal took %s, want it at once, not at the 500ms deadline", took)
	}
	checkRefusal(t, err)
	if n := proxy.requests(sign); n != 0 {
		t.Fatalf("%d sign requests, want none", n)
	}

	// Deadline 1.5s: the first attempt gets the slot at 1s and fails with
	// a retryable 503; the retry's slot (2s) is past the deadline, so the
	// call ends ErrThrottled with no retry.
	proxy.set(&fault{path: sign, status: 503, body: `{"errors":["Vault is sealed"]}`, count: 1})
	_, err = b.Sign(ctxTimeout(t, 1500*time.Millisecond), id, digest[:])
	checkRefusal(t, err)
	if n := proxy.requests(sign); n != 1 {
		t.Fatalf("%d sign requests, want 1 (the failed attempt, no retry)", n)
	}
	after := vault.CallStats(b)
	if got := [3]uint64{after.Attempts - before.Attempts, after.Retries - before.Retries, after.Refused - before.Refused}; got != [3]uint64{1, 0, 2} {
		t.Fatalf("attempts/retries/refusals %v, want [1 0 2]", got)
	}
}

// checkRefusal checks that err is the client-side limit's refusal.
func checkRefusal(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, backends.ErrThrottled) || backends.Kind(err) != "throttled" || !strings.Contains(err.Error(), "--backend-qps") {
		t.Fatalf("%v (kind %q), want ErrThrottled from the client-side limit", err, backends.Kind(err))
	}
}
