package identity

import (
	"context"
	"crypto/tls"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestGroupsFilter(t *testing.T) {
	groups := []string{"staff", "team-a", "admins", "team-b", "x-team-c"}
	for _, c := range []struct {
		yaml string
		want []string
	}{
		{"[admins, team-b, absent]", []string{"admins", "team-b"}},
		{"team-.*", []string{"team-a", "team-b"}}, // anchored: not x-team-c
		{"staff|admins", []string{"staff", "admins"}},
		{"[nope]", []string{}},
	} {
		var f GroupsFilter
		if err := yaml.Unmarshal([]byte(c.yaml), &f); err != nil {
			t.Fatal(err)
		}
		fn, err := f.Compile()
		if err != nil {
			t.Fatalf("%s: %v", c.yaml, err)
		}
		in := slices.Clone(groups)
		if got := fn(in); !slices.Equal(got, c.want) {
			t.Errorf("%s: %q, want %q", c.yaml, got, c.want)
		}
		if !slices.Equal(in, groups) {
			t.Errorf("%s: the identity's own groups changed: %q", c.yaml, in)
		}
	}
	if fn, err := (GroupsFilter{}).Compile(); fn != nil || err != nil {
		t.Errorf("zero filter: %v, %v; want no filter", fn != nil, err)
	}
	for _, bad := range []GroupsFilter{{Pattern: "("}, {Names: []string{}}, {Names: []string{"a", ""}}, {Names: []string{"a"}, Pattern: "b"}} {
		if _, err := bad.Compile(); err == nil || !strings.Contains(err.Error(), "groups-filter") {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	var f GroupsFilter
	if err := yaml.Unmarshal([]byte("{a: b}"), &f); err == nil {
		t.Error("a mapping was taken as a groups filter")
	}
}

func TestClaim(t *testing.T) {
	id := Identity{Subject: "s", User: "u", Email: "e@x", Groups: []string{"a", "b"}, Name: "n"}
	want := map[string]string{"sub": "s", "user": "u", "email": "e@x", "groups": "a,b", "name": "n", "other": ""}
	for claim, v := range want {
		if got := id.Claim(claim); got != v {
			t.Errorf("Claim(%q) = %q, want %q", claim, got, v)
		}
	}
}

// fakeRequest is a Request with a peer and X-Forwarded-For values.
type fakeRequest struct {
	peer netip.Addr
	xff  []string
}

func (f fakeRequest) Context() context.Context { return context.Background() }
func (f fakeRequest) Header(name string) string {
	if v := f.HeaderValues(name); len(v) > 0 {
		return v[0]
	}
	return ""
}
func (f fakeRequest) HeaderValues(name string) []string {
	if name == "X-Forwarded-For" {
		return f.xff
	}
	return nil
}
func (f fakeRequest) HasHeader([]string) bool   { return false }
func (f fakeRequest) Peer() netip.Addr          { return f.peer }
func (f fakeRequest) TLS() *tls.ConnectionState { return nil }

func TestClientAddr(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, c := range []struct {
		peer string
		xff  []string
		want string
	}{
		{"203.0.113.1", []string{"1.1.1.1"}, "203.0.113.1"},                       // untrusted peer: its chain is ignored
		{"10.0.0.1", nil, "10.0.0.1"},                                             // trusted peer, no chain
		{"10.0.0.1", []string{"198.51.100.7"}, "198.51.100.7"},                    // one hop
		{"10.0.0.1", []string{"1.1.1.1, 198.51.100.7, 10.0.0.2"}, "198.51.100.7"}, // the last untrusted
		{"10.0.0.1", []string{"1.1.1.1", "10.0.0.3 , 10.0.0.2"}, "1.1.1.1"},       // across values
		{"10.0.0.1", []string{"10.0.0.4, 10.0.0.2"}, "10.0.0.4"},                  // all trusted: the first
		{"10.0.0.1", []string{"::ffff:198.51.100.7"}, "198.51.100.7"},
	} {
		got, err := ClientAddr(fakeRequest{netip.MustParseAddr(c.peer), c.xff}, trusted)
		if err != nil || got != netip.MustParseAddr(c.want) {
			t.Errorf("peer %s, X-Forwarded-For %q: %s, %v; want %s", c.peer, c.xff, got, err, c.want)
		}
	}
	for _, bad := range [][]string{{"1.1.1.1, unknown"}, {"1.1.1.1:80"}, {""}, {"1.1.1.1,"}} {
		if _, err := ClientAddr(fakeRequest{netip.MustParseAddr("10.0.0.1"), bad}, trusted); err == nil || !strings.Contains(err.Error(), "X-Forwarded-For") {
			t.Errorf("X-Forwarded-For %q: %v", bad, err)
		}
	}
}
