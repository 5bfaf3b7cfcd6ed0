package backendtest

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/kmsgate/kmsgate/backends"
)

// Secret is the credential the key URI fuzz targets plant in a URI (see
// WithSecret); no error message may show it.
const Secret = "Fz9SecretMarker"

// schemeRE is a URI scheme (RFC 3986 3.1).
var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*$`)

// WithSecret returns variants of a key URI that carry Secret where a
// credential could sit: as the password of user info after "SCHEME://"
// (none when the URI does not start so) and as the value of a query
// parameter "token".
func WithSecret(uri string) []string {
	var out []string
	if i := strings.Index(uri, "://"); i >= 0 && schemeRE.MatchString(uri[:i]) {
		out = append(out, uri[:i+3]+"kmsgate:"+Secret+"@"+uri[i+3:])
	}
	base, frag, hasFrag := strings.Cut(uri, "#")
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	v := base + sep + "token=" + Secret
	if hasFrag {
		v += "#" + frag
	}
	return append(out, v)
}

// CheckRefusal fails the test unless err is a clear refusal of a key URI: an
// ErrInvalidURI with a reason after it, and without Secret in the message
// unless the fuzzed input itself held it.
func CheckRefusal(t testing.TB, input, uri string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%q: no error", uri)
	}
	msg := err.Error()
	if !errors.Is(err, backends.ErrInvalidURI) {
		t.Fatalf("%q: refused with %q, which is not ErrInvalidURI", uri, msg)
	}
	sentinel := backends.ErrInvalidURI.Error()
	i := strings.LastIndex(msg, sentinel)
	if reason := strings.TrimLeft(msg[i+len(sentinel):], ": "); strings.TrimSpace(reason) == "" {
		t.Fatalf("%q: refused with %q, which gives no reason", uri, msg)
	}
	CheckNoSecret(t, input, uri, msg)
}

// CheckNoSecret fails the test if text shows Secret although the fuzzed
// input did not hold it.
func CheckNoSecret(t testing.TB, input, uri, text string) {
	t.Helper()
	if strings.Contains(text, Secret) && !strings.Contains(strings.ToLower(input), strings.ToLower(Secret)) {
		t.Fatalf("%q: the credential in the URI shows in %q", uri, text)
	}
}
