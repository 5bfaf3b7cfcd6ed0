package vault

import (
	"time"

	"github.com/kmsgate/kmsgate/backends"
)

// SetTiming changes a backend's timing for tests: the default deadline of a
// call and the deadline of one attempt. Zero leaves a value as it is. Call
// it before the backend is used.
func SetTiming(b *Backend, timeout, attemptTimeout time.Duration) {
	if timeout > 0 {
		b.caller.Timeout = timeout
	}
	if attemptTimeout > 0 {
		b.caller.AttemptTimeout = attemptTimeout
	}
}

// SetReloginMinAge changes how old a refused login token must be before the
// backend logs in again, and returns a function that restores it.
func SetReloginMinAge(d time.Duration) (restore func()) {
	old := reloginMinAge
	reloginMinAge = d
	return func() { reloginMinAge = old }
}

// ClientToken returns the token the backend's client sends now.
func ClientToken(b *Backend) string { return b.client.Token() }

// CallStats returns the counters of a backend's call loop.
func CallStats(b *Backend) backends.CallStats { return b.caller.Stats() }
