package backends

import (
	"context"
	"errors"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

// fuzzSecret is the credential FuzzOpen plants in URIs; no error or
// redacted URI may show it.
const fuzzSecret = "Fz9SecretMarker"

var fuzzSchemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*$`)

// withFuzzSecret returns uri with fuzzSecret as the password of its user
// info (when it starts with SCHEME://), as a query value, and as the
// password in an ?endpoint= URL, whose value Redact keeps.
func withFuzzSecret(uri string) []string {
	var out []string
	if i := strings.Index(uri, "://"); i >= 0 && fuzzSchemeRE.MatchString(uri[:i]) {
		out = append(out, uri[:i+3]+"kmsgate:"+fuzzSecret+"@"+uri[i+3:])
	}
	base, frag, hasFrag := strings.Cut(uri, "#")
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	for _, p := range []string{"token=" + fuzzSecret, "endpoint=https://kmsgate:" + fuzzSecret + "@kms.example.com", "endpoint=kmsgate:" + fuzzSecret + "@kms.example.com:443"} {
		v := base + sep + p
		if hasFrag {
			v += "#" + frag
		}
		out = append(out, v)
	}
	return out
}

// FuzzOpen checks the registry's dispatch of key URIs: no input panics; a
// refused URI gets ErrInvalidURI with a reason; an accepted one reaches the
// opener of its scheme (matched without regard to letter case, as URI
// schemes are) with the URI net/url parses; and neither an error nor
// Redact's form of a URI (nor Redact's form of that) ever shows a
// credential planted in it.
func FuzzOpen(f *testing.F) {
	const scheme = "fuzzkms"
	var got *url.URL
	Register(scheme, func(_ context.Context, u *url.URL, _ Options) (Backend, error) {
		got = u
		return nil, errors.New("opened")
	})
	f.Cleanup(func() {
		registryMu.Lock()
		delete(registry, scheme)
		registryMu.Unlock()
	})
	for _, s := range []string{
		"fuzzkms://key", "FUZZKMS:///alias/x?region=eu-west-1", "fuzzkms:opaque", "fuzzkms://h:99/p?mount=m&endpoint=http://127.0.0.1:1",
		"nosuch://x", "no-scheme-at-all", "://x", "fuzzkms://u:p@h/%zz", "fuzzkms://h:port/x", "fuzzkms://[::1/x",
		"fuzzkms://h/a b", "fuzzkms://h/\x7f", "hashivault://u:p@key?mount=transit&token=s3cret", "fuzzkms://h/#frag",
		"fuzzkms://h/?endpoint=https://u:pw@e:1/&endpoint=x", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		hasSecret := strings.Contains(strings.ToLower(uri), strings.ToLower(fuzzSecret))
		for _, s := range append([]string{uri}, withFuzzSecret(uri)...) {
			got = nil
			_, err := Open(context.Background(), s, Options{})
			if got != nil {
				if err == nil || err.Error() != "opened" {
					t.Fatalf("%q: the opener ran but Open returned %v", s, err)
				}
				want, perr := url.Parse(s)
				if perr != nil || !strings.EqualFold(want.Scheme, scheme) || got.String() != want.String() {
					t.Fatalf("%q: opener got %q (%v)", s, got, perr)
				}
			} else {
				if err == nil {
					t.Fatalf("%q: no error and no opener called", s)
				}
				msg := err.Error()
				if !errors.Is(err, ErrInvalidURI) {
					t.Fatalf("%q: refused with %q, not ErrInvalidURI", s, msg)
				}
				i := strings.LastIndex(msg, ErrInvalidURI.Error())
				if strings.TrimSpace(strings.TrimLeft(msg[i+len(ErrInvalidURI.Error()):], ": ")) == "" {
					t.Fatalf("%q: refused with %q, which gives no reason", s, msg)
				}
				if !hasSecret && strings.Contains(msg, fuzzSecret) {
					t.Fatalf("%q: the credential shows in the error %q", s, msg)
				}
			}
			r := Redact(s)
			if !hasSecret && strings.Contains(r, fuzzSecret) {
				t.Fatalf("Redact(%q) = %q shows the credential", s, r)
			}
			if again := Redact(r); !hasSecret && strings.Contains(again, fuzzSecret) {
				t.Fatalf("Redact(Redact(%q)) = %q shows the credential", s, again)
			}
		}
	})
}
