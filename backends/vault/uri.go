package vault

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/kmsgate/kmsgate/backends"
)

// nameRE is what Vault accepts as a Transit key name (framework's
// GenericNameRegex): word characters, with dots and dashes inside.
var nameRE = regexp.MustCompile(`^\w(?:[\w.-]*\w)?$`)

// mountSegmentRE is one segment of a mount path.
var mountSegmentRE = regexp.MustCompile(`^[\w.-]+$`)

// parseURI returns the key name and mount of a hashivault URI:
// hashivault://NAME or hashivault://NAME?mount=PATH. Anything else (a path,
// user info, a port, a fragment, another query parameter) is refused.
func parseURI(u *url.URL) (name, mount string, err error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("vault: key %q: %w: %s (want hashivault://NAME or hashivault://NAME?mount=PATH)",
			backends.Redact(u.String()), backends.ErrInvalidURI, fmt.Sprintf(format, args...))
	}
	if u.Scheme != Scheme {
		return "", "", bad("scheme %q", u.Scheme)
	}
	if u.Opaque != "" {
		return "", "", bad("no // after the scheme")
	}
	if u.User != nil {
		return "", "", bad("user info is not allowed (credentials come from the Vault environment)")
	}
	if u.Port() != "" {
		return "", "", bad("a port is not allowed (the Vault address comes from VAULT_ADDR)")
	}
	if u.Fragment != "" {
		return "", "", bad("a fragment is not allowed")
	}
	name = u.Hostname()
	if name == "" {
		if p := strings.Trim(u.Path, "/"); p != "" && !strings.Contains(p, "/") {
			return "", "", bad("no key name; write hashivault://%s, not hashivault:///%s", p, p)
		}
		return "", "", bad("no key name")
	}
	if u.Path != "" && u.Path != "/" {
		return "", "", bad("a path is not allowed after the key name (use ?mount= for the mount)")
	}
	if !nameRE.MatchString(name) {
		return "", "", bad("%q is not a valid Transit key name", name)
	}
	mount = DefaultMount
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return "", "", bad("query: %v", err)
	}
	for k, vs := range q {
		if k != "mount" {
			return "", "", bad("unknown parameter %q (the only one is mount)", k)
		}
		if len(vs) != 1 {
			return "", "", bad("mount is given %d times", len(vs))
		}
		m := strings.Trim(vs[0], "/")
		if m == "" {
			return "", "", bad("mount is empty")
		}
		for _, seg := range strings.Split(m, "/") {
			if !mountSegmentRE.MatchString(seg) || seg == "." || seg == ".." {
				return "", "", bad("mount %q is not a valid mount path", vs[0])
			}
		}
		mount = m
	}
	return name, mount, nil
}
