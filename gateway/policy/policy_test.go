package policy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/kmsgate/kmsgate/gateway/identity"
)

func compile(t *testing.T, text string) *Policy {
	t.Helper()
	s, err := ParseSpec(text)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compile(s)
	if err != nil {
		t.Fatalf("%s: %v", text, err)
	}
	return p
}

var (
	alice  = identity.Identity{Subject: "u-1", User: "alice", Email: "Alice@Example.COM", Groups: []string{"staff", "admins"}}
	bob    = identity.Identity{Subject: "u-2", User: "bob", Email: "bob@other.org", Groups: []string{"Staff"}}
	carol  = identity.Identity{Subject: "u-3", User: "carol", Email: "carol@sub.example.com"}
	nomail = identity.Identity{Subject: "u-4", User: "dave"}
)

// TestDecide is the table of the policy language: every criterion and
// operator, nesting, deny over allow, empty groups, and the letter case of
// emails and domains (ignored) and of users, subjects and groups (kept).
func TestDecide(t *testing.T) {
	local := netip.MustParseAddr("10.1.2.3")
	public := netip.MustParseAddr("203.0.113.9")
	for _, c := range []struct {
		name, policy string
		id           identity.Identity
		client       netip.Addr
		want         Decision
	}{
		{"any", "allow: any-authenticated", nomail, public, Allow},
		{"user is", "allow: {user: {is: alice}}", alice, public, Allow},
		{"user is, other", "allow: {user: {is: alice}}", bob, public, NotAllowed},
		{"user is, case kept", "allow: {user: {is: Alice}}", alice, public, NotAllowed},
		{"user in", "allow: {user: {in: [bob, carol]}}", carol, public, Allow},
		{"sub is", "allow: {sub: {is: u-2}}", bob, public, Allow},
		{"sub in, none", "allow: {sub: {in: [u-8, u-9]}}", bob, public, NotAllowed},
		{"email is, case ignored", "allow: {email: {is: alice@example.com}}", alice, public, Allow},
		{"email in, case ignored", "allow: {email: {in: [x@y.z, BOB@OTHER.ORG]}}", bob, public, Allow},
		{"email, none on identity", "allow: {email: {is: dave@example.com}}", nomail, public, NotAllowed},
		{"domain is, case ignored", "allow: {domain: {is: EXAMPLE.com}}", alice, public, Allow},
		{"domain is not a suffix match", "allow: {domain: {is: example.com}}", carol, public, NotAllowed},
		{"domain in", "allow: {domain: {in: [sub.example.com, other.org]}}", carol, public, Allow},
		{"domain, no email", "allow: {domain: {is: example.com}}", nomail, public, NotAllowed},
		{"groups has", "allow: {groups: {has: admins}}", alice, public, Allow},
		{"groups has, case kept", "allow: {groups: {has: staff}}", bob, public, NotAllowed},
		{"groups has, empty groups", "allow: {groups: {has: staff}}", carol, public, NotAllowed},
		{"groups any-of", "allow: {groups: {any-of: [x, admins]}}", alice, public, Allow},
		{"groups any-of, none", "allow: {groups: {any-of: [x, y]}}", alice, public, NotAllowed},
		{"groups all-of", "allow: {groups: {all-of: [admins, staff]}}", alice, public, Allow},
		{"groups all-of, one missing", "allow: {groups: {all-of: [admins, staff, x]}}", alice, public, NotAllowed},
		{"groups all-of, empty groups", "allow: {groups: {all-of: [staff]}}", carol, public, NotAllowed},
		{"client in", "allow: {client: {in: [10.0.0.0/8]}}", bob, local, Allow},
		{"client in, outside", "allow: {client: {in: [10.0.0.0/8, 192.168.0.0/16]}}", bob, public, NotAllowed},
		{"client is, address", "allow: {client: {is: 203.0.113.9}}", bob, public, Allow},
		{"client is, 4-in-6 client", "allow: {client: {is: 10.0.0.0/8}}", bob, netip.MustParseAddr("::ffff:10.9.9.9"), Allow},
		{"client, unknown address", "allow: {client: {in: [0.0.0.0/0]}}", bob, netip.Addr{}, NotAllowed},
		{"and", "allow: {and: [{domain: {is: example.com}}, {groups: {has: admins}}]}", alice, public, Allow},
		{"and, one false", "allow: {and: [{domain: {is: example.com}}, {groups: {has: nope}}]}", alice, public, NotAllowed},
		{"or", "allow: {or: [{user: {is: x}}, {user: {is: bob}}]}", bob, public, Allow},
		{"or, none", "allow: {or: [{user: {is: x}}, {user: {is: y}}]}", bob, public, NotAllowed},
		{"not", "allow: {not: {domain: {is: other.org}}}", alice, public, Allow},
		{"not, matched", "allow: {not: {domain: {is: other.org}}}", bob, public, NotAllowed},
		{"nested", "allow: {or: [{and: [{domain: {is: example.com}}, {not: {groups: {has: admins}}}]}, {client: {in: [10.0.0.0/8]}}]}", alice, public, NotAllowed},
		{"nested, second branch", "allow: {or: [{and: [{domain: {is: example.com}}, {not: {groups: {has: admins}}}]}, {client: {in: [10.0.0.0/8]}}]}", alice, local, Allow},
		{"deny wins over allow", "{allow: any-authenticated, deny: {email: {is: ALICE@example.com}}}", alice, public, Deny},
		{"deny wins over a matching allow", "{allow: {groups: {has: admins}}, deny: {client: {in: [203.0.113.0/24]}}}", alice, public, Deny},
		{"deny not matched", "{allow: {groups: {has: admins}}, deny: {client: {in: [203.0.113.0/24]}}}", alice, local, Allow},
		{"deny not matched, allow not either", "{allow: {groups: {has: admins}}, deny: {user: {is: root}}}", bob, local, NotAllowed},
	} {
		p := compile(t, c.policy)
		id := c.id
		if got := p.Decide(&Input{Identity: &id, Client: c.client}); got != c.want {
			t.Errorf("%s: %s for %s (%s): %s, want %s", c.name, c.policy, c.id.User, c.client, got, c.want)
		}
	}
}

func TestUsesClient(t *testing.T) {
	if compile(t, "allow: {user: {is: a}}").UsesClient() {
		t.Error("a policy without client rules uses the client address")
	}
	if !compile(t, "{allow: any-authenticated, deny: {not: {client: {in: [10.0.0.0/8]}}}}").UsesClient() {
		t.Error("a deny client rule under not is not noticed")
	}
}

// TestCompileRefused: each mistake is refused with where it is and what
// was wrong.
func TestCompileRefused(t *testing.T) {
	for _, c := range []struct{ policy, want string }{
		{"deny: {user: {is: a}}", "no allow"},
		{"allow: anyone", `"anyone": want any-authenticated or a rule`},
		{"allow: {emial: {is: a@b.c}}", `allow.emial (line 1): unknown rule "emial"`},
		{"allow:\n  or:\n    - user: {is: a}\n    - grups: {has: b}", `allow.or[2].grups (line 4): unknown rule "grups"`},
		{"allow: {user: {is: a}, email: {is: b@c.d}}", "a mapping with 2 keys"},
		{"allow: [{user: {is: a}}]", "got a list"},
		{"allow: {and: []}", "allow.and (line 1): want a non-empty list of rules"},
		{"allow: {or: {user: {is: a}}}", "want a non-empty list"},
		{"allow: {not: [{user: {is: a}}]}", "allow.not (line 1): want one rule"},
		{"allow: {user: alice}", "want a mapping with one of is, in"},
		{"allow: {user: {has: alice}}", "want a mapping with one of is, in"},
		{"allow: {groups: {is: admins}}", "one of has, any-of, all-of"},
		{"allow: {groups: {any_of: [a]}}", "one of has, any-of, all-of"},
		{"allow: {groups: {all-of: []}}", "allow.groups.all-of (line 1): want a non-empty list of values"},
		{"allow: {user: {in: [a, \"\"]}}", "want non-empty values"},
		{"allow: {user: {is: }}", "want one non-empty value"},
		{"allow: {email: {is: example.com}}", `"example.com" is not an email address`},
		{"allow: {domain: {is: '@example.com'}}", "is not a domain name"},
		{"allow: {client: {in: [10.0.0.0/33]}}", "is not an IP address or CIDR prefix"},
		{"allow: {client: {in: [10.1.0.0/8]}}", "did you mean 10.0.0.0/8"},
		{"allow: any-authenticated\nextra: 1", `unknown key "extra"`},
		{"[allow]", "want a mapping with allow"},
	} {
		s, err := ParseSpec(c.policy)
		if err == nil {
			_, err = Compile(s)
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.policy, err, c.want)
		}
	}
	if _, err := Compile(Spec{}); err == nil {
		t.Error("the zero Spec compiled")
	}
}

// BenchmarkDecide measures a five-rule policy on an identity with 20
// groups; the gateway's cost per request is BenchmarkFastPrepare's.
func BenchmarkDecide(b *testing.B) {
	p, err := Compile(MustParseSpec(`
allow:
  and:
    - domain: {is: example.com}
    - groups: {any-of: [admins, sre, dev]}
    - not: {email: {in: [mallory@example.com, eve@example.com]}}
    - client: {in: [127.0.0.0/8, 10.0.0.0/8]}
deny:
  user: {is: root}
`))
	if err != nil {
		b.Fatal(err)
	}
	id := identity.Identity{User: "alice", Email: "alice@example.com"}
	for i := range 19 {
		id.Groups = append(id.Groups, "team-"+string(rune('a'+i)))
	}
	id.Groups = append(id.Groups, "dev")
	in := &Input{Identity: &id, Client: netip.MustParseAddr("10.0.0.1")}
	for b.Loop() {
		if p.Decide(in) != Allow {
			b.Fatal("refused")
		}
	}
}
