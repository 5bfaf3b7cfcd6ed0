package header

import (
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// foldSeparators is the CGI/WSGI folding of a header name: "_" and "." as
// "-".
var foldSeparators = strings.NewReplacer("_", "-", ".", "-")

// FuzzNames checks the header name rules against independent definitions:
// ValidName and ValidValue agree with x/net's httpguts (RFC 9110 tokens and
// field values); Exact is ASCII case-insensitive equality, and SameName the
// same after "_" and "." are taken for "-" (strings.EqualFold on ASCII
// names; on others, non-ASCII bytes must be equal); Exact implies
// SameName; both are symmetric; the []byte forms agree with the string
// forms; and a Set finds a name exactly when one of its members does.
func FuzzNames(f *testing.F) {
	for _, c := range [][2]string{
		{"X-Kmsgate-Jwt-Assertion", "x_kmsgate.jwt-assertion"}, {"X-Forwarded-User", "X-Forwarded-User"},
		{"x-forwarded-user", "X_Forwarded_User"}, {"Content-Length", "Content_Length"}, {"a b", "a-b"},
		{"K", "\u212a"}, {"é", "É"}, {"", ""}, {"Host", "host\x00"}, {"a\tb", "a\x7fb"}, {"!#$%&'*+-.^_`|~", "x"},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, name, want string) {
		if got, ref := ValidName(name), httpguts.ValidHeaderFieldName(name); got != ref {
			t.Fatalf("ValidName(%q) = %v, httpguts says %v", name, got, ref)
		}
		if got, ref := ValidValue(name), httpguts.ValidHeaderFieldValue(name); got != ref {
			t.Fatalf("ValidValue(%q) = %v, httpguts says %v", name, got, ref)
		}
		exact, same := Exact(name, want), SameName(name, want)
		if Exact(want, name) != exact || SameName(want, name) != same {
			t.Fatalf("Exact or SameName of %q and %q is not symmetric", name, want)
		}
		if Exact([]byte(name), want) != exact || SameName([]byte(name), want) != same ||
			ValidName([]byte(name)) != ValidName(name) || ValidValue([]byte(name)) != ValidValue(name) {
			t.Fatalf("the []byte forms disagree with the string forms on %q, %q", name, want)
		}
		if exact && !same {
			t.Fatalf("Exact(%q, %q) but not SameName", name, want)
		}
		if !Exact(name, name) || !SameName(name, name) {
			t.Fatalf("%q is not the same name as itself", name)
		}
		if isASCII(name) && isASCII(want) {
			if ref := strings.EqualFold(name, want); exact != ref {
				t.Fatalf("Exact(%q, %q) = %v, strings.EqualFold says %v", name, want, exact, ref)
			}
			if ref := strings.EqualFold(foldSeparators.Replace(name), foldSeparators.Replace(want)); same != ref {
				t.Fatalf("SameName(%q, %q) = %v, folded EqualFold says %v", name, want, same, ref)
			}
		} else if same {
			for i := 0; i < len(name); i++ {
				if (name[i] >= 0x80 || want[i] >= 0x80) && name[i] != want[i] {
					t.Fatalf("SameName(%q, %q) although byte %d differs outside ASCII", name, want, i)
				}
			}
		}
		members := strings.Split(want, ",")
		set := NewSet(members...)
		anyExact, anySame := false, false
		for _, m := range members {
			anyExact = anyExact || Exact(name, m)
			anySame = anySame || SameName(name, m)
		}
		if set.Exact(name) != anyExact {
			t.Fatalf("Set%q.Exact(%q) = %v, want %v", members, name, set.Exact(name), anyExact)
		}
		m, ok := set.Variant(name)
		if ok != anySame || (ok && !SameName(name, m)) {
			t.Fatalf("Set%q.Variant(%q) = %q, %v; want a member it is a variant of: %v", members, name, m, ok, anySame)
		}
	})
}
