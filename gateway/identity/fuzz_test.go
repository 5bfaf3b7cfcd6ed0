package identity_test

import (
	"bufio"
	"errors"
	"net/netip"
	"net/textproto"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/kmsgate/kmsgate/gateway/core"
	"github.com/kmsgate/kmsgate/gateway/identity"
)

// mimeHeaders is core.Headers over header fields parsed by net/textproto,
// names canonical as the servers give them.
type mimeHeaders textproto.MIMEHeader

func (h mimeHeaders) Get(name string) string      { return textproto.MIMEHeader(h).Get(name) }
func (h mimeHeaders) Values(name string) []string { return textproto.MIMEHeader(h).Values(name) }
func (h mimeHeaders) All(yield func(name, value string) bool) {
	for k, vs := range h {
		for _, v := range vs {
			if !yield(k, v) {
				return
			}
		}
	}
}

// fold is a header name in lower case with "_" and "." taken for "-".
func fold(name string) string {
	return strings.NewReplacer("_", "-", ".", "-").Replace(strings.ToLower(name))
}

// FuzzHeaderSource checks the headers identity source on header blocks as
// a server parses them: from a peer outside --trusted-proxy no identity is
// taken, and the request is refused as spoofed exactly when it carries an
// identity header in any spelling (letter case, "_" or "." for "-");
// from a trusted peer the identity is X-Forwarded-User (or, without it,
// X-Forwarded-Email) with the email, preferred username and every
// comma-separated group of every X-Forwarded-Groups field, trimmed, none
// empty; without user and email there is no identity.
func FuzzHeaderSource(f *testing.F) {
	for _, c := range [][2]string{
		{"X-Forwarded-User: alice\r\nX-Forwarded-Email: alice@example.com\r\nX-Forwarded-Groups: a, b,,c\r\nX-Forwarded-Groups: d\r\n", "10.0.0.7"},
		{"X-Forwarded-Email: bob@example.com\r\nX-Forwarded-Preferred-Username: Bob\r\n", "::1"},
		{"X-Forwarded-User: mallory\r\n", "192.0.2.1"},
		{"X_Forwarded_User: mallory\r\n", "192.0.2.1"},
		{"x.forwarded.email: m@example.com\r\n", "192.0.2.1"},
		{"X-Forwarded-Groups: admin\r\n", "10.1.2.3"},
		{"Authorization: Bearer x\r\n", "192.0.2.1"},
		{"X-Forwarded-User: \r\nX-Forwarded-Email: e@x\r\n", "10.0.0.1"},
		{"X-Forwarded-User: a\r\nX-Forwarded-User: b\r\nX-Forwarded-Groups: ,\t, \r\n", "10.255.255.255"},
		{"X-Forwarded-User: alice\r\n", ""},
		{"X-Forwarded-User: alice\r\n", "::ffff:10.0.0.1"},
	} {
		f.Add(c[0], c[1])
	}
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	src := identity.NewHeaderSource(trusted)
	forwarded := map[string]bool{}
	for _, n := range identity.ForwardedHeaders {
		forwarded[fold(n)] = true
	}
	f.Fuzz(func(t *testing.T, block, peer string) {
		h, err := textproto.NewReader(bufio.NewReader(strings.NewReader(block + "\r\n\r\n"))).ReadMIMEHeader()
		if err != nil {
			return // no server would pass these fields on
		}
		addr, _ := netip.ParseAddr(peer)
		r := &core.Request{Headers: mimeHeaders(h), Addr: addr}
		id, err := src.Identify(r)
		if err != nil && strings.TrimSpace(err.Error()) == "" {
			t.Fatal("refused without a message")
		}
		inTrusted := addr.IsValid() && slices.ContainsFunc(trusted, func(p netip.Prefix) bool { return p.Contains(addr) })
		if !inTrusted {
			spoofed := false
			for name := range h {
				spoofed = spoofed || forwarded[fold(name)]
			}
			switch {
			case err == nil:
				t.Fatalf("peer %q outside the trusted proxies got the identity %+v", peer, id)
			case spoofed != errors.Is(err, identity.ErrSpoofed) || (!spoofed && !errors.Is(err, identity.ErrNoIdentity)):
				t.Fatalf("peer %q, identity header present %v: %v", peer, spoofed, err)
			}
			return
		}
		user, email := h.Get("X-Forwarded-User"), h.Get("X-Forwarded-Email")
		if user == "" && email == "" {
			if !errors.Is(err, identity.ErrNoIdentity) {
				t.Fatalf("no user and no email: %+v, %v; want ErrNoIdentity", id, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("trusted peer with user %q, email %q: %v", user, email, err)
		}
		want := identity.Identity{Subject: user, User: user, Email: email, Name: h.Get("X-Forwarded-Preferred-Username")}
		if want.Subject == "" {
			want.Subject = email
		}
		for _, g := range strings.FieldsFunc(strings.Join(h.Values("X-Forwarded-Groups"), ","), func(r rune) bool { return r == ',' }) {
			if g = strings.TrimSpace(g); g != "" {
				want.Groups = append(want.Groups, g)
			}
		}
		if !reflect.DeepEqual(id, want) {
			t.Fatalf("identity %+v, want %+v", id, want)
		}
	})
}

// FuzzIdentityKey checks that the assertion cache key tells identities
// apart: two identities (with audiences) get the same key exactly when
// every field, group and the audience are equal, so that no user is ever
// served another's cached assertion.
func FuzzIdentityKey(f *testing.F) {
	f.Add("alice", "alice", "a@x", "Alice", "g1,g2", "app", "alice", "alice", "a@x", "Alice", "g1,g2", "app")
	f.Add("a", "", "", "", "", "b", "", "", "", "", "", "ab")
	f.Add("1:a", "", "", "", "", "", "", "1:a", "", "", "", "")
	f.Add("x", "", "", "", "g,h", "", "x", "", "", "", "g", "h")
	f.Add("x", "", "", "", "1:g", "", "x", "", "", "", "", "")
	f.Fuzz(func(t *testing.T, sa, ua, ea, na, ga, auda, sb, ub, eb, nb, gb, audb string) {
		split := func(g string) []string {
			if g == "" {
				return nil
			}
			return strings.Split(g, ",")
		}
		a := identity.Identity{Subject: sa, User: ua, Email: ea, Name: na, Groups: split(ga)}
		b := identity.Identity{Subject: sb, User: ub, Email: eb, Name: nb, Groups: split(gb)}
		same := reflect.DeepEqual(a, b) && auda == audb
		if (a.Key(auda) == b.Key(audb)) != same {
			t.Fatalf("%+v for %q and %+v for %q: keys %q and %q", a, auda, b, audb, a.Key(auda), b.Key(audb))
		}
	})
}
