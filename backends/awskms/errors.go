package awskms

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/kmsgate/kmsgate/backends"
)

// errorKinds maps the AWS KMS error codes the gateway acts on to the typed
// errors. Codes not listed fall back to the HTTP status (see classify).
var errorKinds = map[string]error{
	// The key exists but cannot be used now.
	"DisabledException":        backends.ErrDisabled,
	"KMSInvalidStateException": backends.ErrDisabled,
	// The key does not exist (or the caller may not know it does).
	"NotFoundException":   backends.ErrNotFound,
	"InvalidArnException": backends.ErrNotFound,
	// Credentials and authorisation.
	"AccessDeniedException":       backends.ErrPermission,
	"UnrecognizedClientException": backends.ErrPermission,
	"InvalidClientTokenId":        backends.ErrPermission,
	"InvalidSignatureException":   backends.ErrPermission,
	"IncompleteSignature":         backends.ErrPermission,
	"MissingAuthenticationToken":  backends.ErrPermission,
	"ExpiredTokenException":       backends.ErrPermission,
	"SignatureDoesNotMatch":       backends.ErrPermission,
	// The key cannot do what was asked.
	"InvalidKeyUsageException":      backends.ErrKeyType,
	"UnsupportedOperationException": backends.ErrKeyType,
	// The service is failing.
	"KMSInternalException":                backends.ErrUnavailable,
	"DependencyTimeoutException":          backends.ErrUnavailable,
	"KeyUnavailableException":             backends.ErrUnavailable,
	"CustomKeyStoreInvalidStateException": backends.ErrUnavailable,
	"InternalFailure":                     backends.ErrUnavailable,
	"ServiceUnavailable":                  backends.ErrUnavailable,
	"ServiceUnavailableException":         backends.ErrUnavailable,
}

// credentialsError marks a failure to get AWS credentials from the default
// chain, which the SDK reports as an untyped error.
type credentialsError struct{ err error }

func (e *credentialsError) Error() string { return "AWS credentials: " + e.err.Error() }
func (e *credentialsError) Unwrap() error { return e.err }

// credentialsProvider wraps the default chain so that its failures are
// recognisable (see classify).
type credentialsProvider struct{ aws.CredentialsProvider }

// Retrieve implements aws.CredentialsProvider.
func (p credentialsProvider) Retrieve(ctx context.Context) (aws.Credentials, error) {
	c, err := p.CredentialsProvider.Retrieve(ctx)
	if err != nil {
		return c, &credentialsError{err}
	}
	return c, nil
}

// apiCode returns the AWS error code and HTTP status of an SDK error, or ""
// and 0 when the service did not answer.
func apiCode(err error) (code string, status int) {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code = ae.ErrorCode()
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	return code, status
}

// classify wraps an error of the AWS SDK with the typed error the gateway
// acts on; the SDK error, which names the operation and carries the
// service's code and message, stays in the chain.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var ce *credentialsError
	if errors.As(err, &ce) {
		if errors.Is(err, context.DeadlineExceeded) {
			return backends.Deadline(err)
		}
		return fmt.Errorf("%w: %w", backends.ErrPermission, err)
	}
	code, status := apiCode(err)
	if _, ok := retry.DefaultThrottleErrorCodes[code]; ok || status == http.StatusTooManyRequests {
		return fmt.Errorf("%w: %w", backends.ErrThrottled, err)
	}
	if kind, ok := errorKinds[code]; ok {
		return fmt.Errorf("%w: %w", kind, err)
	}
	switch {
	case status >= 500:
		return fmt.Errorf("%w: %w", backends.ErrUnavailable, err)
	case status == http.StatusForbidden || status == http.StatusUnauthorized:
		return fmt.Errorf("%w: %w", backends.ErrPermission, err)
	case status != 0:
		// A request the service refuses for good (ValidationException and
		// the like): no typed error, no retry.
		return err
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return backends.Deadline(err)
	}
	// No answer: connection refused or reset, DNS, TLS.
	return fmt.Errorf("%w: %w", backends.ErrUnavailable, err)
}

// retryable reports whether a failed attempt is worth another: throttling,
// a 5xx answer, or a timeout of the attempt (the Caller does not ask once
// the whole call's deadline has passed).
func retryable(err error) bool {
	code, status := apiCode(err)
	if _, ok := retry.DefaultThrottleErrorCodes[code]; ok || status == http.StatusTooManyRequests {
		return true
	}
	if status >= 500 {
		return true
	}
	if status != 0 {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true // the attempt's own timeout
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
