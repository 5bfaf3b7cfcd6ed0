// Package proxy decides how a request is forwarded upstream: the
// forwarding plan (route, upstream path and query, the headers dropped and
// set) and the hop-by-hop and X-Forwarded-* rules, kept in one place for
// both servers, which only carry a plan out.
package proxy

import (
	"net/netip"
	"strings"

	"github.com/kmsgate/kmsgate/gateway/header"
	"github.com/kmsgate/kmsgate/gateway/identity"
	"github.com/kmsgate/kmsgate/gateway/route"
)

// DefaultAssertionHeader is the request header that carries the signed
// identity assertion to upstreams.
const DefaultAssertionHeader = "X-Kmsgate-Jwt-Assertion"

// hopHeaders are the hop-by-hop headers a proxy must not forward (RFC 9110
// 7.6.1), besides any the Connection header names. The message framing
// (Content-Length, Transfer-Encoding) is each server's client's own work.
var hopHeaders = header.NewSet("Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Upgrade", "Host")

// forwardingHeaders describe the client's connection; a client may not set
// them (a trusted proxy's X-Forwarded-For chain is kept by the plan).
var forwardingHeaders = header.NewSet("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Real-Ip")

// identityHeaders are the identity headers of an authenticating proxy.
var identityHeaders = header.NewSet(identity.ForwardedHeaders...)

// framingHeaders frame a message; their variants are never forwarded.
var framingHeaders = header.NewSet("Content-Length", "Transfer-Encoding")

// HopByHop reports whether a header is hop-by-hop: one of RFC 9110's, or
// one the message's Connection header names (conn, from ConnectionTokens).
func HopByHop(name string, conn []string) bool {
	if hopHeaders.Exact(name) {
		return true
	}
	for _, h := range conn {
		if header.Exact(name, h) {
			return true
		}
	}
	return false
}

// ConnectionTokens returns the header names a Connection header's values
// list, apart from "close", "keep-alive" and "upgrade", which name no header.
func ConnectionTokens(values []string) []string {
	var names []string
	for _, v := range values {
		if header.Exact(v, "keep-alive") || header.Exact(v, "close") {
			continue // the usual values, without a split
		}
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			if t == "" || header.Exact(t, "close") || header.Exact(t, "keep-alive") || header.Exact(t, "upgrade") {
				continue
			}
			names = append(names, t)
		}
	}
	return names
}

// Rules are the proxy's header rules fixed at start.
type Rules struct {
	// Owned lists every header the gateway sets for an identity: the
	// assertion headers and the claim headers in use. A client's copy is
	// never forwarded, in any variant.
	Owned []string
	owned header.Set
	// Trusted are the addresses of the authenticating proxy in front,
	// whose identity headers and X-Forwarded-For chain are kept.
	Trusted []netip.Prefix
}

// Plan is how one request is forwarded, decided once by the core and
// carried out by whichever server received the request.
type Plan struct {
	// Route is the matched route; its Index keys the servers' upstream
	// clients.
	Route *route.Route
	// Path and RawQuery are the upstream request's path (normalized, the
	// upstream's own path joined before it) and query (as received).
	Path, RawQuery string
	// Host is the Host header sent upstream: the upstream's.
	Host string
	// WebSocket is set for a WebSocket upgrade, the only upgrade passed on.
	WebSocket bool

	// SetCookies are Set-Cookie values added to the upstream's response
	// (a renewed session).
	SetCookies []string

	rules       *Rules
	conn        []string
	trustedPeer bool
	consumed    Consumed
	set         [maxSet]header.Field
	nset        int
}

// Client is what a plan reads of the client's request.
type Client struct {
	// Host is the Host header (or :authority) as received.
	Host string
	// Peer is the client connection's address.
	Peer netip.Addr
	// TLS tells whether the client connection is TLS.
	TLS bool
	// Values returns a request header's values, by canonical name.
	Values func(name string) []string
}

// Prepare fixes the rules for use; call it once, before NewPlan.
func (r *Rules) Prepare() { r.owned = header.NewSet(r.Owned...) }

// MaxIdentityHeaders is the most identity headers a plan sets: the
// assertion and one header per claim.
const MaxIdentityHeaders = 6

// maxSet is the most headers a plan sets: X-Forwarded-For, -Host and
// -Proto, the identity headers, the client's cookies less the gateway's,
// and a WebSocket's two.
const maxSet = 3 + MaxIdentityHeaders + 1 + 2

// Consumed names the client credentials an identity source used, which
// never reach the upstream.
type Consumed uint8

const (
	// ConsumedAuthorization: the Authorization header (an oidc bearer
	// token) is dropped.
	ConsumedAuthorization Consumed = 1 << iota
	// ConsumedCookie: the Cookie headers are dropped, and the plan's
	// filtered cookie (the client's cookies less the gateway's session)
	// sent instead.
	ConsumedCookie
)

// NewPlan returns the plan of a request for rt, with the identity headers
// the gateway sets (the signed assertion and the claim headers, at most
// MaxIdentityHeaders) and the credentials consumed; with ConsumedCookie,
// cookie is the Cookie header sent instead ("" for none). webSocket passes
// the request's WebSocket upgrade on.
func (r *Rules) NewPlan(rt *route.Route, path, query string, c Client, idHeaders []header.Field, consumed Consumed, cookie string, webSocket bool) Plan {
	p := Plan{
		Route: rt, Path: rt.UpstreamPath(path), RawQuery: rt.UpstreamQuery(query), Host: rt.Target.Host, WebSocket: webSocket,
		rules: r, conn: ConnectionTokens(c.Values("Connection")), trustedPeer: identity.Trusted(c.Peer, r.Trusted),
		consumed: consumed,
	}
	xff := c.Peer.String()
	if p.trustedPeer {
		if chain := c.Values("X-Forwarded-For"); len(chain) > 0 {
			// Keep the chain of a trusted proxy in front.
			xff = strings.Join(chain, ", ") + ", " + xff
		}
	}
	proto := "http"
	if c.TLS {
		proto = "https"
	}
	p.set[0] = header.Field{Name: "X-Forwarded-For", Value: xff}
	p.set[1] = header.Field{Name: "X-Forwarded-Host", Value: c.Host}
	p.set[2] = header.Field{Name: "X-Forwarded-Proto", Value: proto}
	p.nset = 3 + copy(p.set[3:3+MaxIdentityHeaders], idHeaders)
	if consumed&ConsumedCookie != 0 && cookie != "" {
		p.set[p.nset] = header.Field{Name: "Cookie", Value: cookie}
		p.nset++
	}
	if webSocket {
		p.set[p.nset] = header.Field{Name: "Connection", Value: "Upgrade"}
		p.set[p.nset+1] = header.Field{Name: "Upgrade", Value: "websocket"}
		p.nset += 2
	}
	return p
}

// Drop reports whether a client's request header is left out of the
// upstream request: hop-by-hop headers, every variant of an assertion or
// claim header and of the X-Forwarded-* family (set anew by Set), identity
// headers from an untrusted peer (and their "_" and "." variants from a
// trusted one), and the credentials the identity source consumed (the
// bearer token of oidc; the cookies, replaced by the plan's, of a gateway
// with sessions).
func (p *Plan) Drop(name string) bool {
	if HopByHop(name, p.conn) {
		return true
	}
	if _, ok := p.rules.owned.Variant(name); ok {
		return true
	}
	if _, ok := forwardingHeaders.Variant(name); ok {
		return true
	}
	if h, ok := identityHeaders.Variant(name); ok && (!p.trustedPeer || !header.Exact(name, h)) {
		return true
	}
	// The framing itself is the servers' own; a "_" or "." variant could be
	// folded into it by a CGI-style app.
	if h, ok := framingHeaders.Variant(name); ok && !header.Exact(name, h) {
		return true
	}
	return (p.consumed&ConsumedAuthorization != 0 && header.Exact(name, "Authorization")) ||
		(p.consumed&ConsumedCookie != 0 && header.Exact(name, "Cookie"))
}

// Set returns the headers the upstream request gets: X-Forwarded-For,
// -Host and -Proto, the identity headers, and for a WebSocket the upgrade.
func (p *Plan) Set() []header.Field { return p.set[:p.nset] }

// Reserved reports whether a header name is governed by the forwarding
// rules already (hop-by-hop, the X-Forwarded-* family, the framing, the
// identity headers of a proxy in front) or carries the client's
// credentials, so the gateway cannot give it another meaning, such as a
// claim header.
func Reserved(name string) bool {
	for _, s := range []header.Set{hopHeaders, forwardingHeaders, framingHeaders, identityHeaders} {
		if _, ok := s.Variant(name); ok {
			return true
		}
	}
	return header.SameName(name, "Authorization") || header.SameName(name, "Cookie")
}
