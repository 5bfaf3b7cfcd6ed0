package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/hashicorp/vault/api"

	"github.com/kmsgate/kmsgate/backends"
)

// errRelogin marks a permission error after which the login token was
// dropped; the call is retried once with a new login.
var errRelogin = errors.New("vault: login token refused")

// retryable reports whether a failed attempt may be retried: Vault was
// unavailable, sealed or throttling, or the login token was refused and has
// been dropped.
func retryable(err error) bool {
	if errors.Is(err, context.Canceled) {
		return false
	}
	return errors.Is(err, backends.ErrUnavailable) || errors.Is(err, backends.ErrThrottled) || errors.Is(err, errRelogin)
}

// mapError wraps an error from the Vault client with the typed error of
// package backends that says what happened. what names the operation and
// key for the message.
func mapError(what string, err error) error {
	if err == nil {
		return nil
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		msg := strings.Join(re.Errors, "; ")
		if re.RawError {
			msg = "unparsable error body"
		}
		return fmt.Errorf("%s: %w: Vault answered %d: %s", what, statusError(re.StatusCode, msg), re.StatusCode, msg)
	}
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w", what, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w: no answer within the deadline: %w", what, backends.ErrUnavailable, err)
	}
	// Anything else failed before an HTTP answer: connection refused or
	// reset, DNS, TLS handshake.
	return fmt.Errorf("%s: %w: %w", what, backends.ErrUnavailable, err)
}

// statusError returns the typed error for an HTTP status from Vault and the
// error messages in its body. Transit's answers to requests it refuses are
// recognised by their message first, because older servers (1.4) send some
// of them with status 500: those are not retried.
func statusError(status int, msg string) error {
	lower := strings.ToLower(msg)
	if status == http.StatusBadRequest || status == http.StatusInternalServerError {
		switch {
		case strings.Contains(lower, "less than the minimum"):
			return backends.ErrDisabled
		case strings.Contains(lower, "higher than the latest key version"), strings.Contains(lower, "key not found"):
			return backends.ErrNotFound
		case strings.Contains(lower, "does not support signing"):
			return backends.ErrKeyType
		}
	}
	switch {
	case status == http.StatusForbidden || status == http.StatusUnauthorized:
		return backends.ErrPermission
	case status == http.StatusTooManyRequests:
		return backends.ErrThrottled
	case status == http.StatusNotFound:
		return backends.ErrNotFound
	case status == http.StatusPreconditionFailed || status >= 500:
		// 503 is also what a sealed Vault answers.
		return backends.ErrUnavailable
	}
	return errUnexpected
}

// errUnexpected is the cause of a Vault answer that none of the typed errors
// describe (a 400 for a reason kmsgate does not expect).
var errUnexpected = errors.New("unexpected Vault error")
