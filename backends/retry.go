package backends

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"golang.org/x/time/rate"
)

// Retry is a bounded exponential backoff with full jitter, used by the KMS
// backends for calls that failed with a retryable error.
type Retry struct {
	// Attempts is the most calls made in all, the first included (default 4).
	Attempts int
	// Base is the first backoff (default 25ms); each later one doubles.
	Base time.Duration
	// Max caps one backoff (default 1s).
	Max time.Duration
}

// Do calls fn until it succeeds, returns an error for which retryable is
// false, the attempts run out, or the next backoff would pass ctx's deadline.
// It never sleeps past ctx's deadline; the last error is returned.
func (p Retry) Do(ctx context.Context, retryable func(error) bool, fn func(context.Context) error) error {
	attempts, base, maxWait := p.Attempts, p.Base, p.Max
	if attempts <= 0 {
		attempts = 4
	}
	if base <= 0 {
		base = 25 * time.Millisecond
	}
	if maxWait <= 0 {
		maxWait = time.Second
	}
	var err error
	for i := 0; i < attempts; i++ {
		if err = fn(ctx); err == nil || !retryable(err) || i == attempts-1 {
			return err
		}
		backoff := min(base<<i, maxWait)
		wait := time.Duration(rand.Int64N(int64(backoff)) + 1)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
	return err
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
// next free slot it fails at once with ErrThrottled instead of waiting.
func (l *Limiter) Wait(ctx context.Context, kind string) error {
	if l == nil || l.l == nil {
		return nil
	}
	if err := l.l.Wait(ctx); err != nil {
		if errors.Is(err, context.Canceled) {
			return fmt.Errorf("%s: %w", kind, err)
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
