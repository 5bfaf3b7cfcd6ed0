// Package route holds how a request finds its route: the one path rule
// (normalization of the request target) and the table of upstream routes
// matched by host and path prefix.
package route

import (
	"errors"
	"strings"
)

// Errors of Normalize; each is a 400 answer.
var (
	ErrBadTarget     = errors.New("the request target is not an absolute path")
	ErrBadEscape     = errors.New("the path has a malformed percent-encoding")
	ErrBadByte       = errors.New("the path has a byte that may not appear in a URL")
	ErrEscapedSlash  = errors.New("the path has an encoded slash or backslash (%2F, %5C or \\)")
	ErrBadHost       = errors.New("the Host is not a valid host name")
	errUnknownSchema = errors.New("the request target names a scheme other than http or https")
)

// Normalize returns the canonical form of a request path, the form used to
// match routes and sent upstream, whatever the protocol it came in:
//
//   - percent-encodings of unreserved characters are decoded ("%2e" is
//     ".", "%41" is "A"), every other percent-encoding is kept with
//     upper-case hex digits, and bytes a URL may not carry raw ("|", "{",
//     non-ASCII) are percent-encoded;
//   - dot-segments are removed as RFC 3986 5.2.4 says, and repeated slashes
//     are merged;
//   - encoded slashes and backslashes ("%2F", "%5C", a raw "\") never
//     separate segments: with keepEscapedSlashes they are kept as "%2F" and
//     "%5C", otherwise the path is refused with ErrEscapedSlash;
//   - control bytes, spaces and "#" are refused with ErrBadByte.
//
// A path that is already canonical is returned as it is, without copying.
func Normalize(raw string, keepEscapedSlashes bool) (string, error) {
	if len(raw) == 0 || raw[0] != '/' {
		return "", ErrBadTarget
	}
	if isCanonical(raw) {
		return raw, nil
	}
	b := make([]byte, 0, len(raw)+8)
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '%':
			if i+2 >= len(raw) || unhex(raw[i+1]) < 0 || unhex(raw[i+2]) < 0 {
				return "", ErrBadEscape
			}
			d := byte(unhex(raw[i+1])<<4 | unhex(raw[i+2]))
			i += 2
			switch {
			case class[d] == unreserved:
				b = append(b, d)
			case d == '/' || d == '\\':
				if !keepEscapedSlashes {
					return "", ErrEscapedSlash
				}
				b = appendEscape(b, d)
			default:
				b = appendEscape(b, d)
			}
		case c == '\\':
			if !keepEscapedSlashes {
				return "", ErrEscapedSlash
			}
			b = appendEscape(b, c)
		case class[c] == forbidden:
			return "", ErrBadByte
		case class[c] == encode:
			b = appendEscape(b, c)
		default:
			b = append(b, c)
		}
	}
	return removeDotSegments(string(b)), nil
}

// isCanonical reports whether a path needs no change: only bytes that stand
// for themselves, no percent sign, no empty segment and no dot-segment.
func isCanonical(p string) bool {
	for i := 0; i < len(p); i++ {
		c := p[i]
		if k := class[c]; k != unreserved && k != raw {
			return false
		}
		if c == '/' && i+1 < len(p) && (p[i+1] == '/' || p[i+1] == '.') {
			if p[i+1] == '/' {
				return false
			}
			// "/." starts a dot-segment only when the segment is "." or "..".
			rest := p[i+1:]
			if end := strings.IndexByte(rest, '/'); end >= 0 {
				rest = rest[:end]
			}
			if rest == "." || rest == ".." {
				return false
			}
		}
	}
	return true
}

// removeDotSegments removes "." and ".." segments and merges empty ones
// (repeated slashes); a path that ended in a dot-segment or a slash keeps a
// trailing slash.
func removeDotSegments(p string) string {
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case "", ".":
			trailing = last
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = last
		default:
			out = append(out, s)
			trailing = false
		}
	}
	n := "/" + strings.Join(out, "/")
	if trailing && len(out) > 0 {
		n += "/"
	}
	return n
}

func appendEscape(b []byte, c byte) []byte {
	const hex = "0123456789ABCDEF"
	return append(b, '%', hex[c>>4], hex[c&15])
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}

// Byte classes of a path.
const (
	encode     = iota // may not appear raw: percent-encoded
	unreserved        // RFC 3986 unreserved: decoded when encoded
	raw               // sub-delims, ":", "@", "/": kept as they are
	forbidden         // control bytes, space, "#": the request is refused
)

var class [256]byte

func init() {
	for i := range 256 {
		c := byte(i)
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', strings.IndexByte("-._~", c) >= 0:
			class[i] = unreserved
		case strings.IndexByte("!$&'()*+,;=:@/", c) >= 0:
			class[i] = raw
		case c <= ' ' || c == 0x7f || c == '#':
			class[i] = forbidden
		default:
			class[i] = encode // '%' is handled before its class is read
		}
	}
}

// SplitTarget splits an origin-form or absolute-form request target into
// host (empty for origin-form), path and raw query. The query is returned
// byte for byte as received.
func SplitTarget(target string) (host, path, query string, err error) {
	if len(target) > 0 && target[0] != '/' {
		// absolute-form (RFC 9112 3.2.2): scheme "://" authority path
		scheme, rest, ok := strings.Cut(target, "://")
		if !ok {
			return "", "", "", ErrBadTarget
		}
		if !strings.EqualFold(scheme, "http") && !strings.EqualFold(scheme, "https") {
			return "", "", "", errUnknownSchema
		}
		end := strings.IndexAny(rest, "/?")
		if end < 0 {
			host, target = rest, "/"
		} else {
			host, target = rest[:end], rest[end:]
			if target[0] == '?' {
				target = "/" + target
			}
		}
		if host == "" || strings.IndexByte(host, '@') >= 0 {
			return "", "", "", ErrBadTarget
		}
	}
	path, query, _ = strings.Cut(target, "?")
	for i := 0; i < len(query); i++ {
		if c := query[i]; c <= ' ' || c == 0x7f || c == '#' {
			return "", "", "", ErrBadByte
		}
	}
	return host, path, query, nil
}

// Host returns a Host header's name in the form routes match: lower case,
// without port and without a final dot. It refuses bytes a host may not
// hold.
func Host(h string) (string, error) {
	if h == "" {
		return "", nil
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(class[c] == unreserved || c == ':' || c == '[' || c == ']' || c == '%' || (class[c] == raw && c != '/' && c != '@')) {
			return "", ErrBadHost
		}
	}
	name := h
	if name[0] == '[' {
		end := strings.IndexByte(name, ']')
		if end < 0 {
			return "", ErrBadHost
		}
		rest := name[end+1:]
		if rest != "" && (rest[0] != ':' || !digits(rest[1:])) {
			return "", ErrBadHost
		}
		name = name[:end+1]
	} else if i := strings.IndexByte(name, ':'); i >= 0 {
		if !digits(name[i+1:]) {
			return "", ErrBadHost
		}
		name = name[:i]
	}
	name = strings.TrimSuffix(name, ".")
	if name == "" || strings.HasSuffix(name, ".") {
		return "", ErrBadHost // "." or an empty last label ("a..")
	}
	for i := 0; i < len(name); i++ {
		if 'A' <= name[i] && name[i] <= 'Z' {
			return strings.ToLower(name), nil
		}
	}
	return name, nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
