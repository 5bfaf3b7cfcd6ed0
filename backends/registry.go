package backends

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// Opener opens the backend for one parsed key URI.
type Opener func(ctx context.Context, u *url.URL, opts Options) (Backend, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]Opener{}
)

// Register makes a backend available under a URI scheme. Backend packages
// call it from init; registering a scheme twice panics.
func Register(scheme string, open Opener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[scheme]; dup {
		panic("backends: scheme registered twice: " + scheme)
	}
	registry[scheme] = open
}

// Schemes returns the registered URI schemes, sorted.
func Schemes() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	s := make([]string, 0, len(registry))
	for k := range registry {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Open parses a key URI and opens it with the backend registered for its
// scheme. Unknown schemes are refused with the list of known ones.
func Open(ctx context.Context, uri string, opts Options) (Backend, error) {
	u, err := url.Parse(uri)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URI, which may hold a credential
		}
		return nil, fmt.Errorf("key %q: %w: %v", Redact(uri), ErrInvalidURI, err)
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("key %q: %w: no scheme (want one of %s)", Redact(uri), ErrInvalidURI, strings.Join(Schemes(), ", "))
	}
	registryMu.RLock()
	open, ok := registry[u.Scheme]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("key %q: %w: unknown scheme %q (want one of %s)", Redact(uri), ErrInvalidURI, u.Scheme, strings.Join(Schemes(), ", "))
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	b, err := open(ctx, u, opts)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// Redact returns a key URI fit for logs and errors: user info and query
// values that may carry credentials are removed, and so is the user info
// of a value that is kept (an ?endpoint= URL).
func Redact(uri string) string {
	u, err := url.Parse(uri)
	if err != nil {
		return "<unparsable URI>"
	}
	u.User = nil
	if u.RawQuery != "" {
		// Part by part, in order and as written: values that name where a
		// key is are kept (without user info), every other value is
		// replaced.
		parts := strings.Split(u.RawQuery, "&")
		for i, part := range parts {
			name, value, _ := strings.Cut(part, "=")
			n, err := url.QueryUnescape(name)
			if err != nil {
				n = name
			}
			switch strings.ToLower(n) {
			case "mount", "endpoint", "region", "module-path", "pin-source", "x-max-sessions":
				v, err := url.QueryUnescape(value)
				if err != nil {
					parts[i] = name + "=REDACTED"
				} else if r := RedactUserInfo(v); r != v {
					parts[i] = name + "=" + url.QueryEscape(r)
				}
			default:
				parts[i] = name + "=REDACTED"
			}
		}
		u.RawQuery = strings.Join(parts, "&")
	}
	return u.String()
}

// RedactUserInfo returns an address (a URL or HOST:PORT) fit for logs and
// errors: whatever stands before an "@" in its authority, user info that
// may hold a password, is replaced by REDACTED.
func RedactUserInfo(addr string) string {
	prefix, rest := "", addr
	if i := strings.Index(addr, "://"); i >= 0 {
		prefix, rest = addr[:i+3], addr[i+3:]
	}
	authority := rest
	if end := strings.IndexAny(rest, "/?#"); end >= 0 {
		authority = rest[:end]
	}
	at := strings.LastIndex(authority, "@")
	if at < 0 {
		return addr
	}
	return prefix + "REDACTED" + rest[at:]
}
