package awskms

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"

	"github.com/kmsgate/kmsgate/backends"
)

// target is what an awskms URI names.
type target struct {
	// ref is the key reference DescribeKey takes (key id, key ARN, alias
	// name or alias ARN); empty in prefix mode.
	ref string
	// prefix is the alias prefix ("alias/PREFIX/" or an alias ARN ending in
	// "/") whose aliases are the key versions; empty for one key.
	prefix string
	// region is the region the URI fixes (from ?region= or an ARN); empty
	// when the SDK's resolution decides.
	region string
	// endpoint is a non-default endpoint URL; empty for AWS's own.
	endpoint string
}

// String names the target in errors and logs.
func (t target) String() string {
	if t.prefix != "" {
		return t.prefix
	}
	return t.ref
}

var (
	keyIDRE     = regexp.MustCompile(`^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$`)
	aliasNameRE = regexp.MustCompile(`^alias/[A-Za-z0-9/_-]{1,250}$`)
	// arnRE matches KMS key and alias ARNs: partition, region, account and
	// the resource.
	arnRE    = regexp.MustCompile(`^arn:(aws[a-z-]*):kms:([a-z0-9-]+):([0-9]{12}):(key/.+|alias/.+)$`)
	regionRE = regexp.MustCompile(`^[a-z0-9-]{1,40}$`)
)

const uriForms = "awskms:///alias/NAME, awskms:///alias/PREFIX/, awskms:///KEY-ID or awskms:///arn:aws:kms:REGION:ACCOUNT:key/ID|alias/NAME, " +
	"optionally awskms://HOST:PORT/… or ?endpoint=URL and ?region=REGION"

// parseURI reads an awskms key URI.
func parseURI(u *url.URL) (target, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("awskms: key %q: %w: %s", backends.Redact(u.String()), backends.ErrInvalidURI, fmt.Sprintf(format, args...))
	}
	var t target
	if u.Scheme != Scheme {
		return t, bad("scheme %q, want %s", u.Scheme, Scheme)
	}
	if u.User != nil || u.Opaque != "" || u.Fragment != "" {
		return t, bad("want %s", uriForms)
	}
	for k, vs := range u.Query() {
		if len(vs) != 1 || vs[0] == "" {
			return t, bad("parameter %q must be given once, with a value", k)
		}
		switch k {
		case "region":
			if !regionRE.MatchString(vs[0]) {
				return t, bad("region %q is not an AWS region name", vs[0])
			}
			t.region = vs[0]
		case "endpoint":
			ep, err := parseEndpoint(vs[0])
			if err != nil {
				return t, bad("endpoint: %v", err)
			}
			t.endpoint = ep
		default:
			return t, bad("unknown parameter %q (known: region, endpoint)", k)
		}
	}
	if u.Host != "" {
		if t.endpoint != "" {
			return t, bad("both a host (%s) and ?endpoint= name the endpoint; give one", u.Host)
		}
		ep, err := hostEndpoint(u.Host)
		if err != nil {
			return t, bad("%v", err)
		}
		t.endpoint = ep
	}

	ref := strings.TrimPrefix(u.Path, "/")
	if ref == "" {
		return t, bad("no key named; want %s", uriForms)
	}
	if m := arnRE.FindStringSubmatch(ref); m != nil {
		if t.region != "" && t.region != m[2] {
			return t, bad("?region=%s contradicts the ARN's region %s", t.region, m[2])
		}
		t.region = m[2]
		res := m[4]
		switch {
		case strings.HasPrefix(res, "key/"):
			if !keyIDRE.MatchString(strings.TrimPrefix(res, "key/")) {
				return t, bad("%q is not a key ARN (key/ followed by a key id)", ref)
			}
			t.ref = ref
		case strings.HasSuffix(res, "/"):
			if !aliasNameRE.MatchString(strings.TrimSuffix(res, "/")) {
				return t, bad("%q is not an alias ARN prefix (alias/PREFIX/)", ref)
			}
			t.prefix = ref
		default:
			if !aliasNameRE.MatchString(res) {
				return t, bad("%q is not an alias ARN (alias/NAME)", ref)
			}
			t.ref = ref
		}
		return t, nil
	}
	switch {
	case strings.HasPrefix(ref, "arn:"):
		return t, bad("%q is not a KMS key or alias ARN (arn:PARTITION:kms:REGION:ACCOUNT:key/ID or alias/NAME)", ref)
	case strings.HasPrefix(ref, "alias/") && strings.HasSuffix(ref, "/"):
		if !aliasNameRE.MatchString(strings.TrimSuffix(ref, "/")) {
			return t, bad("alias prefix %q: want alias/PREFIX/ with letters, digits, '/', '_' or '-'", ref)
		}
		t.prefix = ref
	case strings.HasPrefix(ref, "alias/"):
		if !aliasNameRE.MatchString(ref) {
			return t, bad("alias %q: want alias/NAME with letters, digits, '/', '_' or '-'", ref)
		}
		t.ref = ref
	case keyIDRE.MatchString(ref):
		t.ref = ref
	default:
		return t, bad("%q is neither a key id, a key ARN, alias/NAME, alias/PREFIX/ nor an alias ARN", ref)
	}
	return t, nil
}

// hostEndpoint turns the URI host into an endpoint URL: plain http for a
// loopback address (an emulator on this machine), https otherwise. A host
// that looks like the start of the key reference (awskms://alias/… with two
// slashes) is refused.
func hostEndpoint(host string) (string, error) {
	h, port := host, ""
	if strings.Contains(host, ":") {
		var err error
		if h, port, err = net.SplitHostPort(host); err != nil {
			return "", fmt.Errorf("host %q: %v", host, err)
		}
	}
	ip := net.ParseIP(h)
	if ip == nil && port == "" && !strings.Contains(h, ".") && h != "localhost" {
		return "", fmt.Errorf("host %q is not an endpoint (an IP, a DNS name or HOST:PORT); the key goes after three slashes: awskms:///%s/…", h, h)
	}
	scheme := "https"
	if h == "localhost" || (ip != nil && ip.IsLoopback()) {
		scheme = "http"
	}
	return scheme + "://" + host, nil
}

// parseEndpoint checks an ?endpoint= URL: http or https, a host, nothing
// else.
func parseEndpoint(s string) (string, error) {
	shown := backends.RedactUserInfo(s) // the user info may hold a password
	e, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may hold a password
		}
		return "", fmt.Errorf("%q: %v", shown, err)
	}
	if e.Scheme != "http" && e.Scheme != "https" {
		return "", fmt.Errorf("%q: want an http:// or https:// URL", shown)
	}
	if e.Host == "" || e.User != nil || (e.Path != "" && e.Path != "/") || e.RawQuery != "" || e.Fragment != "" {
		return "", fmt.Errorf("%q: want SCHEME://HOST[:PORT] and nothing more", shown)
	}
	return e.Scheme + "://" + e.Host, nil
}

// isLoopbackURL reports whether an endpoint URL names this machine.
func isLoopbackURL(endpoint string) bool {
	e, err := url.Parse(endpoint)
	if err != nil {
		return false
	}
	h := e.Hostname()
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
