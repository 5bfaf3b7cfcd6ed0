package verify_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kmsgate/kmsgate/jwks/verify"
)

// memTransport serves requests with a handler in memory, so that a verifier
// can run in a synctest bubble (a goroutine blocked on a real connection is
// not durably blocked, and the bubble's clock would not move). It gives up
// when the request's context ends.
type memTransport struct{ h http.Handler }

func (m memTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	done := make(chan *http.Response, 1)
	go func() {
		rec := httptest.NewRecorder()
		m.h.ServeHTTP(rec, r)
		done <- rec.Result()
	}()
	select {
	case resp := <-done:
		resp.Request = r
		return resp, nil
	case <-r.Context().Done():
		return nil, r.Context().Err()
	}
}

// TestRefreshSchedule follows a verifier's fetches on the fake clock of a
// synctest bubble: every interval is checked to the nanosecond, however slow
// the machine.
func TestRefreshSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newSigner(t)
		var hits atomic.Int64
		var fail atomic.Bool
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			if fail.Load() {
				http.Error(w, "down", http.StatusBadGateway)
				return
			}
			w.Header().Set("Cache-Control", "public, max-age=600")
			w.Write(s.set)
		})
		v, err := verify.NewVerifier(context.Background(), verify.VerifierConfig{
			JWKSURL: "http://jwks.invalid/jwks.json", Issuer: "https://gw", Audience: "app",
			HTTPClient: &http.Client{Transport: memTransport{h}},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		at := func(wait time.Duration, want int64, what string) {
			t.Helper()
			time.Sleep(wait)
			synctest.Wait()
			if n := hits.Load(); n != want {
				t.Fatalf("%s: %d fetches, want %d", what, n, want)
			}
		}
		// max-age=600 is within [MinRefresh 1m, MaxRefresh 1h]: every 10 minutes.
		at(10*time.Minute-1, 1, "just before max-age has passed")
		at(1, 2, "when max-age has passed")
		// A failed fetch is tried again after MinRefresh (1 minute).
		fail.Store(true)
		at(10*time.Minute, 3, "the next fetch, failing")
		at(time.Minute-1, 3, "just before MinRefresh")
		at(1, 4, "MinRefresh after the failure")
		fail.Store(false)
		at(time.Minute, 5, "recovered")
		at(10*time.Minute-1, 5, "back to max-age")
		at(1, 6, "back to max-age")

		// A token with an unknown kid fetches at once, then at most once
		// per UnknownKIDInterval (30 s).
		other := newSigner(t)
		other.kid = "k2"
		tok := other.sign(t, claims("https://gw", "app"))
		for i, step := range []struct {
			wait time.Duration
			want int64
		}{{0, 7}, {0, 7}, {verify.DefaultUnknownKIDInterval - 1, 7}, {1, 8}} {
			time.Sleep(step.wait)
			if _, err := v.Verify(context.Background(), tok); !errors.Is(err, verify.ErrUnknownKID) {
				t.Fatalf("step %d: %v, want ErrUnknownKID", i, err)
			}
			if n := hits.Load(); n != step.want {
				t.Fatalf("step %d, unknown kid: %d fetches, want %d", i, n, step.want)
			}
		}
	})
}

// blockingTransport answers the first request with set and holds every
// later one until release is closed, whatever the request's context says:
// an HTTP client that is slow to give up.
type blockingTransport struct {
	set     []byte
	calls   atomic.Int64
	entered chan struct{} // closed when a request is held
	release chan struct{}
}

func (b *blockingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if b.calls.Add(1) > 1 {
		close(b.entered)
		<-b.release
		return nil, errors.New("released")
	}
	rec := httptest.NewRecorder()
	rec.Header().Set("Cache-Control", "no-store")
	rec.Write(b.set)
	resp := rec.Result()
	resp.Request = r
	return resp, nil
}

// TestCloseDuringStuckFetch: Close returns while a background fetch is held
// by a client that ignores its context, and the background loop does not
// start another one meanwhile. This runs on the real clock, since a loop
// that spun instead of ending would keep a synctest bubble's clock still and
// hang the test; the 10 s bound only turns such a regression into a failure.
func TestCloseDuringStuckFetch(t *testing.T) {
	s := newSigner(t)
	tr := &blockingTransport{set: s.set, entered: make(chan struct{}), release: make(chan struct{})}
	defer close(tr.release)
	v, err := verify.NewVerifier(context.Background(), verify.VerifierConfig{
		JWKSURL: "http://jwks.invalid/jwks.json", Issuer: "https://gw", Audience: "app",
		HTTPClient: &http.Client{Transport: tr},
		MinRefresh: time.Millisecond, MaxRefresh: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	<-tr.entered // the first background refresh is held
	closed := make(chan struct{})
	go func() { v.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return while a fetch was held")
	}
	if n := tr.calls.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2 (construction and the held one)", n)
	}
	if _, err := v.Verify(context.Background(), s.sign(t, claims("https://gw", "app"))); err != nil {
		t.Fatalf("after Close: %v", err)
	}
}
