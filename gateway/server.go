package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/jwks"
)

// Config holds the server's settings (the serve flags and config file).
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
	// Proxy configures the reverse proxy, forward-auth and identity
	// assertions; its zero value serves no proxy.
	Proxy ProxyConfig
	// Logger receives the server's logs; slog.Default when nil.
	Logger *slog.Logger
}

// DefaultJWKSPath is where the key set is always served.
const DefaultJWKSPath = "/.well-known/jwks.json"

// Server is the gateway's HTTP server.
type Server struct {
	cfg     Config
	keys    *jwks.Keyring
	clients *clientSet
	metrics *Metrics
	log     *slog.Logger
	echo    *echo.Echo
	proxy   *proxyState

	cacheControl      []string
	cacheControlBytes []byte
	adaptor           fasthttp.RequestHandler // HTTP/1.x requests to the echo routes
	ownPaths          map[string]bool         // paths the echo routes answer, never proxied
	ownPrefixes       []string                // path prefixes the echo routes answer
	discovery         []byte
	discoveryTag      string
}

// New validates cfg and builds the server over a keyring. m may be nil. ctx
// bounds the start-up calls (the OIDC issuer's discovery document).
func New(ctx context.Context, cfg Config, kr *jwks.Keyring, m *Metrics) (*Server, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("gateway: no issuer (--issuer): it is the iss of every token and the base of the jwks_uri")
	}
	if u, err := parseIssuer(cfg.Issuer); err != nil {
		return nil, err
	} else {
		cfg.Issuer = u
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
	if cfg.MaxAge < 0 {
		return nil, fmt.Errorf("gateway: JWKS max-age %s is negative", cfg.MaxAge)
	}
	if limit := cfg.Prepublish / 2; cfg.MaxAge > limit {
		cfg.Logger.Info("JWKS max-age capped at half of --prepublish", "max_age", cfg.MaxAge.String(), "capped", limit.String())
		cfg.MaxAge = limit
	}
	for _, p := range cfg.JWKSPaths {
		if !strings.HasPrefix(p, "/") {
			return nil, fmt.Errorf("gateway: --jwks-path %q must start with /", p)
		}
	}
	clients, err := newClientSet(cfg.Clients)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if m == nil {
		m = NewMetrics()
	}
	m.Registry.MustRegister(newKeyStateCollector(kr))
	s := &Server{
		cfg: cfg, keys: kr, clients: clients, metrics: m, log: cfg.Logger,
		cacheControl: []string{"public, max-age=" + strconv.Itoa(int(cfg.MaxAge/time.Second))},
	}
	s.discovery, _ = json.Marshal(map[string]any{
		"issuer":                                cfg.Issuer,
		"jwks_uri":                              cfg.Issuer + DefaultJWKSPath,
		"id_token_signing_alg_values_supported": []string{"ES256"},
		"response_types_supported":              []string{"id_token"},
		"subject_types_supported":               []string{"public"},
	})
	s.discoveryTag = etagOf(s.discovery)
	if s.proxy, err = s.buildProxy(ctx); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	s.cacheControlBytes = []byte(s.cacheControl[0])
	s.echo = s.routes()
	s.claimPaths()
	// fasthttp's request context ends when the server shuts down; in-flight
	// requests must finish, so echo sees a context without that end.
	s.adaptor = fasthttpadaptor.NewFastHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.echo.ServeHTTP(w, r.WithContext(context.WithoutCancel(r.Context())))
	}))
	return s, nil
}

// parseIssuer checks that the issuer is an absolute http(s) URL and returns
// it without a trailing slash.
func parseIssuer(iss string) (string, error) {
	if !strings.HasPrefix(iss, "https://") && !strings.HasPrefix(iss, "http://") {
		return "", fmt.Errorf("gateway: issuer %q must be an http:// or https:// URL", iss)
	}
	return strings.TrimRight(iss, "/"), nil
}

// Echo returns the server's echo instance, so that more routes (the proxy)
// can be added.
func (s *Server) Echo() *echo.Echo { return s.echo }

// Metrics returns the server's metrics.
func (s *Server) Metrics() *Metrics { return s.metrics }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil {
		// A TLS connection the fasthttp front handed off.
		if st, ok := r.Context().Value(tlsStateKey{}).(*tls.ConnectionState); ok {
			r.TLS = st
		}
	}
	s.echo.ServeHTTP(w, r)
}

func (s *Server) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler
	e.Use(s.observe)
	for _, p := range append([]string{DefaultJWKSPath}, s.cfg.JWKSPaths...) {
		e.GET(p, s.handleJWKS)
		e.HEAD(p, s.handleJWKS)
		e.OPTIONS(p, s.handlePreflight)
	}
	e.GET("/.well-known/openid-configuration", s.handleDiscovery)
	e.HEAD("/.well-known/openid-configuration", s.handleDiscovery)
	e.OPTIONS("/.well-known/openid-configuration", s.handlePreflight)
	e.POST("/v1/sign", s.handleSign)
	e.GET("/healthz", s.handleHealth)
	e.GET("/readyz", s.handleReady)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{})))
	if s.proxy != nil {
		e.Any("/v1/auth", s.handleForwardAuth)
		e.Any("/v1/auth/*", s.handleForwardAuth) // Envoy ext_authz path_prefix appends the original path
		if len(s.proxy.routes) > 0 {
			e.Any("/", s.handleProxy)
			e.Any("/*", s.handleProxy)
		}
	}
	return e
}

// observe counts and times every request by route and status, and logs it
// at debug level (method, route, status, duration; never headers or query).
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		if err != nil {
			c.Error(err)
		}
		endpoint := c.Path()
		switch {
		case endpoint == "/" || endpoint == "/*":
			endpoint = "proxy"
		case endpoint == "":
			endpoint = "other"
		}
		status := c.Response().Status
		took := time.Since(start)
		rm := s.metrics.route(endpoint, status)
		rm.requests.Inc()
		rm.duration.Observe(took.Seconds())
		if s.log.Enabled(c.Request().Context(), slog.LevelDebug) {
			s.log.Debug("request", "method", c.Request().Method, "endpoint", endpoint, "status", status, "took_ms", float64(took.Microseconds())/1000)
		}
		return nil
	}
}

var (
	jsonContentType = []string{"application/json"}
	corsAny         = []string{"*"}
)

// handleJWKS serves the key set from memory; it never calls a backend.
func (s *Server) handleJWKS(c echo.Context) error {
	st := s.keys.State()
	s.metrics.jwksRequests.Inc()
	h := c.Response().Header()
	h["Access-Control-Allow-Origin"] = corsAny
	if !st.Ready {
		// An empty or partial set (a URI that has not loaded yet may hold
		// the key that signed live tokens) would be cached by verifiers
		// for max-age: refuse until every key URI has loaded.
		h.Set("Retry-After", "2")
		return fail(c, http.StatusServiceUnavailable, "not_ready", "the key set has not loaded yet")
	}
	return s.serveDocument(c, st.Document.JSON, st.Document.ETag)
}

func (s *Server) handleDiscovery(c echo.Context) error {
	s.metrics.jwksRequests.Inc()
	c.Response().Header()["Access-Control-Allow-Origin"] = corsAny
	return s.serveDocument(c, s.discovery, s.discoveryTag)
}

// serveDocument writes a cacheable JSON document, or 304 when the client's
// If-None-Match names its ETag.
func (s *Server) serveDocument(c echo.Context, body []byte, etag string) error {
	h := c.Response().Header()
	h["Cache-Control"] = s.cacheControl
	h["Etag"] = []string{etag}
	if inm := c.Request().Header.Get("If-None-Match"); inm != "" && etagMatches(inm, etag) {
		s.metrics.jwksNotModified.Inc()
		return c.NoContent(http.StatusNotModified)
	}
	h["Content-Type"] = jsonContentType
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	c.Response().WriteHeader(http.StatusOK)
	if c.Request().Method == http.MethodHead {
		return nil
	}
	_, err := c.Response().Write(body)
	return err
}

func (s *Server) handlePreflight(c echo.Context) error {
	h := c.Response().Header()
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
	h.Set("Access-Control-Allow-Headers", "If-None-Match")
	h.Set("Access-Control-Max-Age", "86400")
	return c.NoContent(http.StatusNoContent)
}

// etagMatches implements If-None-Match's weak comparison (RFC 9110 13.1.2)
// over a comma-separated list, with "*" matching any.
func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == etag {
			return true
		}
	}
	return false
}

func (s *Server) handleHealth(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

// handleReady answers 200 once every key URI has loaded once, 503 before,
// naming the URIs still missing.
func (s *Server) handleReady(c echo.Context) error {
	st := s.keys.State()
	if st.Ready {
		return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
	}
	var missing []string
	for i, src := range s.keys.Sources() {
		if i >= len(st.Loaded) || !st.Loaded[i] {
			missing = append(missing, backends.Redact(src.URI))
		}
	}
	return c.JSON(http.StatusServiceUnavailable, map[string]any{"status": "not ready", "not_loaded": missing})
}
