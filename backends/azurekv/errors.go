package azurekv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"github.com/kmsgate/kmsgate/backends"
)

// credentialError marks a failure to get a token from the credential, which
// the SDK passes on as an untyped error.
type credentialError struct{ err error }

func (e *credentialError) Error() string { return "Azure credential: " + e.err.Error() }
func (e *credentialError) Unwrap() error { return e.err }

// markedCredential wraps a credential so that its failures are recognisable
// (see classify).
type markedCredential struct{ azcore.TokenCredential }

// GetToken implements azcore.TokenCredential.
func (c markedCredential) GetToken(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	tok, err := c.TokenCredential.GetToken(ctx, o)
	if err != nil {
		return tok, &credentialError{err}
	}
	return tok, nil
}

// serviceError is Key Vault's error body: {"error":{"code","message","innererror":{"code"}}}.
type serviceError struct {
	Error struct {
		Code       string `json:"code"`
		Message    string `json:"message"`
		InnerError *struct {
			Code string `json:"code"`
		} `json:"innererror"`
	} `json:"error"`
}

// describe returns "HTTP 403 Forbidden/KeyDisabled: message" for an error
// answer, shorter than the SDK's multi-line text, and the codes.
func describe(re *azcore.ResponseError) (msg, code, inner string) {
	code = re.ErrorCode
	var body serviceError
	if re.RawResponse != nil {
		if p, err := runtime.Payload(re.RawResponse); err == nil && json.Unmarshal(p, &body) == nil {
			if body.Error.Code != "" {
				code = body.Error.Code
			}
			if body.Error.InnerError != nil {
				inner = body.Error.InnerError.Code
			}
		}
	}
	msg = fmt.Sprintf("HTTP %d", re.StatusCode)
	if code != "" {
		msg += " " + code
	}
	if inner != "" {
		msg += "/" + inner
	}
	if m := strings.TrimSpace(body.Error.Message); m != "" {
		if len(m) > 300 {
			m = m[:300] + "…"
		}
		msg += ": " + m
	}
	return msg, code, inner
}

// classify wraps an error of the Key Vault client with the typed error the
// gateway acts on.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || backends.Kind(err) != "unknown" {
		return err // cancelled, or already typed by the backend's own checks
	}
	var ce *credentialError
	if errors.As(err, &ce) {
		if errors.Is(err, context.DeadlineExceeded) {
			return backends.Deadline(err)
		}
		return fmt.Errorf("%w: %w", backends.ErrPermission, err)
	}
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		if errors.Is(err, context.DeadlineExceeded) {
			return backends.Deadline(err)
		}
		// No answer: connection refused or reset, DNS, TLS.
		return fmt.Errorf("%w: %w", backends.ErrUnavailable, err)
	}
	msg, code, inner := describe(re)
	var kind error
	switch s := re.StatusCode; {
	case s == http.StatusTooManyRequests:
		kind = backends.ErrThrottled
	case s == http.StatusUnauthorized:
		kind = backends.ErrPermission
	case s == http.StatusForbidden:
		kind = forbidden(code, inner, msg)
	case s == http.StatusNotFound:
		kind = backends.ErrNotFound
	case s == http.StatusRequestTimeout || s >= 500:
		kind = backends.ErrUnavailable
	default:
		// 400 and the like: a request the service refuses for good.
		return errors.New(msg)
	}
	return fmt.Errorf("%w: %s", kind, msg)
}

// forbidden tells Key Vault's 403 answers apart: a key that cannot be used
// now (disabled, expired, not yet valid), an operation the key does not
// allow (key_ops), or a caller without the role or access policy.
func forbidden(code, inner, msg string) error {
	lower := strings.ToLower(msg)
	switch {
	case inner == "KeyDisabled" || strings.Contains(lower, "disabled key"),
		inner == "KeyExpired" || strings.Contains(lower, "expired key"),
		inner == "KeyNotYetValid" || strings.Contains(lower, "not yet valid"):
		return backends.ErrDisabled
	case strings.Contains(lower, "not permitted on this key"):
		return backends.ErrKeyType
	}
	return backends.ErrPermission
}

// retryAfter returns how long the service asked to wait (Retry-After in
// seconds or as an HTTP date, or retry-after-ms), 0 when it did not.
func retryAfter(err error) time.Duration {
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.RawResponse == nil {
		return 0
	}
	h := re.RawResponse.Header
	for _, name := range []string{"retry-after-ms", "x-ms-retry-after-ms"} {
		if ms, err := strconv.Atoi(h.Get(name)); err == nil && ms > 0 {
			return time.Duration(ms) * time.Millisecond
		}
	}
	v := h.Get("Retry-After")
	if s, err := strconv.Atoi(v); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// call runs one Key Vault operation through the shared call loop
// (backends.Caller): rate limit, per-attempt timeout, retries of throttling,
// 5xx and lost connections; a Retry-After from the service is honoured
// before the next attempt when it fits the caller's deadline, and when it
// does not the call fails at once with backends.ErrThrottled. fn makes
// exactly one SDK call.
func (b *Backend) call(ctx context.Context, fn func(context.Context) error) error {
	return b.caller.Do(ctx, fn)
}
