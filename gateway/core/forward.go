package core

import (
	"errors"
	"net/http"
	"strings"

	"github.com/kmsgate/kmsgate/gateway/audit"
	"github.com/kmsgate/kmsgate/gateway/header"
	"github.com/kmsgate/kmsgate/gateway/identity"
	"github.com/kmsgate/kmsgate/gateway/policy"
	"github.com/kmsgate/kmsgate/gateway/proxy"
	"github.com/kmsgate/kmsgate/gateway/route"
)

// forward decides a request for the upstream routes: 404 without a route,
// then whatever its guard decides (pass), else a plan carrying the
// identity headers.
func (c *Core) forward(r *Request, a *Answer) {
	p := c.proxy
	rt := p.table.Match(r.Host, r.Path)
	if rt == nil {
		a.Fail(http.StatusNotFound, "no_route", "no route for this host and path")
		return
	}
	returnTo := r.Path
	if r.RawQuery != "" {
		returnTo += "?" + r.RawQuery
	}
	var buf [proxy.MaxIdentityHeaders]header.Field
	set, ok := c.pass(r, a, &p.guards[rt.Index], rt.Audience, rt.Name, returnTo, buf[:0])
	if !ok {
		return
	}
	var consumed proxy.Consumed
	if rt.Identity == identity.SourceOIDC {
		consumed |= proxy.ConsumedAuthorization
	}
	var cookie string
	if p.signin != nil {
		var removed bool
		if cookie, removed = withoutOwnCookies(r.Headers.Values("Cookie"), p.ownCookies); removed {
			consumed |= proxy.ConsumedCookie
		}
	}
	a.Forward = true
	a.Plan = p.rules.NewPlan(rt, r.Path, r.RawQuery, proxy.Client{
		Host: r.Authority, Peer: r.Addr, TLS: r.TLSState != nil, Values: r.Headers.Values,
	}, set, consumed, cookie, WantsWebSocket(r.Method, r.Headers))
	a.Plan.SetCookies = r.setCookies
}

// serveForwardAuth answers nginx auth_request, Traefik ForwardAuth and
// Envoy ext_authz: 200 with the identity headers set, or the refusal. The
// original request is X-Forwarded-Host (else Host) and X-Forwarded-Uri,
// X-Original-Uri or the path after the auth path (else "/"); it is
// judged by the guard of the route it matches, or the default policy. The
// audience is the original request's host.
func (c *Core) serveForwardAuth(r *Request, a *Answer) {
	a.Set("Cache-Control", "no-store")
	p := c.proxy
	host := r.Headers.Get("X-Forwarded-Host")
	if host == "" {
		host = r.Authority
	}
	aud, err := route.Host(host)
	if err != nil || aud == "" {
		a.Fail(http.StatusBadRequest, "malformed", "X-Forwarded-Host (or Host) must name the original request's host")
		return
	}
	uri := r.Headers.Get("X-Forwarded-Uri")
	if uri == "" {
		uri = r.Headers.Get("X-Original-Uri")
	}
	if uri == "" {
		uri = strings.TrimPrefix(r.Path, c.authPath)
		if r.RawQuery != "" {
			uri += "?" + r.RawQuery
		}
	}
	if uri == "" {
		uri = "/"
	}
	_, path, _, err := route.SplitTarget(uri)
	if err == nil {
		path, err = route.Normalize(path, c.cfg.KeepEscapedSlashes)
	}
	if err != nil {
		a.Fail(http.StatusBadRequest, "malformed", "the original request's URI (X-Forwarded-Uri, X-Original-Uri or the path after "+c.authPath+"): "+err.Error())
		return
	}
	g, origin := &p.fallback, "forward-auth"
	if rt := p.table.Match(aud, path); rt != nil {
		g, origin = &p.guards[rt.Index], "forward-auth "+rt.Name
	}
	var buf [proxy.MaxIdentityHeaders]header.Field
	set, ok := c.pass(r, a, g, aud, origin, "", buf[:0])
	if !ok {
		return
	}
	a.Status = http.StatusOK
	for _, f := range set {
		a.Set(f.Name, f.Value)
	}
	for _, v := range r.setCookies {
		a.Set("Set-Cookie", v)
	}
}

// guard is what a request for one route must pass, and what it carries
// when it does; built once at start.
type guard struct {
	name      string         // the route's Name, for metrics and logs
	source    string         // the identity source
	policy    *policy.Policy // nil refuses every request (no policy)
	decisions [3]counter     // by policy.Decision
	filter    func([]string) []string
	header    string         // the assertion header
	assertion bool           // send the signed assertion
	claims    []header.Field // claim name (Name) to header (Value)
}

// counter is what guard counts decisions with.
type counter interface{ Inc() }

// pass judges a request by g: the identity from g's source (401/403
// without one), the policy's decision (403 when refused, before anything
// is signed), then the identity headers the request carries, appended to
// set: the signed assertion for aud (unless the route passes none; its
// audit record names origin) and the claim headers, with the groups
// filtered. It fills a and returns false when the request may not pass;
// a browser without a session is sent to sign in and come back to
// returnTo ("" for none: 401).
func (c *Core) pass(r *Request, a *Answer, g *guard, aud, origin, returnTo string, set []header.Field) ([]header.Field, bool) {
	a.Route = g.name
	src := c.proxy.sources[g.source]
	if src == nil {
		a.Fail(http.StatusNotFound, "not_configured", "forward-auth needs --identity")
		return nil, false
	}
	if g.policy == nil {
		a.Decision = "no-policy"
		a.refuse(r, "no_policy", "no policy covers this request")
		return nil, false
	}
	id, err := src.Identify(r)
	if err != nil {
		c.log.Debug("no acceptable identity", "source", g.source, "reason", err.Error())
		if errors.Is(err, identity.ErrSignIn) {
			c.signIn(r, a, returnTo)
			return nil, false
		}
		if errors.Is(err, identity.ErrUnavailable) && browser(r) {
			a.providerDown()
			return nil, false
		}
		a.identityFailure(err, g.source)
		return nil, false
	}
	a.Subject = id.Subject
	in := policy.Input{Identity: &id}
	if g.policy.UsesClient() {
		if in.Client, err = identity.ClientAddr(r, c.proxy.rules.Trusted); err != nil {
			a.Fail(http.StatusBadRequest, "malformed", err.Error())
			return nil, false
		}
	}
	d := g.policy.Decide(&in)
	g.decisions[d].Inc()
	a.Decision = d.String()
	if d != policy.Allow {
		c.log.Debug("refused by policy", "route", g.name, "decision", a.Decision, "sub", id.Subject)
		a.refuse(r, "forbidden", "the route's policy does not let this identity through")
		return nil, false
	}
	if g.filter != nil {
		id.Groups = g.filter(id.Groups)
	}
	for _, ch := range g.claims {
		v := id.Claim(ch.Name)
		if v == "" {
			continue
		}
		if !header.ValidValue(v) {
			a.Fail(http.StatusForbidden, "unsendable_claim", "the identity's "+ch.Name+" claim has a character a header cannot carry")
			return nil, false
		}
		set = append(set, header.Field{Name: ch.Value, Value: v})
	}
	if !g.assertion {
		return set, true
	}
	tok, err := c.proxy.minter.Mint(r.Ctx, c.cfg.RequestTimeout, id, aud, audit.Origin{Route: origin, Remote: r.Addr})
	if err != nil {
		c.log.Warn("assertion not signed; request refused", "audience", aud, "err", err.Error())
		a.backendFailure(err)
		return nil, false
	}
	return append(set, header.Field{Name: g.header, Value: tok}), true
}
