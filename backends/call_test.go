package backends

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// The tests of Caller run in synctest bubbles: time only moves when every
// goroutine of the bubble is blocked, so backoffs and deadlines are measured
// exactly and nothing sleeps on the wall clock.

// recorder is an op that fails with errs[i] on its i-th call (the last one
// repeating) and records when each call started and the deadline it had.
type recorder struct {
	errs      []error
	starts    []time.Time
	deadlines []time.Time
}

func (r *recorder) op(ctx context.Context) error {
	r.starts = append(r.starts, time.Now())
	dl, _ := ctx.Deadline()
	r.deadlines = append(r.deadlines, dl)
	return r.errs[min(len(r.starts), len(r.errs))-1]
}

func TestCallerRetriesWithBoundedBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		retry := Retry{Attempts: 5, Base: 10 * time.Millisecond, Max: 40 * time.Millisecond}
		// Jitter is random: run the loop enough times to see several
		// values, and check every one against its bound.
		distinct := map[time.Duration]bool{}
		for range 50 {
			c := &Caller{Kind: "test", Retry: retry}
			r := &recorder{errs: []error{ErrUnavailable}}
			start := time.Now()
			err := c.Do(context.Background(), r.op)
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("lasting failure: %v, want ErrUnavailable", err)
			}
			if len(r.starts) != 5 {
				t.Fatalf("%d attempts, want 5", len(r.starts))
			}
			if st := c.Stats(); st != (CallStats{Attempts: 5, Retries: 4}) {
				t.Fatalf("stats %+v, want 5 attempts and 4 retries", st)
			}
			if !r.starts[0].Equal(start) {
				t.Fatalf("first attempt after %s, want at once", r.starts[0].Sub(start))
			}
			for i := 1; i < len(r.starts); i++ {
				gap := r.starts[i].Sub(r.starts[i-1])
				bound := min(retry.Base<<(i-1), retry.Max) // 10, 20, 40, 40 ms
				if gap <= 0 || gap > bound {
					t.Fatalf("backoff before attempt %d: %s, want in (0, %s]", i+1, gap, bound)
				}
				if i == 1 {
					distinct[gap] = true
				}
			}
			if took := time.Since(start); took > 10*time.Millisecond+20*time.Millisecond+2*40*time.Millisecond {
				t.Fatalf("took %s, more than the sum of the backoff bounds", took)
			}
		}
		if len(distinct) < 2 {
			t.Fatalf("the first backoff was %v in 50 runs: no jitter", distinct)
		}

		// A failure that passes: the call succeeds on the third attempt.
		c := &Caller{Kind: "test", Retry: retry}
		r := &recorder{errs: []error{ErrThrottled, ErrUnavailable, nil}}
		if err := c.Do(context.Background(), r.op); err != nil {
			t.Fatalf("third attempt succeeds: %v", err)
		}
		if st := c.Stats(); len(r.starts) != 3 || st != (CallStats{Attempts: 3, Retries: 2}) {
			t.Fatalf("%d attempts, stats %+v; want 3 attempts, 2 retries", len(r.starts), st)
		}
	})
}

func TestCallerBackoffBound(t *testing.T) {
	p := Retry{Base: 25 * time.Millisecond, Max: time.Second}
	for i, want := range []time.Duration{25, 50, 100, 200, 400, 800, 1000, 1000} {
		want *= time.Millisecond
		for range 200 {
			if d := p.backoff(i); d <= 0 || d > want {
				t.Fatalf("backoff(%d) = %s, want in (0, %s]", i, d, want)
			}
		}
	}
	// Large attempt numbers do not overflow past Max.
	if d := p.backoff(200); d <= 0 || d > time.Second {
		t.Fatalf("backoff(200) = %s", d)
	}
	// Defaults: 25ms first, 1s cap.
	if d := (Retry{}).backoff(0); d <= 0 || d > 25*time.Millisecond {
		t.Fatalf("default first backoff %s", d)
	}
}

func TestCallerNeverSleepsPastDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Backoffs of up to a second with 100ms left: the call returns
		// by the deadline, with ErrUnavailable, whatever the jitter gave.
		for range 50 {
			c := &Caller{Kind: "test", Retry: Retry{Attempts: 10, Base: time.Second, Max: time.Second}}
			r := &recorder{errs: []error{ErrUnavailable}}
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			deadline, _ := ctx.Deadline()
			err := c.Do(ctx, r.op)
			end := time.Now()
			cancel()
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("%v, want ErrUnavailable", err)
			}
			if end.After(deadline) {
				t.Fatalf("returned %s after the deadline", end.Sub(deadline))
			}
			for i, s := range r.starts {
				if !s.Before(deadline) {
					t.Fatalf("attempt %d started at the deadline or after", i+1)
				}
			}
		}

		// A backoff that cannot fit is not slept at all: the call
		// returns as soon as the attempt fails.
		c := &Caller{Kind: "test", Retry: Retry{Attempts: 10, Base: time.Hour, Max: time.Hour}}
		r := &recorder{errs: []error{ErrThrottled}}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := c.Do(ctx, r.op)
		// With a 1h ceiling, a wait under 50ms has odds of 1 in 72000.
		if took := time.Since(start); took != 0 && len(r.starts) == 1 {
			t.Fatalf("slept %s without another attempt", took)
		}
		if !errors.Is(err, ErrThrottled) {
			t.Fatalf("%v, want the attempt's ErrThrottled", err)
		}
	})
}

func TestCallerDeadlines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// No deadline on ctx: Timeout is the call's; each attempt gets
		// AttemptTimeout of it, and an attempt that hangs is retried.
		c := &Caller{
			Kind: "test", Timeout: time.Second, AttemptTimeout: 300 * time.Millisecond,
			Retry:    Retry{Attempts: 10, Base: 10 * time.Millisecond, Max: 10 * time.Millisecond},
			Classify: Deadline,
		}
		var starts []time.Time
		start := time.Now()
		err := c.Do(context.Background(), func(ctx context.Context) error {
			starts = append(starts, time.Now())
			dl, ok := ctx.Deadline()
			want := time.Now().Add(300 * time.Millisecond)
			if end := start.Add(time.Second); end.Before(want) {
				want = end
			}
			if !ok || !dl.Equal(want) {
				t.Errorf("attempt %d: deadline %v, want %v", len(starts), dl.Sub(start), want.Sub(start))
			}
			<-ctx.Done() // hangs until the attempt's deadline
			return ctx.Err()
		})
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("hanging backend: %v, want ErrUnavailable", err)
		}
		if took := time.Since(start); took > time.Second {
			t.Fatalf("took %s, past the 1s call deadline", took)
		}
		// 300ms + backoff, three times, then the rest of the second.
		if len(starts) != 4 {
			t.Fatalf("%d attempts, want 4 (3 timed out after 300ms, the last cut by the call deadline)", len(starts))
		}

		// Without Timeout, DefaultCallTimeout applies.
		c = &Caller{Kind: "test", Retry: Retry{Attempts: 1}}
		start = time.Now()
		err = c.Do(context.Background(), func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		})
		if took := time.Since(start); took != DefaultCallTimeout || !errors.Is(err, ErrUnavailable) {
			t.Fatalf("took %s with %v, want %s and ErrUnavailable", took, err, DefaultCallTimeout)
		}

		// An attempt that outlives the call's deadline and returns an
		// untyped error: the expired deadline still makes it
		// ErrUnavailable, with the attempt's message.
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		err = (&Caller{Kind: "test"}).Do(ctx, func(ctx context.Context) error {
			<-ctx.Done()
			return errors.New("connection reset")
		})
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "connection reset") {
			t.Fatalf("%v, want ErrUnavailable naming the attempt's error", err)
		}

		// A deadline that passed before the call: no attempt,
		// ErrUnavailable.
		calls := 0
		err = (&Caller{Kind: "test"}).Do(ctx, func(context.Context) error { calls++; return nil })
		if calls != 0 || !errors.Is(err, ErrUnavailable) {
			t.Fatalf("expired deadline: %d calls, %v; want none and ErrUnavailable", calls, err)
		}
	})
}

func TestCallerNotRetryable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for _, e := range []error{ErrPermission, ErrNotFound, ErrIntegrity, errors.New("400 bad request")} {
			var failures []bool
			c := &Caller{
				Kind:      "test",
				Retry:     Retry{Attempts: 5},
				OnFailure: func(_ error, retryable bool) { failures = append(failures, retryable) },
			}
			r := &recorder{errs: []error{e}}
			start := time.Now()
			err := c.Do(context.Background(), r.op)
			if !errors.Is(err, e) || len(r.starts) != 1 || time.Since(start) != 0 {
				t.Fatalf("%v: %d attempts in %s, err %v; want one, at once, with the error", e, len(r.starts), time.Since(start), err)
			}
			if len(failures) != 1 || failures[0] {
				t.Fatalf("%v: OnFailure saw %v, want one failure, not retryable", e, failures)
			}
		}

		// A Retryable of the backend's own overrides the default, and
		// sees the error after Classify.
		integrity := func(err error) bool { return errors.Is(err, ErrIntegrity) }
		c := &Caller{Kind: "test", Retry: Retry{Attempts: 3}, Retryable: integrity,
			Classify: func(err error) error { return errors.Join(ErrIntegrity, err) }}
		r := &recorder{errs: []error{errors.New("crc mismatch")}}
		if err := c.Do(context.Background(), r.op); !errors.Is(err, ErrIntegrity) || len(r.starts) != 3 {
			t.Fatalf("classified retryable: %d attempts, %v; want 3 and ErrIntegrity", len(r.starts), err)
		}
		c = &Caller{Kind: "test", Retry: Retry{Attempts: 3}, Retryable: integrity}
		r = &recorder{errs: []error{ErrUnavailable}}
		if err := c.Do(context.Background(), r.op); !errors.Is(err, ErrUnavailable) || len(r.starts) != 1 {
			t.Fatalf("not retryable for this backend: %d attempts, %v; want 1", len(r.starts), err)
		}
	})
}

func TestCallerLimiterRefusal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 1 call per second, burst 1. Every error is retryable here, so
		// only the Caller's rule keeps a refusal from being retried.
		c := &Caller{Kind: "test", Limiter: NewLimiter(1), Retry: Retry{Attempts: 5},
			Retryable: func(error) bool { return true }}
		calls := 0
		ok := func(context.Context) error { calls++; return nil }
		if err := c.Do(context.Background(), ok); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()

		// The next slot is 1s away and the deadline 500ms: refused at
		// once, op not called.
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err := c.Do(ctx, ok)
		cancel()
		if !errors.Is(err, ErrThrottled) || Kind(err) != "throttled" || !strings.Contains(err.Error(), "--backend-qps") {
			t.Fatalf("over the limit: %v, want ErrThrottled from the client-side limit", err)
		}
		if calls != 1 || time.Since(t0) != 0 {
			t.Fatalf("%d calls, %s waited; want the refusal at once, without a call", calls, time.Since(t0))
		}
		if st := c.Stats(); st != (CallStats{Attempts: 1, Refused: 1}) {
			t.Fatalf("stats %+v", st)
		}

		// Deadline 1.5s: the first attempt waits for the slot at 1s and
		// fails; the retry's slot (2s) is past the deadline: refused at
		// once, one call made, no retry.
		ctx, cancel = context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		calls = 0
		err = c.Do(ctx, func(context.Context) error { calls++; return ErrUnavailable })
		if !errors.Is(err, ErrThrottled) || Kind(err) != "throttled" || !strings.Contains(err.Error(), ErrUnavailable.Error()) {
			t.Fatalf("refused retry: %v, want ErrThrottled naming the previous failure", err)
		}
		if calls != 1 {
			t.Fatalf("%d calls, want 1", calls)
		}
		if took := time.Since(t0); took <= time.Second || took > time.Second+25*time.Millisecond {
			t.Fatalf("returned after %s, want just after the first attempt at 1s", took)
		}
		if st := c.Stats(); st != (CallStats{Attempts: 2, Refused: 2}) {
			t.Fatalf("stats %+v, want no retry", st)
		}

		// No limit: nothing is refused.
		free := &Caller{Kind: "test", Limiter: NewLimiter(0)}
		for range 100 {
			if err := free.Do(ctx, ok); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func TestCallerCancellation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		check := func(what string, err error) {
			t.Helper()
			if !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable) || errors.Is(err, ErrThrottled) {
				t.Fatalf("%s: %v, want context.Canceled as it is", what, err)
			}
		}
		retry := Retry{Attempts: 5, Base: time.Second, Max: time.Second}

		// Canceled during an attempt: not retried, and not reported as
		// retryable, even by a Retryable that says yes to everything.
		var flags []bool
		c := &Caller{Kind: "test", Retry: retry, Retryable: func(error) bool { return true },
			OnFailure: func(_ error, retryable bool) { flags = append(flags, retryable) }}
		ctx, cancel := context.WithCancel(context.Background())
		calls := 0
		err := c.Do(ctx, func(ctx context.Context) error {
			calls++
			cancel()
			return ctx.Err()
		})
		check("during an attempt", err)
		if calls != 1 || len(flags) != 1 || flags[0] {
			t.Fatalf("%d calls after a cancellation, OnFailure saw %v; want 1 call, not retryable", calls, flags)
		}

		// Canceled before the call: no attempt.
		calls = 0
		check("before", c.Do(ctx, func(context.Context) error { calls++; return nil }))
		if calls != 0 {
			t.Fatalf("%d calls with a canceled context", calls)
		}

		// Canceled during a backoff: returns then, without another
		// attempt.
		ctx, cancel = context.WithCancel(context.Background())
		c = &Caller{Kind: "test", Retry: retry, OnFailure: func(error, bool) {
			time.AfterFunc(time.Nanosecond, cancel) // while Do sleeps
		}}
		calls = 0
		err = c.Do(ctx, func(context.Context) error { calls++; return ErrUnavailable })
		check("during a backoff", err)
		if calls != 1 {
			t.Fatalf("%d calls, want 1", calls)
		}

		// Canceled while waiting for the rate limit: not a refusal.
		c = &Caller{Kind: "test", Limiter: NewLimiter(1)}
		_ = c.Do(context.Background(), func(context.Context) error { return nil })
		ctx, cancel = context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		calls = 0
		check("waiting for the limit", c.Do(ctx, func(context.Context) error { calls++; return nil }))
		if st := c.Stats(); calls != 0 || st.Refused != 0 {
			t.Fatalf("%d calls, stats %+v; want none and no refusal", calls, st)
		}
	})
}

// TestCallerRetryAfter: a wait the service asked for (After, read from the
// error before Classify) delays the next attempt at least that long; when
// it would pass the deadline, the call fails at once with the error.
func TestCallerRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		raw := errors.New("429 Retry-After: 2")
		c := &Caller{Kind: "test", Retry: Retry{Attempts: 3, Base: time.Millisecond, Max: time.Millisecond},
			Classify: func(err error) error {
				if err == raw {
					return fmt.Errorf("%w: %v", ErrThrottled, err)
				}
				return err
			},
			After: func(err error) time.Duration {
				if err == raw {
					return 2 * time.Second
				}
				return 0
			}}
		r := &recorder{errs: []error{raw, nil}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.Do(ctx, r.op); err != nil {
			t.Fatalf("after the asked wait: %v", err)
		}
		if gap := r.starts[1].Sub(r.starts[0]); gap < 2*time.Second {
			t.Errorf("second attempt after %s, want at least the asked 2s", gap)
		}
		r = &recorder{errs: []error{raw, nil}}
		ctx, cancel = context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		err := c.Do(ctx, r.op)
		if !errors.Is(err, ErrThrottled) || !strings.Contains(err.Error(), "past the deadline") || len(r.starts) != 1 || time.Since(start) != 0 {
			t.Errorf("asked wait past the deadline: %v after %s, %d attempts; want ErrThrottled at once", err, time.Since(start), len(r.starts))
		}
	})
}
