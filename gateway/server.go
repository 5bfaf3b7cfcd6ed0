// Package gateway is kmsgate's HTTP layer, wired from small packages that
// show where a request goes:
//
//   - front: the listener and the two thin servers (fasthttp for HTTP/1.x,
//     net/http with echo for HTTP/2, h2c and WebSocket), and the admin port;
//   - core: the one protocol-neutral handling of every request (endpoints,
//     key set and discovery, sign API, forward-auth, the decision to
//     forward);
//   - route: the path rule and the table of upstream routes;
//   - identity: who a request is for;
//   - policy: who may pass a route;
//   - assertion: the signed identity assertion, cached;
//   - proxy: the forwarding plan and the hop-by-hop and X-Forwarded rules;
//   - header: header-name rules; metrics: what is counted.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/kmsgate/kmsgate/gateway/core"
	"github.com/kmsgate/kmsgate/gateway/front"
	"github.com/kmsgate/kmsgate/gateway/identity"
	"github.com/kmsgate/kmsgate/gateway/metrics"
	"github.com/kmsgate/kmsgate/gateway/policy"
	"github.com/kmsgate/kmsgate/gateway/proxy"
	"github.com/kmsgate/kmsgate/gateway/route"
	"github.com/kmsgate/kmsgate/jwks"
)

// Config holds the server's settings (the serve flags and config file).
type Config = core.Config

// ProxyConfig is the gateway-in-front-of-apps part of the configuration.
type ProxyConfig = core.ProxyConfig

// Client is one caller of the sign API (config file `clients:`).
type Client = core.Client

// Route sends matching requests to an upstream (config file `routes:`).
type Route = route.Route

// PolicySpec is a policy as written in the config file (package policy).
type PolicySpec = policy.Spec

// GroupsFilter cuts a route's groups claim down (package identity).
type GroupsFilter = identity.GroupsFilter

// AnyAuthenticated is the allow value that lets every identity through.
const AnyAuthenticated = policy.AnyAuthenticated

// MustParsePolicy reads a policy fixed in code; it panics on a mistake.
func MustParsePolicy(text string) PolicySpec { return policy.MustParseSpec(text) }

// Metrics holds the gateway's Prometheus metrics.
type Metrics = metrics.Metrics

// NewMetrics registers the gateway's metrics on a new registry.
func NewMetrics() *Metrics { return metrics.New() }

// Names re-exported for the command and tests.
const (
	DefaultJWKSPath        = core.DefaultJWKSPath
	DefaultAssertionHeader = proxy.DefaultAssertionHeader
	SourceHeaders          = identity.SourceHeaders
	SourceOIDC             = identity.SourceOIDC
	SourceClientCert       = identity.SourceClientCert
	SourceOIDCLogin        = identity.SourceOIDCLogin
)

// IdentityProblems lists what keeps a proxy configuration's identity
// sources from working (see core.IdentityProblems).
func IdentityProblems(pc ProxyConfig) []string { return core.IdentityProblems(pc) }

// Server is the gateway: the public server and the admin handler over one
// core.
type Server struct {
	core  *core.Core
	front *front.Server
}

// New validates cfg and builds the server over a keyring. m may be nil. ctx
// bounds the start-up calls (the OIDC issuer's discovery document).
func New(ctx context.Context, cfg Config, kr *jwks.Keyring, m *Metrics) (*Server, error) {
	c, err := core.New(ctx, cfg, kr, m)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	return &Server{core: c, front: front.New(c)}, nil
}

// RouteSummary describes the upstream routes in matching order, for the
// start-up log: "host/path -> upstream (identity, own or default policy)".
func (s *Server) RouteSummary() []string {
	out := []string{}
	for _, r := range s.core.Routes() {
		host := r.Host
		if host == "" {
			host = "*"
		}
		pol := "default policy"
		if !r.Policy.IsZero() {
			pol = "own policy"
		}
		out = append(out, host+r.Path+" -> "+r.Target.Redacted()+" ("+r.Identity+", "+pol+")")
	}
	return out
}

// Metrics returns the server's metrics.
func (s *Server) Metrics() *Metrics { return s.core.Metrics() }

// Serve answers the public port on ln until ctx ends, then lets in-flight
// requests finish for up to grace. With tlsCfg it serves TLS (HTTP/1.1 and
// h2 by ALPN); without, HTTP/1.1 and h2c with prior knowledge.
func (s *Server) Serve(ctx context.Context, ln net.Listener, tlsCfg *tls.Config, grace time.Duration) error {
	return s.front.Serve(ctx, ln, tlsCfg, grace)
}

// AdminHandler returns the admin port's handler (/metrics, /healthz,
// /readyz, and /debug/pprof/ with withPprof).
func (s *Server) AdminHandler(withPprof bool) http.Handler { return front.Admin(s.core, withPprof) }

// ServeAdmin answers the admin port on ln until ctx ends.
func (s *Server) ServeAdmin(ctx context.Context, ln net.Listener, withPprof bool) error {
	srv := &http.Server{
		Handler:           s.AdminHandler(withPprof),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.core.Logger().Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("gateway: admin: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("gateway: admin shutdown: %w", err)
	}
	return nil
}
