package gcpkms

import (
	"time"

	"github.com/kmsgate/kmsgate/backends"
)

// SetTiming changes a backend's timing for tests: the default deadline of a
// call, the deadline of one attempt, and the pending-version poll interval.
// Zero leaves a value as it is. Call it before the backend is used.
func SetTiming(b *Backend, timeout, attemptTimeout, pollInterval time.Duration) {
	if timeout > 0 {
		b.caller.Timeout = timeout
	}
	if attemptTimeout > 0 {
		b.caller.AttemptTimeout = attemptTimeout
	}
	if pollInterval > 0 {
		b.pollInterval = pollInterval
	}
}

// CallStats returns the counters of a backend's call loop.
func CallStats(b *Backend) backends.CallStats { return b.caller.Stats() }

// Pollers returns how many pending versions are being polled now.
func Pollers(b *Backend) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.polling)
}
