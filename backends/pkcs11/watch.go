//go:build pkcs11 && cgo

package pkcs11

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/kmsgate/kmsgate/backends"
)

// DefaultCallLimit is how long a PKCS#11 call made without a deadline may
// run before the token counts as hung.
const DefaultCallLimit = 10 * time.Second

// watch keeps the PKCS#11 calls in progress with the time their caller
// stops waiting. A PKCS#11 call cannot be cancelled, so the backend runs it
// on the caller's goroutine (handing it to another goroutine that the
// caller could abandon costs more than the 25 µs budget per signature, see
// bench_test.go) and bounds the harm of a hung token instead: once a call
// has outlived its caller's deadline, every new call fails at once with
// backends.ErrUnavailable, without touching the token, until the hung calls
// come back. Only the calls already inside the library when the token hung
// (at most x-max-sessions) wait for the library's own timeout.
type watch struct {
	mu    sync.Mutex
	calls map[*call]struct{}
	now   func() time.Time
}

// call is one call in progress.
type call struct {
	start, until time.Time
}

func newWatch() *watch { return &watch{calls: map[*call]struct{}{}, now: time.Now} }

// enter registers a call made for ctx, or fails when an earlier call has
// outlived its caller.
func (w *watch) enter(ctx context.Context, uri *URI) (*call, error) {
	now := w.now()
	until, ok := ctx.Deadline()
	if !ok {
		until = now.Add(DefaultCallLimit)
	}
	c := &call{start: now, until: until}
	w.mu.Lock()
	defer w.mu.Unlock()
	for old := range w.calls {
		if now.After(old.until) {
			return nil, fmt.Errorf("pkcs11: %s: %w: a call to the token has not returned for %s, past its caller's deadline; the token looks hung, and no new call is made until it answers", uri, backends.ErrUnavailable, now.Sub(old.start).Round(time.Millisecond))
		}
	}
	w.calls[c] = struct{}{}
	return c, nil
}

// leave unregisters a call.
func (w *watch) leave(c *call) {
	w.mu.Lock()
	delete(w.calls, c)
	w.mu.Unlock()
}
