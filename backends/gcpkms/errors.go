package gcpkms

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kmsgate/kmsgate/backends"
)

// classify wraps an error from the Cloud KMS client with the typed error the
// gateway acts on, keeping the service's message.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return backends.Deadline(err)
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%w: %w", backends.ErrUnavailable, err)
	}
	var kind error
	switch st.Code() {
	case codes.NotFound:
		kind = backends.ErrNotFound
	case codes.FailedPrecondition:
		kind = backends.ErrDisabled
	case codes.PermissionDenied, codes.Unauthenticated:
		kind = backends.ErrPermission
	case codes.ResourceExhausted:
		kind = backends.ErrThrottled
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.Internal, codes.Unknown:
		kind = backends.ErrUnavailable
	case codes.Canceled:
		return fmt.Errorf("%w: %s", context.Canceled, st.Message())
	default:
		// InvalidArgument and the rest: a request the service refuses for
		// good; retrying will not help.
		return fmt.Errorf("%s: %s", st.Code(), st.Message())
	}
	return fmt.Errorf("%w: %s: %s", kind, st.Code(), st.Message())
}

// integrityError is an answer that failed an integrity check.
func integrityError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", backends.ErrIntegrity, fmt.Sprintf(format, args...))
}
