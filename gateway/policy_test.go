package gateway_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/kmsgate/kmsgate/gateway"
)

// policyRoutes are the routes of the policy tests: an admin app for the
// admins group (never mallory) with claim headers and a groups filter, an
// open app that gets no assertion, an office app for clients of one
// network (as a trusted proxy in front reports them), and a catch-all
// under the default policy (example.com users).
func policyRoutes(web, admin string) gateway.ProxyConfig {
	no := false
	return gateway.ProxyConfig{
		Upstream: web, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32"),
		Policy: gateway.MustParsePolicy("allow: {domain: {is: example.com}}"),
		Routes: []gateway.Route{
			{Host: "admin.example", Upstream: admin, Name: "admin", Policy: gateway.MustParsePolicy(`
allow: {groups: {has: admins}}
deny: {email: {is: mallory@example.com}}`),
				ClaimHeaders: map[string]string{"email": "X-Kmsgate-Claim-Email", "groups": "X-Kmsgate-Claim-Groups"},
				GroupsFilter: gateway.GroupsFilter{Names: []string{"admins", "ops"}}},
			{Path: "/open/", Upstream: web, Policy: anyone, PassIdentityHeaders: &no, ClaimHeaders: map[string]string{"user": "X-Kmsgate-Claim-User"}},
			{Path: "/office/", Upstream: web, Policy: gateway.MustParsePolicy("allow: {client: {in: [192.0.2.0/24]}}")},
		},
	}
}

// who is a user's identity headers, as the trusted proxy in front sends them.
func who(user, email, groups string) string {
	return "X-Forwarded-User: " + user + "\r\nX-Forwarded-Email: " + email + "\r\nX-Forwarded-Groups: " + groups + "\r\n"
}

// TestProxyPolicy: a route's policy lets through whom it allows, with the
// claim headers and the filtered groups; everyone else gets 403 (a page
// for a browser, JSON otherwise), reaches no upstream and costs no
// signature; client copies of claim headers never reach an app; the
// decisions are counted by route and logged.
func TestProxyPolicy(t *testing.T) {
	web, admin := newUpstream(t, nil), newUpstream(t, nil)
	e := newProxyEnv(t, policyRoutes(web.URL, admin.URL))
	spoof := "X-Kmsgate-Claim-Email: root@example.com\r\nx_kmsgate_claim_groups: admins\r\nX-Kmsgate-Claim-User: root\r\n"

	// alice is an admin: through, with her claims as headers.
	resp, _ := rawResponse(t, e.addr, "GET /x HTTP/1.1\r\nHost: admin.example\r\n"+spoof+who("alice", "Alice@Example.com", "dev,admins,ops,payroll")+"\r\n")
	if resp.StatusCode != 200 || admin.count() != 1 {
		t.Fatalf("alice: %s, %d at the admin app", resp.Status, admin.count())
	}
	r := admin.last(t)
	if got := r.Header.Values("X-Kmsgate-Claim-Email"); len(got) != 1 || got[0] != "Alice@Example.com" {
		t.Errorf("email claim header %q", got)
	}
	if got := r.Header.Values("X-Kmsgate-Claim-Groups"); len(got) != 1 || got[0] != "admins,ops" {
		t.Errorf("groups claim header %q, want the filtered admins,ops", got)
	}
	for k := range r.Header {
		if strings.Contains(strings.ToLower(k), "claim") && k != "X-Kmsgate-Claim-Email" && k != "X-Kmsgate-Claim-Groups" {
			t.Errorf("client header %s reached the app", k)
		}
	}
	c := assertionOf(t, e, r, gateway.DefaultAssertionHeader)
	if g, _ := c["groups"].([]any); len(g) != 2 || g[0] != "admins" || g[1] != "ops" {
		t.Errorf("assertion groups %v, want the filtered [admins ops]", c["groups"])
	}
	signs := e.fake.Signs.Load()

	// bob is no admin; mallory is, but denied. Neither reaches the app,
	// and no signature is made for them.
	for _, c := range []struct{ name, who, accept, wantType, wantBody string }{
		{"bob", who("bob", "bob@example.com", "dev"), "application/json", "application/json", `"code":"forbidden"`},
		{"bob in a browser", who("bob", "bob@example.com", "dev"), "text/html,application/xhtml+xml,*/*;q=0.8", "text/html; charset=utf-8", "<h1>403 Forbidden</h1>"},
		{"bob, html refused", who("bob", "bob@example.com", "dev"), "text/html;q=0, application/json", "application/json", `"code":"forbidden"`},
		{"mallory", who("mallory", "MALLORY@example.com", "admins"), "*/*", "application/json", `"code":"forbidden"`},
	} {
		resp, body := rawResponse(t, e.addr, "GET /x HTTP/1.1\r\nHost: admin.example\r\nAccept: "+c.accept+"\r\n"+c.who+"\r\n")
		if resp.StatusCode != 403 || resp.Header.Get("Content-Type") != c.wantType || !strings.Contains(string(body), c.wantBody) || resp.Header.Get("Vary") != "Accept" {
			t.Errorf("%s: %s %q %q", c.name, resp.Status, resp.Header.Get("Content-Type"), body)
		}
	}
	if admin.count() != 1 || e.fake.Signs.Load() != signs {
		t.Fatalf("refused requests: %d at the admin app, %d signatures", admin.count()-1, e.fake.Signs.Load()-signs)
	}

	// The open route passes anyone with no assertion and no signature;
	// claim headers from the client are stripped there too.
	if st := raw(t, e.addr, "GET /open/a HTTP/1.1\r\nHost: web.example\r\n"+spoof+who("zed", "zed@else.org", "")+"\r\n"); !strings.HasPrefix(st, "200") {
		t.Fatalf("open route: %s", st)
	}
	r = web.last(t)
	if r.Header.Get(gateway.DefaultAssertionHeader) != "" || r.Header.Get("X-Kmsgate-Claim-Email") != "" || r.Header.Get("X-Kmsgate-Claim-Groups") != "" {
		t.Errorf("open route got %v", r.Header)
	}
	if got := r.Header.Values("X-Kmsgate-Claim-User"); len(got) != 1 || got[0] != "zed" {
		t.Errorf("open route user claim %q, want zed", got)
	}
	if e.fake.Signs.Load() != signs {
		t.Error("a route without assertions signed one")
	}

	// The office route judges the client the trusted proxy reports.
	for xff, want := range map[string]string{"192.0.2.44": "200", "198.51.100.1": "403", "192.0.2.44, 198.51.100.1": "403", "not-an-ip": "400"} {
		st := raw(t, e.addr, "GET /office/ HTTP/1.1\r\nHost: web.example\r\nX-Forwarded-For: "+xff+"\r\n"+who("carol", "carol@x.org", "")+"\r\n")
		if !strings.HasPrefix(st, want) {
			t.Errorf("office from %s: %s, want %s", xff, st, want)
		}
	}

	// The catch-all takes the default policy.
	if st := raw(t, e.addr, "GET / HTTP/1.1\r\nHost: web.example\r\n"+who("dan", "dan@example.com", "")+"\r\n"); !strings.HasPrefix(st, "200") {
		t.Errorf("default policy, example.com: %s", st)
	}
	if st := raw(t, e.addr, "GET / HTTP/1.1\r\nHost: web.example\r\n"+who("erin", "erin@example.org", "")+"\r\n"); !strings.HasPrefix(st, "403") {
		t.Errorf("default policy, example.org: %s", st)
	}

	metrics := scrape(t, e)
	for _, want := range []string{
		`kmsgate_policy_decisions_total{decision="allow",route="admin"} 1`,
		`kmsgate_policy_decisions_total{decision="not-allowed",route="admin"} 3`,
		`kmsgate_policy_decisions_total{decision="deny",route="admin"} 1`,
		`kmsgate_policy_decisions_total{decision="allow",route="*/office/"} 1`,
		`kmsgate_policy_decisions_total{decision="not-allowed",route="--upstream"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	logs := e.logs.String()
	for _, want := range []string{`"route":"admin","decision":"deny"`, `"route":"admin","decision":"allow"`, `"route":"*/open/","decision":"allow"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("request log lacks %s", want)
		}
	}
}

// TestForwardAuthPolicy: forward-auth judges the original request
// (X-Forwarded-Host with X-Forwarded-Uri, X-Original-Uri or the path after
// /v1/auth) by the policy of the route it matches, and answers with that
// route's identity headers.
func TestForwardAuthPolicy(t *testing.T) {
	web, admin := newUpstream(t, nil), newUpstream(t, nil)
	e := newProxyEnv(t, policyRoutes(web.URL, admin.URL))
	auth := func(path, host, uriHeader, uri, ident string) (*http.Response, []byte) {
		extra := ""
		if uriHeader != "" {
			extra = uriHeader + ": " + uri + "\r\n"
		}
		return rawResponse(t, e.addr, "GET "+path+" HTTP/1.1\r\nHost: gw\r\nX-Forwarded-Host: "+host+"\r\n"+extra+ident+"\r\n")
	}
	alice, bob := who("alice", "alice@example.com", "admins,dev"), who("bob", "bob@example.com", "dev")
	resp, _ := auth("/v1/auth", "admin.example", "X-Forwarded-Uri", "/x?y=1", alice)
	if resp.StatusCode != 200 || resp.Header.Get("X-Kmsgate-Claim-Groups") != "admins" || resp.Header.Get("X-Kmsgate-Claim-Email") != "alice@example.com" {
		t.Fatalf("alice: %s %v", resp.Status, resp.Header)
	}
	c := assertionOf(t, e, &http.Request{Header: resp.Header}, gateway.DefaultAssertionHeader)
	if c["aud"].([]string)[0] != "admin.example" {
		t.Errorf("aud %v", c["aud"])
	}
	signs := e.fake.Signs.Load()
	if resp, body := auth("/v1/auth", "admin.example", "X-Original-Uri", "/x", bob); resp.StatusCode != 403 || !strings.Contains(string(body), "forbidden") {
		t.Errorf("bob: %s %s", resp.Status, body)
	}
	if e.fake.Signs.Load() != signs {
		t.Error("a refused forward-auth request was signed for")
	}
	// The open route: through, without an assertion.
	if resp, _ := auth("/v1/auth", "web.example", "X-Original-Uri", "/open/doc", bob); resp.StatusCode != 200 || resp.Header.Get(gateway.DefaultAssertionHeader) != "" || resp.Header.Get("X-Kmsgate-Claim-User") != "bob" {
		t.Errorf("open route: %s %v", resp.Status, resp.Header)
	}
	// Envoy ext_authz: the original path follows /v1/auth.
	if resp, _ := auth("/v1/auth/office/", "web.example", "", "", bob); resp.StatusCode != 403 {
		t.Errorf("office route by path suffix, bob from 127.0.0.1: %s", resp.Status)
	}
	// The path is normalized by the one path rule before matching: a
	// dot-segment cannot step out of the open route into another.
	if resp, _ := auth("/v1/auth", "web.example", "X-Forwarded-Uri", "/open/../office/", bob); resp.StatusCode != 403 {
		t.Errorf("dot-segments: %s", resp.Status)
	}
	if resp, _ := auth("/v1/auth", "web.example", "X-Forwarded-Uri", "/open%2F..%2Foffice/", bob); resp.StatusCode != 400 {
		t.Errorf("encoded slashes: %s", resp.Status)
	}
	if resp, _ := auth("/v1/auth", "web.example", "X-Forwarded-Uri", "/a b", bob); resp.StatusCode != 400 {
		t.Errorf("malformed URI: %s", resp.Status)
	}
}

// TestForwardAuthNoPolicy: without a default policy, a forward-auth
// request that matches no route is refused, and a gateway whose
// forward-auth could pass nothing does not start.
func TestForwardAuthNoPolicy(t *testing.T) {
	admin := newUpstream(t, nil)
	pc := policyRoutes("", admin.URL)
	pc.Routes = pc.Routes[:1]
	pc.Policy = gateway.PolicySpec{}
	e := newProxyEnv(t, pc)
	if e.srv == nil {
		t.Fatal("no server")
	}
	resp, body := rawResponse(t, e.addr, "GET /v1/auth HTTP/1.1\r\nHost: gw\r\nX-Forwarded-Host: other.example\r\n"+who("alice", "alice@example.com", "admins")+"\r\n")
	if resp.StatusCode != 403 || !strings.Contains(string(body), "no_policy") {
		t.Errorf("unmatched forward-auth: %s %s", resp.Status, body)
	}
	resp, _ = rawResponse(t, e.addr, "GET /v1/auth HTTP/1.1\r\nHost: gw\r\nX-Forwarded-Host: admin.example\r\n"+who("alice", "alice@example.com", "admins")+"\r\n")
	if resp.StatusCode != 200 {
		t.Errorf("matched forward-auth: %s", resp.Status)
	}
}
