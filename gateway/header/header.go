// Package header holds the gateway's rules for header names: which names
// are valid, and when two names count as the same protected header.
package header

// SameName reports whether name is a variant of want: equal when letter
// case is ignored and "_" and "." are taken for "-", the ways CGI, WSGI and
// some proxies fold names. A protected header (the assertion, identity
// headers, X-Forwarded-*) is matched in every such variant, so that no
// spelling slips past a strip.
func SameName[T string | []byte](name T, want string) bool {
	if len(name) != len(want) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if fold[name[i]] != fold[want[i]] {
			return false
		}
	}
	return true
}

// Exact reports whether name is want apart from letter case, the only
// difference HTTP itself ignores.
func Exact[T string | []byte](name T, want string) bool {
	if len(name) != len(want) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if lower[name[i]] != lower[want[i]] {
			return false
		}
	}
	return true
}

// ValidName reports whether name is an RFC 9110 token, the only form a
// field name may take: no spaces, separators or control bytes.
func ValidName[T string | []byte](name T) bool {
	if len(name) == 0 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if !tchar[name[i]] {
			return false
		}
	}
	return true
}

// ValidValue reports whether v is a field value without control bytes
// other than horizontal tab (RFC 9110 5.5): no CR, LF or NUL.
func ValidValue[T string | []byte](v T) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

var fold, lower [256]byte
var tchar [256]bool

func init() {
	for i := range 256 {
		c := byte(i)
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
		if c == '_' || c == '.' {
			c = '-'
		}
		fold[i] = c
	}
	for c := '0'; c <= '9'; c++ {
		tchar[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		tchar[c] = true
		tchar[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		tchar[c] = true
	}
}

// Field is one header field: a name and a value.
type Field struct{ Name, Value string }

// Set is a fixed set of header names with fast lookups: a name is compared
// only with the members of its length.
type Set struct{ byLen map[int][]string }

// NewSet returns the set of names.
func NewSet(names ...string) Set {
	s := Set{byLen: map[int][]string{}}
	for _, n := range names {
		s.byLen[len(n)] = append(s.byLen[len(n)], n)
	}
	return s
}

// Exact reports whether name is in the set, ignoring letter case.
func (s Set) Exact(name string) bool {
	for _, m := range s.byLen[len(name)] {
		if Exact(name, m) {
			return true
		}
	}
	return false
}

// Variant reports whether name is a variant (SameName) of a member, and
// which member.
func (s Set) Variant(name string) (string, bool) {
	for _, m := range s.byLen[len(name)] {
		if SameName(name, m) {
			return m, true
		}
	}
	return "", false
}
