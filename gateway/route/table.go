package route

import (
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/kmsgate/kmsgate/gateway/identity"
	"github.com/kmsgate/kmsgate/gateway/policy"
)

// Route sends matching requests to an upstream with its own audience,
// assertion header, identity source and policy (config file `routes:`).
type Route struct {
	// Name labels the route in metrics, logs and audit records; default
	// its host and path ("app.example.com/api/", "*/api/").
	Name string `yaml:"name"`
	// Host matches the request's host (any port, any letter case); empty
	// matches any.
	Host string `yaml:"host"`
	// Path is a path prefix in normalized form; empty means "/".
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
	// Policy decides who may pass; without one the default policy
	// (--allow, or the config file's top-level policy) applies, and
	// without that the gateway refuses to start.
	Policy policy.Spec `yaml:"policy"`
	// PassIdentityHeaders sends the signed assertion upstream (default
	// true); off, no assertion is signed for the route.
	PassIdentityHeaders *bool `yaml:"pass-identity-headers"`
	// ClaimHeaders sends claims as plain headers too: claim name (sub,
	// user, email, groups, name) to header name.
	ClaimHeaders map[string]string `yaml:"claim-headers"`
	// GroupsFilter cuts the groups claim down to what the route cares
	// about, in the assertion and the claim header.
	GroupsFilter identity.GroupsFilter `yaml:"groups-filter"`

	// Target is the parsed Upstream.
	Target *url.URL `yaml:"-"`
	// Index is the route's place in the table, for per-route state of the
	// servers (upstream clients).
	Index int `yaml:"-"`
	// Label names the route in configuration errors.
	Label string `yaml:"-"`
}

// Prepare checks a configured route and fills in its defaults: its name,
// and the assertion header and identity source when the route names none.
// label names the route in errors.
func (r *Route) Prepare(label, header, identity string) error {
	r.Label = label
	name := label
	u, err := url.Parse(r.Upstream)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.Fragment != "" {
		return fmt.Errorf("%s: upstream %q must be an http:// or https:// URL", name, r.Upstream)
	}
	if u.Path != "" {
		p, err := Normalize(u.EscapedPath(), true)
		if err != nil {
			return fmt.Errorf("%s: upstream %q: path: %w", name, r.Upstream, err)
		}
		u.RawPath, u.Path = "", ""
		if p != "/" {
			u.Path, _ = url.PathUnescape(p)
			u.RawPath = p
		}
	}
	r.Target = u
	if r.Path == "" {
		r.Path = "/"
	}
	if p, err := Normalize(r.Path, true); err != nil || p != r.Path {
		return fmt.Errorf("%s: path %q must be a normalized absolute path (as requests are matched after normalization; e.g. %q)", name, r.Path, p)
	}
	if r.Host != "" {
		h, err := Host(r.Host)
		if err != nil || strings.ContainsAny(r.Host, ":[]") {
			return fmt.Errorf("%s: host %q must be a host name without port", name, r.Host)
		}
		r.Host = h
	}
	if r.Audience == "" {
		r.Audience = u.Hostname() // like forward-auth: the host without its port
	}
	if r.Header == "" {
		r.Header = header
	}
	if r.Identity == "" {
		r.Identity = identity
	}
	if r.Name == "" {
		host := r.Host
		if host == "" {
			host = "*"
		}
		r.Name = host + r.Path
	}
	return nil
}

// PassAssertion reports whether the route sends the signed assertion.
func (r *Route) PassAssertion() bool { return r.PassIdentityHeaders == nil || *r.PassIdentityHeaders }

// Matches reports whether the route takes a request for host (as Host
// returns it) and a normalized path. A prefix "/api/" also takes "/api".
func (r *Route) Matches(host, path string) bool {
	if r.Host != "" && r.Host != host {
		return false
	}
	return r.Path == "/" || strings.HasPrefix(path, r.Path) || path == strings.TrimSuffix(r.Path, "/")
}

// UpstreamPath is the path sent upstream for a request path: the
// upstream's own path, if any, joined before it.
func (r *Route) UpstreamPath(path string) string {
	base := r.Target.EscapedPath()
	if base == "" || base == "/" {
		return path
	}
	return strings.TrimSuffix(base, "/") + path
}

// UpstreamQuery is the query sent upstream: the upstream's own query, if
// any, before the request's, which is kept byte for byte.
func (r *Route) UpstreamQuery(query string) string {
	switch {
	case r.Target.RawQuery == "":
		return query
	case query == "":
		return r.Target.RawQuery
	}
	return r.Target.RawQuery + "&" + query
}

// Table is the ordered set of upstream routes.
type Table struct{ routes []*Route }

// NewTable orders routes most specific first: host routes before host-less
// ones, then longer path prefixes; catchAll, if set, comes last whatever
// its prefix. Each route's Index is its place in the returned table.
func NewTable(routes []*Route, catchAll *Route) *Table {
	ordered := slices.Clone(routes)
	slices.SortStableFunc(ordered, func(a, b *Route) int {
		if (a.Host == "") != (b.Host == "") {
			if a.Host != "" {
				return -1
			}
			return 1
		}
		return len(b.Path) - len(a.Path)
	})
	if catchAll != nil {
		ordered = append(ordered, catchAll)
	}
	for i, r := range ordered {
		r.Index = i
	}
	return &Table{routes: ordered}
}

// Match returns the route of a request, or nil.
func (t *Table) Match(host, path string) *Route {
	for _, r := range t.routes {
		if r.Matches(host, path) {
			return r
		}
	}
	return nil
}

// Routes returns the routes in matching order.
func (t *Table) Routes() []*Route { return t.routes }
