package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/valyala/fasthttp"
)

// DefaultAssertionHeader is the request header that carries the signed
// identity assertion to upstreams.
const DefaultAssertionHeader = "X-Kmsgate-Jwt-Assertion"

// ProxyConfig is the gateway-in-front-of-apps part of the configuration:
// where requests go, who they are for, and how the assertion is made.
type ProxyConfig struct {
	// Upstream (--upstream) receives every request no route matches.
	Upstream string
	// Routes send requests by host and path prefix to upstreams.
	Routes []Route
	// Identity (--identity) is the default identity source: headers, oidc
	// or client-cert.
	Identity string
	// TrustedProxies (--trusted-proxy) may send oauth2-proxy identity
	// headers.
	TrustedProxies []netip.Prefix
	// OIDCIssuer and OIDCAudience configure the oidc source.
	OIDCIssuer, OIDCAudience string
	// Header (--assertion-header) is the default assertion header name.
	Header string
	// TTL (--assertion-ttl) is an assertion's lifetime.
	TTL time.Duration
	// CacheSize (--assertion-cache-size) bounds the assertion cache.
	CacheSize int
	// UpstreamTimeout (--upstream-timeout, default 60 s) is the longest an
	// upstream may keep the proxy waiting for the next bytes of its
	// response; then the request fails (502 before the response started).
	UpstreamTimeout time.Duration
}

// Route sends matching requests to an upstream with its own audience,
// assertion header and identity source (config file `routes:`).
type Route struct {
	// Host matches the request's host (any port); empty matches any.
	Host string `yaml:"host"`
	// Path is a path prefix; empty means "/".
	Path string `yaml:"path"`
	// Upstream is the URL requests are sent to.
	Upstream string `yaml:"upstream"`
	// Audience is the assertion's aud; default the upstream's host name
	// (without port).
	Audience string `yaml:"audience"`
	// Header is the assertion header; default --assertion-header.
	Header string `yaml:"header"`
	// Identity is the identity source; default --identity.
	Identity string `yaml:"identity"`

	target          *url.URL
	source          identitySource
	canonicalHeader string                 // Header in canonical form
	proxy           *httputil.ReverseProxy // HTTP/2 and upgrades, through echo
	fast            *fasthttp.HostClient   // HTTP/1.x, from the fasthttp front
}

// proxyState is the built form of ProxyConfig.
type proxyState struct {
	routes      []*Route // most specific first; the --upstream route last
	sources     map[string]identitySource
	defaultSrc  string
	header      string
	headerNames []string // every assertion header in use, stripped from requests
	trusted     []netip.Prefix
	minter      *minter
}

// buildProxy validates the proxy configuration and opens the identity
// sources it uses. It returns nil when nothing is proxied and no identity
// source is set (a sign-API-only gateway).
func (s *Server) buildProxy(ctx context.Context) (*proxyState, error) {
	pc := s.cfg.Proxy
	if pc.Upstream == "" && len(pc.Routes) == 0 && pc.Identity == "" {
		return nil, nil
	}
	if pc.Header == "" {
		pc.Header = DefaultAssertionHeader
	}
	if pc.TTL == 0 {
		pc.TTL = 5 * time.Minute
	}
	if pc.CacheSize == 0 {
		pc.CacheSize = 10000
	}
	if pc.UpstreamTimeout == 0 {
		pc.UpstreamTimeout = 60 * time.Second
	}
	if pc.UpstreamTimeout < 0 {
		return nil, fmt.Errorf("--upstream-timeout %s must be positive", pc.UpstreamTimeout)
	}
	p := &proxyState{sources: map[string]identitySource{}, defaultSrc: pc.Identity, header: pc.Header, trusted: pc.TrustedProxies}
	routes := slices.Clone(pc.Routes)
	if pc.Upstream != "" {
		routes = append(routes, Route{Upstream: pc.Upstream})
	}
	for i := range routes {
		r := &routes[i]
		where := fmt.Sprintf("route %d (host %q, path %q)", i+1, r.Host, r.Path)
		if i == len(routes)-1 && pc.Upstream != "" {
			where = "--upstream"
		}
		u, err := url.Parse(r.Upstream)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("%s: upstream %q must be an http:// or https:// URL", where, r.Upstream)
		}
		r.target = u
		if r.Path == "" {
			r.Path = "/"
		}
		if !strings.HasPrefix(r.Path, "/") {
			return nil, fmt.Errorf("%s: path must start with /", where)
		}
		if r.Audience == "" {
			r.Audience = u.Hostname() // like forward-auth: the host without its port
		}
		if r.Header == "" {
			r.Header = pc.Header
		}
		if http.CanonicalHeaderKey(r.Header) == "" || strings.ContainsAny(r.Header, " :\t") {
			return nil, fmt.Errorf("%s: header %q is not a valid header name", where, r.Header)
		}
		r.canonicalHeader = http.CanonicalHeaderKey(r.Header)
		if r.Identity == "" {
			r.Identity = pc.Identity
		}
		if r.Identity == "" {
			return nil, fmt.Errorf("%s: no identity source: set --identity (headers, oidc or client-cert) or the route's identity", where)
		}
		if !slices.Contains(p.headerNames, r.Header) {
			p.headerNames = append(p.headerNames, r.Header)
		}
		r.proxy = s.newReverseProxy(r, pc.UpstreamTimeout)
		r.fast = newUpstreamClient(u, pc.UpstreamTimeout)
	}
	if !slices.Contains(p.headerNames, pc.Header) {
		p.headerNames = append(p.headerNames, pc.Header)
	}
	// Open every identity source in use.
	names := []string{}
	if pc.Identity != "" {
		names = append(names, pc.Identity)
	}
	for _, r := range routes {
		names = append(names, r.Identity)
	}
	for _, n := range names {
		if _, done := p.sources[n]; done {
			continue
		}
		switch n {
		case SourceHeaders:
			if len(pc.TrustedProxies) == 0 {
				return nil, errors.New("the headers identity source needs --trusted-proxy (the addresses of the authenticating proxy in front)")
			}
			p.sources[n] = headerSource{trusted: pc.TrustedProxies}
		case SourceOIDC:
			src, err := newOIDCSource(ctx, pc.OIDCIssuer, pc.OIDCAudience, s.cfg.RequestTimeout)
			if err != nil {
				return nil, err
			}
			p.sources[n] = src
		case SourceClientCert:
			p.sources[n] = certSource{}
		default:
			return nil, fmt.Errorf("identity source %q: want headers, oidc or client-cert", n)
		}
	}
	for i := range routes {
		routes[i].source = p.sources[routes[i].Identity]
	}
	// Most specific first: longer path prefixes, and host routes before
	// host-less ones; the --upstream catch-all stays last.
	ordered := make([]*Route, len(routes))
	for i := range routes {
		ordered[i] = &routes[i]
	}
	n := len(ordered)
	if pc.Upstream != "" {
		n--
	}
	slices.SortStableFunc(ordered[:n], func(a, b *Route) int {
		if (a.Host == "") != (b.Host == "") {
			if a.Host != "" {
				return -1
			}
			return 1
		}
		return len(b.Path) - len(a.Path)
	})
	p.routes = ordered
	m, err := newMinter(s.keys, s.cfg.Issuer, pc.TTL, pc.CacheSize, s.metrics)
	if err != nil {
		return nil, err
	}
	p.minter = m
	return p, nil
}

// match returns the route for a request, or nil.
func (p *proxyState) match(r *http.Request) *Route { return p.matchHostPath(r.Host, r.URL.Path) }

// matchHostPath returns the route for a Host header and a path, or nil.
func (p *proxyState) matchHostPath(host, path string) *Route {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	for _, rt := range p.routes {
		if rt.Host != "" && !strings.EqualFold(rt.Host, host) {
			continue
		}
		if rt.Path == "/" || path == strings.TrimSuffix(rt.Path, "/") || strings.HasPrefix(path, rt.Path) {
			return rt
		}
	}
	return nil
}

type assertionKey struct{}

// bufferPool lends the reverse proxies their copy buffers; without it
// httputil.ReverseProxy allocates 32 KiB per response.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(v []byte) { b.p.Put(&v) }

var copyBuffers = &bufferPool{p: sync.Pool{New: func() any { v := make([]byte, 32<<10); return &v }}}

// newReverseProxy builds the streaming reverse proxy of one route. It uses
// Rewrite, which runs after the hop-by-hop headers (and any header named in
// Connection) have been removed, so the assertion set here always arrives.
// A read from the upstream that waits longer than idle fails.
func (s *Server) newReverseProxy(rt *Route, idle time.Duration) *httputil.ReverseProxy {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return newIdleConn(c, idle), nil
	}
	tr.MaxIdleConnsPerHost = 1024
	tr.MaxIdleConns = 4096
	tr.ForceAttemptHTTP2 = true
	return &httputil.ReverseProxy{
		Transport:  tr,
		BufferPool: copyBuffers,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(rt.target)
			pr.Out.Host = ""
			if isTrusted(peerOf(pr.In.RemoteAddr), s.proxy.trusted) && pr.In.Header.Get("X-Forwarded-For") != "" {
				// Keep the chain of a trusted proxy in front.
				pr.Out.Header["X-Forwarded-For"] = pr.In.Header["X-Forwarded-For"]
				pr.SetXForwarded()
			} else {
				deleteHeaders(pr.Out.Header, "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto")
				pr.SetXForwarded()
			}
			deleteHeaders(pr.Out.Header, s.proxy.headerNames...)
			if !isTrusted(peerOf(pr.In.RemoteAddr), s.proxy.trusted) {
				deleteHeaders(pr.Out.Header, forwardedIdentityHeaders...)
			}
			if rt.Identity == SourceOIDC {
				pr.Out.Header.Del("Authorization") // the original token never goes upstream
			}
			tok, _ := pr.In.Context().Value(assertionKey{}).(string)
			pr.Out.Header[http.CanonicalHeaderKey(rt.Header)] = []string{tok}
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) {
				return // the client went away
			}
			s.log.Warn("upstream failed", "upstream", rt.target.Host, "err", err.Error())
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte(`{"error":"the upstream did not answer","code":"bad_gateway"}`))
		},
	}
}

// identify runs the route's identity source and answers 401 or 403 when
// it finds no acceptable identity; ok is false when it answered.
func (s *Server) identify(c echo.Context, src identitySource, name string) (Identity, bool, error) {
	id, err := src.identify(httpRequest{c.Request()})
	if err == nil {
		return id, true, nil
	}
	status, code, msg, challenge := s.identityRefusal(err, name)
	if challenge {
		c.Response().Header().Set("WWW-Authenticate", `Bearer realm="kmsgate"`)
	}
	return Identity{}, false, fail(c, status, code, msg)
}

// identityRefusal is the answer to a request without an acceptable
// identity: 403 for identity headers from an untrusted address, else 401,
// with a Bearer challenge for the oidc source.
func (s *Server) identityRefusal(err error, source string) (status int, code, msg string, challenge bool) {
	if errors.Is(err, errSpoofed) {
		return http.StatusForbidden, "untrusted_identity", "identity headers are only accepted from a trusted proxy", false
	}
	s.log.Debug("no acceptable identity", "source", source, "reason", err.Error())
	return http.StatusUnauthorized, "unauthenticated", "no acceptable identity (" + source + ")", source == SourceOIDC
}

// mintFor signs (or reuses) the assertion within the request deadline.
func (s *Server) mintFor(c echo.Context, id Identity, audience string) (string, bool, error) {
	tok, err := s.proxy.minter.mint(c.Request().Context(), s.cfg.RequestTimeout, id, audience)
	if err != nil {
		s.log.Warn("assertion not signed; request refused", "audience", audience, "err", err.Error())
		return "", false, backendFailure(c, err)
	}
	return tok, true, nil
}

// handleProxy forwards a request to its route's upstream with a signed
// assertion, or refuses it: 404 without a route, 401/403 without an
// acceptable identity, 503 when the assertion cannot be signed.
func (s *Server) handleProxy(c echo.Context) error {
	r := c.Request()
	deleteHeaders(r.Header, s.proxy.headerNames...)
	rt := s.proxy.match(r)
	if rt == nil {
		return fail(c, http.StatusNotFound, "no_route", "no route for this host and path")
	}
	id, ok, err := s.identify(c, rt.source, rt.Identity)
	if !ok {
		return err
	}
	tok, ok, err := s.mintFor(c, id, rt.Audience)
	if !ok {
		return err
	}
	rt.proxy.ServeHTTP(c.Response(), r.WithContext(context.WithValue(r.Context(), assertionKey{}, tok)))
	return nil
}

// handleForwardAuth answers nginx auth_request, Traefik ForwardAuth and
// Envoy ext_authz: 200 with the assertion header set, or 401/403. The
// audience is the original request's host (X-Forwarded-Host, else Host).
func (s *Server) handleForwardAuth(c echo.Context) error {
	r := c.Request()
	c.Response().Header().Set("Cache-Control", "no-store")
	src := s.proxy.sources[s.proxy.defaultSrc]
	if src == nil {
		return fail(c, http.StatusNotFound, "not_configured", "forward-auth needs --identity")
	}
	id, ok, err := s.identify(c, src, s.proxy.defaultSrc)
	if !ok {
		return err
	}
	aud := r.Header.Get("X-Forwarded-Host")
	if aud == "" {
		aud = r.Host
	}
	if h, _, err := net.SplitHostPort(aud); err == nil {
		aud = h
	}
	tok, ok, err := s.mintFor(c, id, aud)
	if !ok {
		return err
	}
	c.Response().Header()[http.CanonicalHeaderKey(s.proxy.header)] = []string{tok}
	return c.NoContent(http.StatusOK)
}
