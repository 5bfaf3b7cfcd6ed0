package backends

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"golang.org/x/time/rate"
)

// Retry is a bounded exponential backoff with full jitter: how many attempts
// a Caller makes and how long it waits between them.
type Retry struct {
	// Attempts is the most calls made in all, the first included (default 4).
	Attempts int
	// Base is the first backoff (default 25ms); each later one doubles.
	Base time.Duration
	// Max caps one backoff (default 1s).
	Max time.Duration
}

func (p Retry) attempts() int {
	if p.Attempts <= 0 {
		return 4
	}
	return p.Attempts
}

// backoff returns the wait after failed attempt i (0 for the first): a
// random duration in (0, min(Base<<i, Max)].
func (p Retry) backoff(i int) time.Duration {
	base, maxWait := p.Base, p.Max
	if base <= 0 {
		base = 25 * time.Millisecond
	}
	if maxWait <= 0 {
		maxWait = time.Second
	}
	ceil := min(base, maxWait)
	for range i {
		if ceil > maxWait/2 {
			ceil = maxWait
			break
		}
		ceil *= 2
	}
	return time.Duration(rand.Int64N(int64(ceil)) + 1)
}

// Limiter is the client-side rate limit of one backend (--backend-qps).
type Limiter struct{ l *rate.Limiter }

// NewLimiter returns a limiter allowing qps calls per second with a burst of
// one second's worth; qps <= 0 means no limit.
func NewLimiter(qps float64) *Limiter {
	if qps <= 0 {
		return &Limiter{}
	}
	return &Limiter{l: rate.NewLimiter(rate.Limit(qps), max(1, int(qps)))}
}

// Wait blocks until a call is allowed. When ctx's deadline comes before the
// next free slot it fails at once with ErrThrottled instead of waiting. A
// context that ends first gives its error, mapped by Deadline.
func (l *Limiter) Wait(ctx context.Context, kind string) error {
	if l == nil || l.l == nil {
		return nil
	}
	if err := l.l.Wait(ctx); err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s: waiting for the client-side rate limit: %w", kind, Deadline(err))
		}
		return fmt.Errorf("%s: client-side rate limit (--backend-qps): %w", kind, ErrThrottled)
	}
	return nil
}

// Deadline maps a context error to the typed errors: a deadline that passed
// is ErrUnavailable, a cancellation is returned as it is.
func Deadline(err error) error {
	if errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrUnavailable) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}
