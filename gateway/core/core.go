// Package core is the gateway's protocol-neutral request handling: the one
// table of endpoints, the key set and discovery documents, the sign API,
// forward-auth and the decision to forward a request, over a Request view
// that either server builds and an Answer that either server writes. No
// rule about a request lives anywhere else.
package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kmsgate/kmsgate/gateway/assertion"
	"github.com/kmsgate/kmsgate/gateway/audit"
	"github.com/kmsgate/kmsgate/gateway/header"
	"github.com/kmsgate/kmsgate/gateway/identity"
	"github.com/kmsgate/kmsgate/gateway/metrics"
	"github.com/kmsgate/kmsgate/gateway/policy"
	"github.com/kmsgate/kmsgate/gateway/proxy"
	"github.com/kmsgate/kmsgate/gateway/route"
	"github.com/kmsgate/kmsgate/gateway/session"
	"github.com/kmsgate/kmsgate/gateway/signin"
	"github.com/kmsgate/kmsgate/jwks"
)

// Config holds the core's settings (the serve flags and config file).
type Config struct {
	// Issuer is the iss of every token and the base of jwks_uri.
	Issuer string
	// JWKSPaths are extra paths serving the key set, besides
	// /.well-known/jwks.json.
	JWKSPaths []string
	// MaxAge is the Cache-Control max-age of the key set; it is capped at
	// half of Prepublish so a cached set always holds a pending key before
	// it signs.
	MaxAge     time.Duration
	Prepublish time.Duration
	// RequestTimeout bounds every request, backend calls included.
	RequestTimeout time.Duration
	// MaxBody is the largest sign request body, in bytes.
	MaxBody int64
	// Clients are the sign API's callers.
	Clients []Client
	// Prefix (--gateway-prefix) is put before the gateway's own /v1/
	// paths, to move them off an upstream's path space.
	Prefix string
	// PublicHealth also serves /healthz and /readyz on the public port.
	PublicHealth bool
	// KeepEscapedSlashes forwards %2F and %5C in paths (kept encoded)
	// instead of refusing them with 400.
	KeepEscapedSlashes bool
	// Proxy configures the reverse proxy, forward-auth and identity
	// assertions; its zero value serves no proxy.
	Proxy ProxyConfig
	// Logger receives the logs; slog.Default when nil.
	Logger *slog.Logger
	// Audit receives one record per token signed (sign API, assertions);
	// nil for none.
	Audit *audit.Log
	// RequestLogSample is the share of requests logged at info (method,
	// endpoint or route, status, duration, client address, subject or
	// client; never a token): 1 logs all, 0 none.
	RequestLogSample float64
}

// ProxyConfig is the gateway-in-front-of-apps part of the configuration:
// where requests go, who they are for, and how the assertion is made.
type ProxyConfig struct {
	// Upstream (--upstream) receives every request no route matches.
	Upstream string
	// Routes send requests by host and path prefix to upstreams.
	Routes []route.Route
	// Identity (--identity) is the default identity source: headers, oidc
	// or client-cert.
	Identity string
	// Policy (--allow, or the config file's top-level policy) judges
	// requests for routes without a policy of their own, and forward-auth
	// requests no route matches. Without it every route needs its own.
	Policy policy.Spec
	// TrustedProxies (--trusted-proxy) may send oauth2-proxy identity
	// headers.
	TrustedProxies []netip.Prefix
	// OIDCIssuer and OIDCAudience configure the oidc source; the issuer
	// is also oidc-login's provider.
	OIDCIssuer, OIDCAudience string
	// OIDCGroupsClaim is the ID token claim holding the groups, for oidc
	// and oidc-login (default groups).
	OIDCGroupsClaim string
	// SignIn configures the oidc-login source (browser sign-in).
	SignIn signin.Config
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

// DefaultJWKSPath is where the key set is always served.
const DefaultJWKSPath = "/.well-known/jwks.json"

// DiscoveryPath is where the discovery document is served.
const DiscoveryPath = "/.well-known/openid-configuration"

// Core answers requests; it is safe for concurrent use.
type Core struct {
	cfg     Config
	keys    *jwks.Keyring
	clients *clientSet
	metrics *metrics.Metrics
	log     *slog.Logger

	endpoints    map[string]endpoint // exact paths of the gateway's own endpoints
	ownPrefix    string              // Prefix + "/v1/": every path below is the gateway's
	authPath     string              // forward-auth, exact or as a prefix ("/v1/auth/…")
	cacheControl string
	discovery    []byte
	discoveryTag string
	proxy        *proxyState
}

// proxyState is the built form of ProxyConfig.
type proxyState struct {
	table    *route.Table
	sources  map[string]identity.Source
	guards   []guard // by route Index
	fallback guard   // forward-auth requests no route matches
	rules    proxy.Rules
	minter   *assertion.Minter
	upstream time.Duration
	// signin is the oidc-login source, if any; its cookies (ownCookies)
	// never reach an upstream.
	signin     *signin.Source
	ownCookies []session.Cookies
}

// New validates cfg and builds the core over a keyring. ctx bounds the
// start-up calls (the OIDC issuer's discovery document).
func New(ctx context.Context, cfg Config, kr *jwks.Keyring, m *metrics.Metrics) (*Core, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("no issuer (--issuer): it is the iss of every token and the base of the jwks_uri")
	}
	issuerPath, err := checkIssuer(cfg.Issuer)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 5 * time.Second
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 64 << 10
	}
	if cfg.RequestLogSample < 0 || cfg.RequestLogSample > 1 {
		return nil, fmt.Errorf("--request-log-sample %v must be between 0 (none) and 1 (every request)", cfg.RequestLogSample)
	}
	if cfg.MaxAge < 0 {
		return nil, fmt.Errorf("JWKS max-age %s is negative", cfg.MaxAge)
	}
	if limit := cfg.Prepublish / 2; cfg.MaxAge > limit {
		cfg.Logger.Info("JWKS max-age capped at half of --prepublish", "max_age", cfg.MaxAge.String(), "capped", limit.String())
		cfg.MaxAge = limit
	}
	if cfg.Prefix != "" {
		p, err := route.Normalize(cfg.Prefix, false)
		if err != nil || p != cfg.Prefix || strings.HasSuffix(p, "/") {
			return nil, fmt.Errorf("--gateway-prefix %q must be a normalized path without a trailing slash, such as /.kmsgate", cfg.Prefix)
		}
	}
	clients, err := newClientSet(cfg.Clients)
	if err != nil {
		return nil, err
	}
	if m == nil {
		m = metrics.New()
	}
	c := &Core{
		cfg: cfg, keys: kr, clients: clients, metrics: m, log: cfg.Logger,
		cacheControl: "public, max-age=" + strconv.Itoa(int(cfg.MaxAge/time.Second)),
		ownPrefix:    cfg.Prefix + "/v1/",
		authPath:     cfg.Prefix + "/v1/auth",
		endpoints:    map[string]endpoint{},
	}
	c.discovery, c.discoveryTag = discoveryDocument(cfg.Issuer)
	jwksPaths := append([]string{DefaultJWKSPath}, cfg.JWKSPaths...)
	if issuerPath != "" {
		// An issuer with a path serves its documents where it advertises
		// them, as Keycloak realms and Auth0 tenants do, and at the root.
		jwksPaths = append(jwksPaths, issuerPath+DefaultJWKSPath)
		c.endpoints[issuerPath+DiscoveryPath] = endpoint{label: DiscoveryPath, serve: (*Core).serveDiscovery, methods: documentMethods}
	}
	for _, p := range jwksPaths {
		if n, err := route.Normalize(p, false); err != nil || n != p {
			return nil, fmt.Errorf("--jwks-path %q must be a normalized absolute path", p)
		}
		if strings.HasPrefix(p, c.ownPrefix) {
			return nil, fmt.Errorf("--jwks-path %q is under the gateway's own %s", p, c.ownPrefix)
		}
		c.endpoints[p] = endpoint{label: p, serve: (*Core).serveJWKS, methods: documentMethods}
	}
	c.endpoints[DiscoveryPath] = endpoint{label: DiscoveryPath, serve: (*Core).serveDiscovery, methods: documentMethods}
	c.endpoints[cfg.Prefix+"/v1/sign"] = endpoint{label: "/v1/sign", serve: (*Core).serveSign, methods: []string{"POST"}}
	if cfg.PublicHealth {
		c.endpoints["/healthz"] = endpoint{label: "/healthz", serve: func(c *Core, _ *Request, a *Answer) { c.Health(a) }, methods: []string{"GET", "HEAD"}}
		c.endpoints["/readyz"] = endpoint{label: "/readyz", serve: func(c *Core, _ *Request, a *Answer) { c.Ready(a) }, methods: []string{"GET", "HEAD"}}
	}
	if c.proxy, err = c.buildProxy(ctx); err != nil {
		return nil, err
	}
	if err := m.WatchKeys(kr); err != nil {
		return nil, err
	}
	return c, nil
}

// IdentityProblems lists what keeps the identity sources a proxy
// configuration uses (--identity and each route's) from working, before
// anything is opened: an unknown source, headers without --trusted-proxy,
// oidc without its issuer and audience. Each problem names where the
// source is used.
func IdentityProblems(pc ProxyConfig) []string {
	uses := map[string][]string{}
	if pc.Identity != "" {
		uses[pc.Identity] = append(uses[pc.Identity], "--identity")
	}
	for i, r := range pc.Routes {
		if r.Identity != "" {
			uses[r.Identity] = append(uses[r.Identity], fmt.Sprintf("route %d", i+1))
		}
	}
	var p []string
	for src, where := range uses {
		by := strings.Join(where, ", ")
		switch src {
		case identity.SourceHeaders:
			if len(pc.TrustedProxies) == 0 {
				p = append(p, fmt.Sprintf("identity headers (%s) needs --trusted-proxy: the addresses of the authenticating proxy in front, the only peers whose identity headers count", by))
			}
		case identity.SourceOIDC:
			if pc.OIDCIssuer == "" || pc.OIDCAudience == "" {
				p = append(p, fmt.Sprintf("identity oidc (%s) needs --oidc-issuer and --oidc-audience", by))
			}
		case identity.SourceOIDCLogin:
			if pc.OIDCIssuer == "" || pc.SignIn.ClientID == "" || pc.SignIn.Sealer == nil {
				p = append(p, fmt.Sprintf("identity oidc-login (%s) needs --oidc-issuer, --oidc-client-id and --cookie-secret", by))
			}
		case identity.SourceClientCert:
		default:
			p = append(p, fmt.Sprintf("identity %q (%s): want headers, oidc, oidc-login or client-cert", src, by))
		}
	}
	slices.Sort(p)
	return p
}

// checkIssuer checks the issuer, which is used exactly as written (a final
// slash included: verifiers compare it byte for byte), and returns its
// path without a final slash ("" for an issuer at the root).
func checkIssuer(iss string) (string, error) {
	u, err := url.Parse(iss)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(iss, "?") || strings.HasSuffix(iss, "#") {
		return "", fmt.Errorf("issuer %q must be an http:// or https:// URL without query or fragment", iss)
	}
	p := strings.TrimSuffix(u.EscapedPath(), "/")
	if p != "" {
		if n, err := route.Normalize(p, false); err != nil || n != p {
			return "", fmt.Errorf("issuer %q: its path must be normalized (no empty, \".\" or \"..\" segments)", iss)
		}
	}
	return p, nil
}

// Metrics returns the core's metrics.
func (c *Core) Metrics() *metrics.Metrics { return c.metrics }

// MaxBody is the largest request body the core reads (--max-body).
func (c *Core) MaxBody() int64 { return c.cfg.MaxBody }

// Logger returns the core's logger.
func (c *Core) Logger() *slog.Logger { return c.log }

// Routes returns the upstream routes in matching order (none without a
// proxy); the servers build one upstream client per route.
func (c *Core) Routes() []*route.Route {
	if c.proxy == nil {
		return nil
	}
	return c.proxy.table.Routes()
}

// UpstreamTimeout is the longest wait for an upstream's next bytes.
func (c *Core) UpstreamTimeout() time.Duration {
	if c.proxy == nil {
		return 60 * time.Second
	}
	return c.proxy.upstream
}

// buildProxy validates the proxy configuration and opens the identity
// sources it uses. It returns nil when nothing is proxied and no identity
// source is set (a sign-API-only gateway).
func (c *Core) buildProxy(ctx context.Context) (*proxyState, error) {
	pc := c.cfg.Proxy
	if pc.Upstream == "" && len(pc.Routes) == 0 && pc.Identity == "" {
		return nil, nil
	}
	if pc.Header == "" {
		pc.Header = proxy.DefaultAssertionHeader
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
	if !header.ValidName(pc.Header) {
		return nil, fmt.Errorf("--assertion-header %q is not a valid header name", pc.Header)
	}
	p := &proxyState{sources: map[string]identity.Source{}, upstream: pc.UpstreamTimeout}
	p.rules.Trusted = pc.TrustedProxies
	p.rules.Owned = []string{pc.Header}
	var defaultPolicy *policy.Policy
	if !pc.Policy.IsZero() {
		var err error
		if defaultPolicy, err = policy.Compile(pc.Policy); err != nil {
			return nil, fmt.Errorf("default policy: %w", err)
		}
	}
	routes := make([]*route.Route, len(pc.Routes))
	for i := range pc.Routes {
		r := pc.Routes[i]
		routes[i] = &r
	}
	var catchAll *route.Route
	if pc.Upstream != "" {
		catchAll = &route.Route{Upstream: pc.Upstream, Name: "--upstream"}
	}
	names := []string{}
	if pc.Identity != "" {
		names = append(names, pc.Identity)
	}
	for i, r := range append(slices.Clone(routes), catchAll) {
		if r == nil {
			continue
		}
		name := fmt.Sprintf("route %d (host %q, path %q)", i+1, r.Host, r.Path)
		switch {
		case r == catchAll:
			name = "--upstream"
		case r.Name != "":
			name = fmt.Sprintf("route %q", r.Name)
		}
		if err := r.Prepare(name, pc.Header, pc.Identity); err != nil {
			return nil, err
		}
		if !header.ValidName(r.Header) {
			return nil, fmt.Errorf("%s: header %q is not a valid header name", name, r.Header)
		}
		if r.Identity == "" {
			return nil, fmt.Errorf("%s: no identity source: set --identity (headers, oidc or client-cert) or the route's identity", name)
		}
		if strings.HasPrefix(r.Path, c.ownPrefix) {
			return nil, fmt.Errorf("%s: path %q is under the gateway's own %s (move those with --gateway-prefix)", name, r.Path, c.ownPrefix)
		}
		if !slices.ContainsFunc(p.rules.Owned, func(h string) bool { return header.SameName(h, r.Header) }) {
			p.rules.Owned = append(p.rules.Owned, r.Header)
		}
		names = append(names, r.Identity)
	}
	guards := map[*route.Route]guard{}
	named := map[string]bool{}
	for _, r := range append(slices.Clone(routes), catchAll) {
		if r == nil {
			continue
		}
		if named[r.Name] {
			return nil, fmt.Errorf("%s: another route has the name %q; route names label metrics and logs, so each must be its own", r.Label, r.Name)
		}
		named[r.Name] = true
		g, err := c.newGuard(r, defaultPolicy, &p.rules)
		if err != nil {
			return nil, err
		}
		guards[r] = g
	}
	p.fallback = guard{name: "forward-auth", source: pc.Identity, policy: defaultPolicy, header: pc.Header, assertion: true}
	c.countDecisions(&p.fallback)
	if defaultPolicy == nil && len(guards) == 0 && pc.Identity != "" {
		return nil, fmt.Errorf("no policy: forward-auth (%s) would refuse every request; set --allow %s, or a policy (allow and deny rules) in the config file", c.authPath, policy.AnyAuthenticated)
	}
	if problems := IdentityProblems(pc); len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "; "))
	}
	var disc *identity.Discovery
	for _, n := range names {
		if _, done := p.sources[n]; done {
			continue
		}
		if (n == identity.SourceOIDC || n == identity.SourceOIDCLogin) && disc == nil {
			var err error
			if disc, err = identity.Discover(ctx, pc.OIDCIssuer, c.log); err != nil {
				return nil, err
			}
		}
		groups := pc.OIDCGroupsClaim
		if groups == "" {
			groups = "groups"
		}
		switch n {
		case identity.SourceHeaders:
			p.sources[n] = identity.NewHeaderSource(pc.TrustedProxies)
		case identity.SourceOIDC:
			src, err := identity.NewOIDCSource(disc, pc.OIDCAudience, groups, c.cfg.RequestTimeout)
			if err != nil {
				return nil, err
			}
			p.sources[n] = src
		case identity.SourceOIDCLogin:
			cfg := pc.SignIn
			cfg.GroupsClaim, cfg.Logger = groups, c.log
			if cfg.Timeout <= 0 {
				cfg.Timeout = c.cfg.RequestTimeout
			}
			src, err := signin.New(disc, cfg, c.cfg.Prefix)
			if err != nil {
				return nil, err
			}
			p.sources[n], p.signin = src, src
			for _, ck := range src.Cookies() {
				p.ownCookies = append(p.ownCookies, ck)
			}
			c.endpoints[c.cfg.Prefix+signin.CallbackPath] = endpoint{label: signin.CallbackPath, serve: (*Core).serveCallback, methods: []string{"GET"}}
			c.endpoints[c.cfg.Prefix+signin.LogoutPath] = endpoint{label: signin.LogoutPath, serve: (*Core).serveLogout, methods: []string{"GET", "POST"}}
			c.endpoints[c.cfg.Prefix+signin.LoginPath] = endpoint{label: signin.LoginPath, serve: (*Core).serveLogin, methods: []string{"GET"}}
		case identity.SourceClientCert:
			p.sources[n] = identity.NewCertSource()
		}
	}
	p.rules.Prepare()
	p.table = route.NewTable(routes, catchAll)
	p.guards = make([]guard, len(p.table.Routes()))
	for _, r := range p.table.Routes() {
		p.guards[r.Index] = guards[r]
	}
	m, err := assertion.New(c.keys, c.cfg.Issuer, pc.TTL, pc.CacheSize, c.metrics, c.cfg.Audit)
	if err != nil {
		return nil, err
	}
	p.minter = m
	return p, nil
}

// newGuard builds what a request for r must pass: r's policy (or def),
// groups filter and claim headers, whose names join the headers the
// gateway owns (rules.Owned).
func (c *Core) newGuard(r *route.Route, def *policy.Policy, rules *proxy.Rules) (guard, error) {
	g := guard{name: r.Name, source: r.Identity, policy: def, header: r.Header, assertion: r.PassAssertion()}
	if !r.Policy.IsZero() {
		var err error
		if g.policy, err = policy.Compile(r.Policy); err != nil {
			return guard{}, fmt.Errorf("%s: policy: %w", r.Label, err)
		}
	}
	if g.policy == nil {
		return guard{}, fmt.Errorf("%s: no policy: give the route a policy (allow and deny rules), or let every authenticated identity through with policy: {allow: %s} (or --allow %s for every route without one)", r.Label, policy.AnyAuthenticated, policy.AnyAuthenticated)
	}
	var err error
	if g.filter, err = r.GroupsFilter.Compile(); err != nil {
		return guard{}, fmt.Errorf("%s: %w", r.Label, err)
	}
	claims := slices.Sorted(maps.Keys(r.ClaimHeaders))
	if len(claims) > proxy.MaxIdentityHeaders-1 {
		return guard{}, fmt.Errorf("%s: claim-headers: at most %d", r.Label, proxy.MaxIdentityHeaders-1)
	}
	for _, claim := range claims {
		h := r.ClaimHeaders[claim]
		switch {
		case !slices.Contains(identity.ClaimNames, claim):
			return guard{}, fmt.Errorf("%s: claim-headers: unknown claim %q; want one of %s", r.Label, claim, strings.Join(identity.ClaimNames, ", "))
		case !header.ValidName(h):
			return guard{}, fmt.Errorf("%s: claim-headers: %s: %q is not a valid header name", r.Label, claim, h)
		case proxy.Reserved(h):
			return guard{}, fmt.Errorf("%s: claim-headers: %s: %s is a header the proxy already governs or a client credential; choose another name, such as X-Kmsgate-Claim-%s", r.Label, claim, h, strings.ToUpper(claim[:1])+claim[1:])
		case header.SameName(h, r.Header) || slices.ContainsFunc(g.claims, func(f header.Field) bool { return header.SameName(f.Value, h) }):
			return guard{}, fmt.Errorf("%s: claim-headers: %s: header %s is used twice", r.Label, claim, h)
		}
		g.claims = append(g.claims, header.Field{Name: claim, Value: h})
		if !slices.ContainsFunc(rules.Owned, func(o string) bool { return header.SameName(o, h) }) {
			rules.Owned = append(rules.Owned, h)
		}
	}
	c.countDecisions(&g)
	return g, nil
}

// countDecisions gives g its decision counters.
func (c *Core) countDecisions(g *guard) {
	names := []string{policy.Allow.String(), policy.Deny.String(), policy.NotAllowed.String()}
	for i, ctr := range c.metrics.PolicyDecisions(g.name, names) {
		g.decisions[i] = ctr
	}
}
