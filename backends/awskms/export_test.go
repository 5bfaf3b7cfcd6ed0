package awskms

import (
	"time"

	"github.com/kmsgate/kmsgate/backends"
)

// SetTiming changes the per-attempt timeout and retry policy of an opened
// awskms backend, so that tests of timeouts and retries run quickly.
func SetTiming(b backends.Backend, attempt time.Duration, r backends.Retry) {
	ab := b.(*Backend)
	ab.caller.AttemptTimeout, ab.caller.Retry = attempt, r
}

// CallStats returns the counters of an opened awskms backend's call loop.
func CallStats(b backends.Backend) backends.CallStats { return b.(*Backend).caller.Stats() }

// ParseURI exposes parseURI: the key reference or alias prefix, the region
// and the endpoint a URI names.
var ParseURI = parseURI

// Target fields, for tests.
func (t target) Ref() string      { return t.ref }
func (t target) Prefix() string   { return t.prefix }
func (t target) Region() string   { return t.region }
func (t target) Endpoint() string { return t.endpoint }

// MapState exposes mapState.
var MapState = mapState
