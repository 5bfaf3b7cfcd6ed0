package backends

import "errors"

// Typed errors. Backends wrap them together with the underlying cause, for
// example fmt.Errorf("awskms: sign with %s: %w: %w", arn, backends.ErrThrottled, err),
// and callers test them with errors.Is.
var (
	// ErrNotFound: the key or version does not exist.
	ErrNotFound = errors.New("key not found")
	// ErrDisabled: the key or version exists but is disabled, destroyed or
	// otherwise not in a state that can sign.
	ErrDisabled = errors.New("key disabled")
	// ErrKeyType: the key is not an EC P-256 / SHA-256 signing key.
	ErrKeyType = errors.New("wrong key type")
	// ErrPermission: the backend refused the caller's credentials.
	ErrPermission = errors.New("permission denied")
	// ErrThrottled: the backend or the client-side rate limit refused the
	// call for now; retry later.
	ErrThrottled = errors.New("throttled")
	// ErrUnavailable: the backend could not be reached or did not answer
	// within the deadline.
	ErrUnavailable = errors.New("backend unavailable")
	// ErrIntegrity: the backend's answer failed an integrity check (CRC,
	// wrong version, signature that does not verify).
	ErrIntegrity = errors.New("integrity check failed")
	// ErrInvalidURI: the key URI is malformed or names an unknown scheme.
	ErrInvalidURI = errors.New("invalid key URI")
	// ErrConfig: the backend's own settings (its environment variables,
	// such as VAULT_ADDR) cannot work; the message names the setting.
	ErrConfig = errors.New("invalid backend setting")
)

// kinds lists the typed errors with their short names, most specific first.
var kinds = []struct {
	err  error
	name string
}{
	{ErrIntegrity, "integrity"},
	{ErrThrottled, "throttled"},
	{ErrUnavailable, "unavailable"},
	{ErrPermission, "permission"},
	{ErrNotFound, "not_found"},
	{ErrDisabled, "disabled"},
	{ErrKeyType, "key_type"},
	{ErrInvalidURI, "invalid_uri"},
	{ErrConfig, "config"},
}

// Kind returns the short name of the typed error err wraps ("throttled",
// "unavailable", …), "" for nil and "unknown" for anything else. It is used
// as a metric label and as the "code" of API errors.
func Kind(err error) string {
	if err == nil {
		return ""
	}
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return "unknown"
}
