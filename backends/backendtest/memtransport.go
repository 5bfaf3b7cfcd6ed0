package backendtest

import (
	"net/http"
	"net/http/httptest"
)

// MemTransport serves each request with a handler in memory, in a
// goroutine of its own, and gives up when the request's context ends, as a
// client waiting on a silent server does. Code under test that talks HTTP
// through it can run in a testing/synctest bubble (a goroutine blocked on a
// real connection is not durably blocked, and the bubble's clock would not
// move).
type MemTransport struct{ Handler http.Handler }

// RoundTrip implements http.RoundTripper.
func (m MemTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	done := make(chan *http.Response, 1)
	go func() {
		rec := httptest.NewRecorder()
		m.Handler.ServeHTTP(rec, r)
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
