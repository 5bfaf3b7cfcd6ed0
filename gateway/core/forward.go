package core

import (
	"net/http"

	"github.com/kmsgate/kmsgate/gateway/audit"
	"github.com/kmsgate/kmsgate/gateway/identity"
	"github.com/kmsgate/kmsgate/gateway/proxy"
	"github.com/kmsgate/kmsgate/gateway/route"
)

// forward decides a request for the upstream routes: 404 without a route,
// 401/403 without an acceptable identity, 503 (or 429) when the assertion
// cannot be signed, else a plan with the signed assertion.
func (c *Core) forward(r *Request, a *Answer) {
	p := c.proxy
	rt := p.table.Match(r.Host, r.Path)
	if rt == nil {
		a.Fail(http.StatusNotFound, "no_route", "no route for this host and path")
		return
	}
	id, err := p.sources[rt.Identity].Identify(r)
	if err != nil {
		c.log.Debug("no acceptable identity", "source", rt.Identity, "reason", err.Error())
		a.identityFailure(err, rt.Identity)
		return
	}
	a.Subject = id.Subject
	tok, err := p.minter.Mint(r.Ctx, c.cfg.RequestTimeout, id, rt.Audience, audit.Origin{Route: rt.Name, Remote: r.Addr})
	if err != nil {
		c.log.Warn("assertion not signed; request refused", "audience", rt.Audience, "err", err.Error())
		a.backendFailure(err)
		return
	}
	a.Forward = true
	a.Plan = p.rules.NewPlan(rt, r.Path, r.RawQuery, proxy.Client{
		Host: r.Authority, Peer: r.Addr, TLS: r.TLSState != nil, Values: r.Headers.Values,
	}, tok, rt.Identity == identity.SourceOIDC, WantsWebSocket(r.Method, r.Headers))
}

// serveForwardAuth answers nginx auth_request, Traefik ForwardAuth and
// Envoy ext_authz: 200 with the assertion header set, or 401/403. The
// audience is the original request's host (X-Forwarded-Host, else Host).
func (c *Core) serveForwardAuth(r *Request, a *Answer) {
	a.Set("Cache-Control", "no-store")
	p := c.proxy
	src := p.sources[p.defaultSrc]
	if src == nil {
		a.Fail(http.StatusNotFound, "not_configured", "forward-auth needs --identity")
		return
	}
	id, err := src.Identify(r)
	if err != nil {
		c.log.Debug("no acceptable identity", "source", p.defaultSrc, "reason", err.Error())
		a.identityFailure(err, p.defaultSrc)
		return
	}
	a.Subject = id.Subject
	aud := r.Headers.Get("X-Forwarded-Host")
	if aud == "" {
		aud = r.Authority
	}
	if aud, err = route.Host(aud); err != nil || aud == "" {
		a.Fail(http.StatusBadRequest, "malformed", "X-Forwarded-Host (or Host) must name the original request's host")
		return
	}
	tok, err := p.minter.Mint(r.Ctx, c.cfg.RequestTimeout, id, aud, audit.Origin{Route: "forward-auth", Remote: r.Addr})
	if err != nil {
		c.log.Warn("assertion not signed; request refused", "audience", aud, "err", err.Error())
		a.backendFailure(err)
		return
	}
	a.Status = http.StatusOK
	a.Set(p.header, tok)
}
