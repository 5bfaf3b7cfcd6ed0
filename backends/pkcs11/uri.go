package pkcs11

import (
	"encoding/hex"
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/kmsgate/kmsgate/backends"
)

// Scheme is the key URI scheme of this backend (RFC 7512).
const Scheme = "pkcs11"

// DefaultMaxSessions is how many PKCS#11 sessions one key URI keeps open at
// most when the URI has no x-max-sessions attribute: each concurrent
// signature holds one session for the length of its C_SignInit and C_Sign.
const DefaultMaxSessions = 16

// maxSessionsLimit bounds x-max-sessions.
const maxSessionsLimit = 1024

// URI is a parsed pkcs11: key URI. Path attributes select the token and the
// private keys; query attributes say how to reach them.
type URI struct {
	// Token, Serial, Manufacturer and Model match the token's CK_TOKEN_INFO
	// fields (blank-padding removed); empty matches any.
	Token, Serial, Manufacturer, Model string
	// SlotID, when HasSlotID, matches the slot the token is in.
	SlotID    uint
	HasSlotID bool
	// Object is the CKA_LABEL of the keys; with LabelPrefix, every key whose
	// label starts with Object (object=PREFIX*). HasObject is false when the
	// URI names the keys by id only.
	Object      string
	LabelPrefix bool
	HasObject   bool
	// ID, when HasID, is the CKA_ID the keys must have.
	ID    []byte
	HasID bool
	// ModulePath is the PKCS#11 library to load (module-path).
	ModulePath string
	// PINFile is the file holding the user PIN (pin-source).
	PINFile string
	// PINValue, when HasPINValue, is the user PIN given in the URI
	// (pin-value, for tests and --dev only).
	PINValue    string
	HasPINValue bool
	// MaxSessions bounds the sessions the backend opens (x-max-sessions).
	MaxSessions int
}

// pathAttrs are the RFC 7512 path attributes this backend reads.
var pathAttrs = []string{"token", "serial", "manufacturer", "model", "slot-id", "object", "id", "type"}

// queryAttrs are the query attributes this backend reads.
var queryAttrs = []string{"module-path", "pin-source", "pin-value", "x-max-sessions"}

// unsupported are RFC 7512 attributes that are valid but that this backend
// does not match on, with what to use instead.
var unsupported = map[string]string{
	"library-manufacturer": "select the library with module-path",
	"library-description":  "select the library with module-path",
	"library-version":      "select the library with module-path",
	"slot-description":     "select the token with token=, serial= or slot-id=",
	"slot-manufacturer":    "select the token with token=, serial= or slot-id=",
	"module-name":          "give the library's absolute path as module-path=",
}

// pctOnly matches an attribute value written entirely as percent-encoded
// bytes (id=%01%a2), RFC 7512's form of CKA_ID.
var pctOnly = regexp.MustCompile(`^(%[0-9A-Fa-f]{2})+$`)

// ParseURI parses a pkcs11: key URI:
//
//	pkcs11:token=T;object=LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/pin
//
// Path attributes (separated by ';'): token, serial, manufacturer, model and
// slot-id select the token; object (CKA_LABEL; a trailing unescaped '*'
// makes it a label prefix) and id (CKA_ID, in hex such as id=01 or
// percent-encoded such as id=%01) select the private keys; type, if given,
// must be private. Query attributes (separated by '&'): module-path
// (required), pin-source (a file holding the PIN: file:/path, file:///path
// or /path), pin-value (the PIN itself, accepted only when allowPINValue is
// true: tests and --dev), and x-max-sessions (the session pool's size,
// DefaultMaxSessions when absent). Anything else is refused with an error
// that names it.
func ParseURI(raw string, allowPINValue bool) (*URI, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: key %q: %w: %v", backends.Redact(raw), backends.ErrInvalidURI, err)
	}
	return parseURL(u, allowPINValue)
}

// parseURL is ParseURI for a URI url.Parse has already split.
func parseURL(u *url.URL, allowPINValue bool) (*URI, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("pkcs11: key %q: %w: %s (want pkcs11:token=T;object=LABEL?module-path=/path/lib.so&pin-source=file:/path/pin)",
			backends.Redact(u.String()), backends.ErrInvalidURI, fmt.Sprintf(format, args...))
	}
	if u.Scheme != Scheme {
		return nil, bad("scheme %q", u.Scheme)
	}
	if u.Opaque == "" {
		if u.Host != "" || u.Path != "" || u.User != nil {
			return nil, bad("a PKCS#11 URI has no // after pkcs11:")
		}
		return nil, bad("no path attributes")
	}
	if u.Fragment != "" {
		return nil, bad("a fragment (#…) is not allowed")
	}
	p := &URI{MaxSessions: DefaultMaxSessions}
	seen := map[string]bool{}
	for _, part := range strings.Split(u.Opaque, ";") {
		name, rawValue, ok := strings.Cut(part, "=")
		if !ok || name == "" {
			return nil, bad("path attribute %q is not NAME=VALUE", part)
		}
		if seen[name] {
			return nil, bad("path attribute %q is given twice", name)
		}
		seen[name] = true
		if hint, ok := unsupported[name]; ok {
			return nil, bad("attribute %q is not supported here: %s", name, hint)
		}
		value, err := url.PathUnescape(rawValue)
		if err != nil {
			return nil, bad("path attribute %q: %v", name, err)
		}
		switch name {
		case "token":
			p.Token = value
		case "serial":
			p.Serial = value
		case "manufacturer":
			p.Manufacturer = value
		case "model":
			p.Model = value
		case "slot-id":
			n, err := strconv.ParseUint(value, 10, 0)
			if err != nil {
				return nil, bad("slot-id %q is not a decimal number", value)
			}
			p.SlotID, p.HasSlotID = uint(n), true
		case "object":
			p.HasObject = true
			p.Object = value
			if strings.HasSuffix(rawValue, "*") {
				// An unescaped trailing '*' makes a prefix; %2A is a
				// literal star.
				p.Object, p.LabelPrefix = strings.TrimSuffix(value, "*"), true
			}
		case "id":
			id, err := parseID(rawValue)
			if err != nil {
				return nil, bad("%v", err)
			}
			p.ID, p.HasID = id, true
		case "type":
			if value != "private" {
				return nil, bad("type=%s: the keys that sign are private keys (type=private, or leave type out)", value)
			}
		default:
			return nil, bad("unknown path attribute %q (known: %s)", name, strings.Join(pathAttrs, ", "))
		}
	}
	if !p.HasObject && !p.HasID {
		return nil, bad("name the keys with object=LABEL (or object=PREFIX*) or id=HEX")
	}
	if err := parseQuery(p, u.RawQuery, allowPINValue, bad); err != nil {
		return nil, err
	}
	return p, nil
}

// parseQuery reads the query attributes into p.
func parseQuery(p *URI, rawQuery string, allowPINValue bool, bad func(string, ...any) error) error {
	seen := map[string]bool{}
	var pinSource string
	if rawQuery != "" {
		for _, part := range strings.Split(rawQuery, "&") {
			name, rawValue, ok := strings.Cut(part, "=")
			if !ok || name == "" {
				return bad("query attribute %q is not NAME=VALUE", part)
			}
			if seen[name] {
				return bad("query attribute %q is given twice", name)
			}
			seen[name] = true
			if hint, ok := unsupported[name]; ok {
				return bad("attribute %q is not supported here: %s", name, hint)
			}
			// RFC 7512 query values are percent-encoded; '+' is a plus.
			value, err := url.PathUnescape(rawValue)
			if err != nil {
				return bad("query attribute %q: %v", name, err)
			}
			switch name {
			case "module-path":
				p.ModulePath = value
			case "pin-source":
				pinSource = value
			case "pin-value":
				p.PINValue, p.HasPINValue = value, true
			case "x-max-sessions":
				n, err := strconv.Atoi(value)
				if err != nil || n < 1 || n > maxSessionsLimit {
					return bad("x-max-sessions %q: want a number from 1 to %d", value, maxSessionsLimit)
				}
				p.MaxSessions = n
			default:
				known := append([]string(nil), queryAttrs...)
				sort.Strings(known)
				return bad("unknown query attribute %q (known: %s)", name, strings.Join(known, ", "))
			}
		}
	}
	switch {
	case p.ModulePath == "":
		return bad("no module-path: give the PKCS#11 library, e.g. module-path=/usr/lib/softhsm/libsofthsm2.so")
	case !filepath.IsAbs(p.ModulePath):
		return bad("module-path %q is not an absolute path", p.ModulePath)
	}
	switch {
	case pinSource != "" && p.HasPINValue:
		return bad("both pin-source and pin-value: give one")
	case p.HasPINValue && !allowPINValue:
		return bad("pin-value puts the PIN in the key URI and is accepted only by tests and `serve --dev`: write the PIN to a file readable by kmsgate only and use pin-source=file:/path/to/pin")
	case p.HasPINValue && p.PINValue == "":
		return bad("pin-value is empty")
	case pinSource == "" && !p.HasPINValue:
		return bad("no PIN: add pin-source=file:/path/to/pin (a file holding the user PIN)")
	case pinSource != "":
		path, err := pinSourcePath(pinSource)
		if err != nil {
			return bad("%v", err)
		}
		p.PINFile = path
	}
	return nil
}

// pinSourcePath returns the file a pin-source names: file:/path,
// file:///path or an absolute path.
func pinSourcePath(s string) (string, error) {
	path := s
	if rest, ok := strings.CutPrefix(s, "file:"); ok {
		path = rest
		if after, ok := strings.CutPrefix(rest, "//"); ok {
			// file:///path (empty host) or file://localhost/path.
			host, p, _ := strings.Cut(after, "/")
			if host != "" && host != "localhost" {
				return "", fmt.Errorf("pin-source %q names host %q; want file:/path/to/pin", s, host)
			}
			path = "/" + p
		}
	} else if strings.Contains(s, ":") && !strings.HasPrefix(s, "/") {
		return "", fmt.Errorf("pin-source %q: only files are supported (file:/path/to/pin)", s)
	}
	if !filepath.IsAbs(path) || path == "/" {
		return "", fmt.Errorf("pin-source %q is not an absolute file path (file:/path/to/pin)", s)
	}
	return filepath.Clean(path), nil
}

// parseID decodes an id attribute: hex digits (id=01a2) or RFC 7512
// percent-encoded bytes (id=%01%a2).
func parseID(raw string) ([]byte, error) {
	if raw == "" {
		return nil, fmt.Errorf("id is empty: give the CKA_ID in hex (id=01)")
	}
	if pctOnly.MatchString(raw) {
		return hex.DecodeString(strings.ReplaceAll(raw, "%", ""))
	}
	id, err := hex.DecodeString(raw)
	if err != nil {
		return nil, fmt.Errorf("id %q: want the CKA_ID in hex (id=01a2) or percent-encoded (id=%%01%%a2)", raw)
	}
	return id, nil
}

// String returns the URI's path attributes as a pkcs11: URI, without the
// query (module, PIN): the name of the keys in logs and errors.
func (p *URI) String() string {
	var parts []string
	add := func(name, value string) { parts = append(parts, name+"="+escape(value)) }
	if p.Token != "" {
		add("token", p.Token)
	}
	if p.Serial != "" {
		add("serial", p.Serial)
	}
	if p.Manufacturer != "" {
		add("manufacturer", p.Manufacturer)
	}
	if p.Model != "" {
		add("model", p.Model)
	}
	if p.HasSlotID {
		parts = append(parts, "slot-id="+strconv.FormatUint(uint64(p.SlotID), 10))
	}
	if p.HasObject {
		o := escape(p.Object)
		if p.LabelPrefix {
			o += "*"
		}
		parts = append(parts, "object="+o)
	}
	if p.HasID {
		parts = append(parts, "id="+hex.EncodeToString(p.ID))
	}
	return Scheme + ":" + strings.Join(parts, ";")
}

// escape percent-encodes what may not appear in a path attribute value.
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', strings.IndexByte("-._~:[]@!$'()+,=&", c) >= 0:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// VersionID names one key of a URI: "object=LABEL;id=HEX" (";id=" left out
// when the key has no CKA_ID), the path attributes that select exactly that
// key on its token.
func VersionID(label string, id []byte) string {
	v := "object=" + escape(label)
	if len(id) > 0 {
		v += ";id=" + hex.EncodeToString(id)
	}
	return v
}
