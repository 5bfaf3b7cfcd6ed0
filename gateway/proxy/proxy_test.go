package proxy

import (
	"net/netip"
	"net/url"
	"testing"

	"github.com/kmsgate/kmsgate/gateway/header"
	"github.com/kmsgate/kmsgate/gateway/route"
)

func TestPlanDrop(t *testing.T) {
	rt := &route.Route{Header: "X-Pomerium-Jwt-Assertion", Target: &url.URL{Scheme: "http", Host: "app:80"}}
	rules := &Rules{Owned: []string{"X-Kmsgate-Jwt-Assertion", "X-Pomerium-Jwt-Assertion", "X-Kmsgate-Claim-Email"}, Trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	rules.Prepare()
	values := func(h map[string][]string) func(string) []string { return func(n string) []string { return h[n] } }
	tok := []header.Field{{Name: rt.Header, Value: "tok"}}
	conn := map[string][]string{"Connection": {"keep-alive, X-Secret", "close"}}
	for _, c := range []struct {
		peer, name string
		oidc, drop bool
	}{
		{"10.1.1.1", "Accept", false, false},
		{"10.1.1.1", "X-Secret", false, true},
		{"10.1.1.1", "x-secret", false, true},
		{"10.1.1.1", "Keep-Alive", false, true},
		{"10.1.1.1", "Te", false, true},
		{"10.1.1.1", "Trailer", false, true},
		{"10.1.1.1", "Upgrade", false, true},
		{"10.1.1.1", "X_Pomerium_Jwt_Assertion", false, true},
		{"10.1.1.1", "x.kmsgate.jwt.assertion", false, true},
		{"10.1.1.1", "X-Forwarded-For", false, true},
		{"10.1.1.1", "X_Real_Ip", false, true},
		{"10.1.1.1", "X-Forwarded-User", false, false},
		{"10.1.1.1", "X_Forwarded_User", false, true},
		{"192.0.2.1", "X-Forwarded-User", false, true},
		{"192.0.2.1", "X-Forwarded-Email", false, true},
		{"10.1.1.1", "Authorization", false, false},
		{"10.1.1.1", "Authorization", true, true},
		{"10.1.1.1", "Transfer_Encoding", false, true},
		{"10.1.1.1", "Content_Length", false, true},
		{"10.1.1.1", "Content-Length", false, false},
		{"10.1.1.1", "X-Kmsgate-Claim-Email", false, true},
		{"192.0.2.1", "x_kmsgate_claim_email", false, true},
	} {
		p := rules.NewPlan(rt, "/a", "", Client{Host: "h", Peer: netip.MustParseAddr(c.peer), Values: values(conn)}, tok, consumed(c.oidc), "", false)
		if got := p.Drop(c.name); got != c.drop {
			t.Errorf("peer %s, oidc %v: Drop(%q) = %v, want %v", c.peer, c.oidc, c.name, got, c.drop)
		}
	}
	xff := map[string][]string{"X-Forwarded-For": {"1.2.3.4", "5.6.7.8"}}
	for peer, want := range map[string]string{"10.1.1.1": "1.2.3.4, 5.6.7.8, 10.1.1.1", "192.0.2.1": "192.0.2.1"} {
		p := rules.NewPlan(rt, "/a", "", Client{Host: "h", Peer: netip.MustParseAddr(peer), Values: values(xff)}, tok, 0, "", false)
		if got := p.Set()[0]; got.Name != "X-Forwarded-For" || got.Value != want {
			t.Errorf("peer %s: %v, want %s", peer, got, want)
		}
	}
	p := rules.NewPlan(rt, "/a", "", Client{Peer: netip.MustParseAddr("10.1.1.1"), Values: values(nil)}, tok, 0, "", true)
	if set := p.Set(); len(set) != 6 || set[3].Name != "X-Pomerium-Jwt-Assertion" || set[5].Value != "websocket" {
		t.Errorf("websocket plan sets %v", set)
	}
}

func consumed(oidc bool) Consumed {
	if oidc {
		return ConsumedAuthorization
	}
	return 0
}
