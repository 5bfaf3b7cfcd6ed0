package vault

import (
	"net/url"
	"strings"
	"testing"

	"github.com/kmsgate/kmsgate/backends/backendtest"
)

// FuzzParseURI checks the hashivault URI parser: no input panics; a refused
// URI gets ErrInvalidURI with a reason and never shows a credential planted
// in it; an accepted URI names a valid Transit key and a mount without
// empty, "." or ".." segments, and its canonical form
// hashivault://NAME?mount=MOUNT parses to the same name and mount.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"hashivault://jwt", "hashivault://jwt-signing.v2", "hashivault://My_Key", "hashivault://jwt/",
		"hashivault://jwt?mount=transit-prod", "hashivault://jwt?mount=/team/a/transit/",
		"hashivault:jwt", "hashivault://", "hashivault:///jwt", "hashivault://jwt/extra", "hashivault://user:pw@jwt",
		"hashivault://jwt:8200", "hashivault://jwt#frag", "hashivault://jwt?mount=", "hashivault://jwt?mount=a&mount=b",
		"hashivault://jwt?mount=a/../b", "hashivault://jwt?mount=a//b", "hashivault://jwt?namespace=x",
		"hashivault://-jwt", "hashivault://jwt.", "hashivault://j%20wt", "hashivault://jwt?mount=a;b", "hashivault://[::1]",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		for _, s := range append([]string{uri}, backendtest.WithSecret(uri)...) {
			u, err := url.Parse(s)
			if err != nil {
				continue // refused before the backend sees it (see backends.FuzzOpen)
			}
			name, mount, err := parseURI(u)
			if err != nil {
				backendtest.CheckRefusal(t, uri, s, err)
				continue
			}
			if !nameRE.MatchString(name) {
				t.Fatalf("%q: key name %q is not a Transit key name", s, name)
			}
			for _, seg := range strings.Split(mount, "/") {
				if seg == "" || seg == "." || seg == ".." || !mountSegmentRE.MatchString(seg) {
					t.Fatalf("%q: mount %q has the segment %q", s, mount, seg)
				}
			}
			canon := (&url.URL{Scheme: Scheme, Host: name, RawQuery: url.Values{"mount": {mount}}.Encode()}).String()
			cu, err := url.Parse(canon)
			if err != nil {
				t.Fatalf("%q: canonical form %q does not parse: %v", s, canon, err)
			}
			n2, m2, err := parseURI(cu)
			if err != nil || n2 != name || m2 != mount {
				t.Fatalf("%q parsed to %q %q, but its canonical form %q to %q %q, %v", s, name, mount, canon, n2, m2, err)
			}
		}
	})
}
