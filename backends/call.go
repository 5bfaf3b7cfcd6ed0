package backends

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// DefaultCallTimeout is the deadline a Caller gives a call whose context has
// none, when its Timeout is not set.
const DefaultCallTimeout = 10 * time.Second

// Caller is the call loop shared by the remote backends: it gives each call
// a deadline, waits for the client-side rate limit, bounds each attempt, and
// retries failed attempts with backoff within the deadline. The parts that
// differ between backends (how an SDK error is classified, which errors are
// worth another attempt, a login before the call) are its function fields
// and the op passed to Do.
//
// The same rules hold for every backend:
//   - a refusal of the rate limiter (the deadline comes before the next free
//     slot) is ErrThrottled, is returned at once and is never retried;
//   - a call deadline that passed is ErrUnavailable;
//   - a cancellation is returned as it is and never retried.
//
// Set the fields before the first call; a Caller must not be copied after
// first use. Do is safe for concurrent use.
type Caller struct {
	// Kind names the backend in the limiter's errors ("awskms").
	Kind string
	// Timeout is the deadline of a call whose context has none
	// (DefaultCallTimeout when zero).
	Timeout time.Duration
	// AttemptTimeout bounds one attempt within the call's deadline, so that
	// one stuck attempt leaves time to retry; zero leaves each attempt the
	// whole call deadline.
	AttemptTimeout time.Duration
	// Retry is the number of attempts and the backoff between them.
	Retry Retry
	// Limiter is the client-side rate limit; every attempt waits for it.
	// Nil means no limit.
	Limiter *Limiter
	// Classify, when set, maps each failed attempt's error to the typed
	// errors before anything else looks at it.
	Classify func(error) error
	// Retryable reports whether a failed attempt (after Classify) is worth
	// another. Nil retries ErrUnavailable and ErrThrottled. It is not asked
	// about cancellations, nor once the call's deadline has passed.
	Retryable func(error) bool
	// OnFailure, when set, is told about every failed attempt, with whether
	// its error is of a retryable kind (for a debug log).
	OnFailure func(err error, retryable bool)
	// After, when set, reads from a failed attempt's error (before
	// Classify) how long the service asked to wait before the next one
	// (Retry-After); the next attempt waits at least that long, and when
	// that passes the call's deadline the call fails at once.
	After func(error) time.Duration

	attempts, retries, refused atomic.Uint64
}

// CallStats is what a Caller has counted since it was created.
type CallStats struct {
	// Attempts counts the attempts that were made (op called).
	Attempts uint64
	// Retries counts attempts made after a retryable failure.
	Retries uint64
	// Refused counts calls the client-side rate limit refused.
	Refused uint64
}

// Stats returns the Caller's counters.
func (c *Caller) Stats() CallStats {
	return CallStats{Attempts: c.attempts.Load(), Retries: c.retries.Load(), Refused: c.refused.Load()}
}

// WithTimeout gives ctx the call deadline when it has none; a backend uses
// it to put several calls under one deadline.
func (c *Caller) WithTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	d := c.Timeout
	if d <= 0 {
		d = DefaultCallTimeout
	}
	return context.WithTimeout(ctx, d)
}

// Do runs op until it succeeds, fails with an error that is not worth
// another attempt, the attempts run out, or the next backoff would pass the
// call's deadline; it never sleeps past that deadline. Each attempt first
// waits for the rate limit, then calls op with a context bounded by
// AttemptTimeout. op must make one call to the backend per invocation.
func (c *Caller) Do(ctx context.Context, op func(ctx context.Context) error) error {
	ctx, cancel := c.WithTimeout(ctx)
	defer cancel()
	attempts := c.Retry.attempts()
	var last error // the previous attempt's error
	for i := 0; ; i++ {
		if err := ctx.Err(); err != nil {
			if last != nil { // ended just as the backoff did
				return c.final(ctx, last)
			}
			return fmt.Errorf("%s: no attempt made: %w", c.Kind, Deadline(err))
		}
		if err := c.Limiter.Wait(ctx, c.Kind); err != nil {
			if !errors.Is(err, ErrThrottled) {
				return err // the context ended while waiting for a slot
			}
			c.refused.Add(1)
			if last != nil {
				return fmt.Errorf("%w (before a retry; the previous attempt failed: %v)", err, last)
			}
			return err
		}
		if i > 0 {
			c.retries.Add(1)
		}
		c.attempts.Add(1)
		err, after := c.attempt(ctx, op)
		if err == nil {
			return nil
		}
		retry := ctx.Err() == nil && !errors.Is(err, context.Canceled) && c.retryable(err)
		if c.OnFailure != nil {
			c.OnFailure(err, retry)
		}
		if !retry || i == attempts-1 {
			return c.final(ctx, err)
		}
		wait := max(c.Retry.backoff(i), after)
		if dl, _ := ctx.Deadline(); time.Until(dl) < wait {
			if after > 0 {
				err = fmt.Errorf("%w (the service asked to retry after %s, past the deadline)", err, after)
			}
			return c.final(ctx, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return c.final(ctx, err)
		case <-t.C:
		}
		last = err
	}
}

// attempt makes one call of op under the attempt deadline; it returns the
// classified error and the wait the service asked for (After).
func (c *Caller) attempt(ctx context.Context, op func(context.Context) error) (error, time.Duration) {
	if c.AttemptTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.AttemptTimeout)
		defer cancel()
	}
	err := op(ctx)
	if err == nil {
		return nil, 0
	}
	var after time.Duration
	if c.After != nil {
		after = c.After(err)
	}
	if c.Classify != nil {
		err = c.Classify(err)
	}
	return err, after
}

func (c *Caller) retryable(err error) bool {
	if c.Retryable != nil {
		return c.Retryable(err)
	}
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrThrottled)
}

// final is the error Do returns for the last failed attempt: a deadline
// that passed, the attempt's or the call's, is ErrUnavailable; a
// cancellation is returned as it is, also when it came during a backoff;
// anything else is the attempt's error.
func (c *Caller) final(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("%s: %w (the last attempt failed: %v)", c.Kind, ctx.Err(), err)
	case errors.Is(err, ErrUnavailable):
		return err
	case errors.Is(err, context.DeadlineExceeded):
		return Deadline(err)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%w: %w", err, Deadline(ctx.Err()))
	}
	return err
}
