package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/pem"
	"github.com/kmsgate/kmsgate/gateway"
	"github.com/kmsgate/kmsgate/gateway/audit"
	"github.com/kmsgate/kmsgate/gateway/session"
	"github.com/kmsgate/kmsgate/jwks"
)

// serveFlags are the flags of `kmsgate serve`.
type serveFlags struct {
	keyFlags
	listen         string
	adminListen    string
	pprof          bool
	publicHealth   bool
	prefix         string
	escapedSlashes string
	auditLog       string
	requestLog     float64
	auditMaxMB     int
	auditBackups   int
	issuer         string
	jwksPaths      []string
	jwksMaxAge     time.Duration
	refresh        time.Duration
	tlsCert        string
	tlsKey         string
	tlsClientCA    string
	maxBody        int64
	grace          time.Duration
	dev            bool
	proxy          gateway.ProxyConfig
	trusted        []string
	allow          string
	clientSecret   string       // --oidc-client-secret, a reference
	cookieSecret   string       // --cookie-secret, a reference
	devSource      *jwks.Source // the --dev in-memory key
}

func newServeCmd() *cobra.Command {
	var sf serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the gateway: JWKS, discovery, sign API, health and metrics",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serve(cmd, &sf)
		},
	}
	sf.register(cmd)
	f := cmd.Flags()
	f.StringVar(&sf.listen, "listen", ":8080", "address to listen on (--dev: 127.0.0.1:8080)")
	f.StringVar(&sf.adminListen, "admin-listen", "127.0.0.1:9090", "address of the admin port: /metrics, /healthz, /readyz (never on the public port); empty: no admin port")
	f.BoolVar(&sf.pprof, "pprof", false, "serve Go runtime profiles under /debug/pprof/ on the admin port")
	f.BoolVar(&sf.publicHealth, "public-health", false, "also answer /healthz and /readyz on the public port (for load balancers that probe only the traffic port)")
	f.StringVar(&sf.prefix, "gateway-prefix", "", "path put before the gateway's own /v1/ endpoints (e.g. /.kmsgate), to leave /v1/ to an upstream")
	f.Float64Var(&sf.requestLog, "request-log-sample", 1, "share of requests logged at info (method, endpoint, status, duration, client address, subject; never a token): 1 all, 0 none, 0.01 one in a hundred")
	f.StringVar(&sf.auditLog, "audit-log", "-", "where the audit trail of issued tokens goes, one JSON line per token (never the token): - for stdout, a file (rotated), or off")
	f.IntVar(&sf.auditMaxMB, "audit-log-max-size", 100, "size in MiB at which the audit log file is rotated")
	f.IntVar(&sf.auditBackups, "audit-log-max-backups", 10, "rotated audit log files kept")
	f.StringVar(&sf.escapedSlashes, "escaped-slashes", "reject", "what to do with %2F and %5C (encoded slash and backslash) in a path: reject (400) or keep (forwarded encoded, never a separator)")
	f.StringVar(&sf.issuer, "issuer", "", "iss of every token and base URL of the jwks_uri, e.g. https://kmsgate.example.com (required)")
	f.StringSliceVar(&sf.jwksPaths, "jwks-path", nil, "extra paths serving the key set, e.g. /.well-known/pomerium/jwks.json")
	f.DurationVar(&sf.jwksMaxAge, "jwks-max-age", 300*time.Second, "Cache-Control max-age of the key set (capped at half of --prepublish)")
	f.DurationVar(&sf.refresh, "refresh", time.Minute, "how often the key versions are refreshed from the backends")
	f.StringVar(&sf.tlsCert, "tls-cert", "", "TLS certificate file (PEM); serves HTTPS with --tls-key")
	f.StringVar(&sf.tlsKey, "tls-key", "", "TLS private key file (PEM)")
	f.StringVar(&sf.tlsClientCA, "tls-client-ca", "", "CA bundle for client certificates (mTLS clients of the sign API)")
	f.Int64Var(&sf.maxBody, "max-body", 64<<10, "largest sign request body in bytes")
	f.DurationVar(&sf.grace, "shutdown-grace", 30*time.Second, "how long in-flight requests may finish after SIGTERM")
	f.StringVar(&sf.proxy.Upstream, "upstream", "", "upstream URL that receives every request no route matches, with a signed assertion")
	f.StringVar(&sf.proxy.Identity, "identity", "", "identity source for the proxy and /v1/auth: headers (oauth2-proxy, from --trusted-proxy), oidc (Authorization: Bearer), oidc-login (browser sign-in) or client-cert")
	f.StringVar(&sf.allow, "allow", "", "default policy for routes without one (and forward-auth requests no route matches): any-authenticated lets every identity through; for rules, use policy: in the config file")
	f.StringSliceVar(&sf.trusted, "trusted-proxy", nil, "CIDRs or addresses of the authenticating proxy in front, whose X-Forwarded-User/-Email/-Groups are trusted")
	f.StringVar(&sf.proxy.OIDCIssuer, "oidc-issuer", "", "issuer URL of the OIDC provider whose bearer tokens the oidc source accepts")
	f.StringVar(&sf.proxy.OIDCAudience, "oidc-audience", "", "audience (client id) the OIDC tokens must carry")
	f.StringVar(&sf.proxy.OIDCGroupsClaim, "oidc-groups-claim", "groups", "ID token claim holding the user's groups (oidc and oidc-login)")
	f.StringVar(&sf.proxy.SignIn.ClientID, "oidc-client-id", "", "oidc-login: the gateway's client id at the provider")
	f.StringVar(&sf.clientSecret, "oidc-client-secret", "", "oidc-login: where the client secret is, env://NAME or file:PATH (none: a public client, PKCE only)")
	f.StringVar(&sf.proxy.SignIn.RedirectURL, "oidc-redirect-url", "", "oidc-login: the callback registered at the provider (default: the request's host, https when served over TLS, + /v1/oidc/callback)")
	f.StringSliceVar(&sf.proxy.SignIn.Scopes, "oidc-scopes", []string{"openid", "email", "profile", "offline_access"}, "oidc-login: scopes asked for at sign-in")
	f.StringVar(&sf.cookieSecret, "cookie-secret", "", "oidc-login: where the session cookie keys are, env://NAME or file:PATH: lines of base64 32-byte keys, the first seals, all open (rotation)")
	f.StringVar(&sf.proxy.SignIn.Cookie.Name, "cookie-name", "_kmsgate", "oidc-login: name of the session cookie")
	f.StringVar(&sf.proxy.SignIn.Cookie.Domain, "cookie-domain", "", "oidc-login: domain the session cookie is sent to (default: only the host that set it)")
	f.BoolVar(&sf.proxy.SignIn.Cookie.Secure, "cookie-secure", true, "oidc-login: send the session cookie over HTTPS only (browsers also allow http://localhost)")
	f.DurationVar(&sf.proxy.SignIn.Lifetime, "session-lifetime", 12*time.Hour, "oidc-login: a session ends this long after sign-in")
	f.DurationVar(&sf.proxy.SignIn.Idle, "session-idle", time.Hour, "oidc-login: a session unused for this long ends")
	f.StringVar(&sf.proxy.Header, "assertion-header", gateway.DefaultAssertionHeader, "header carrying the signed identity assertion (X-Pomerium-Jwt-Assertion for drop-in use)")
	f.DurationVar(&sf.proxy.TTL, "assertion-ttl", 5*time.Minute, "lifetime of an identity assertion; cached copies are reused for 80% of it")
	f.IntVar(&sf.proxy.CacheSize, "assertion-cache-size", 10000, "most cached assertions (per identity and audience), least recently used out first")
	f.DurationVar(&sf.proxy.UpstreamTimeout, "upstream-timeout", 60*time.Second, "longest wait for the next bytes of an upstream's response; then the request fails (502 before the response started)")
	f.BoolVar(&sf.dev, "dev", false, "development mode: an in-memory key and a printed client token; never for production")
	return cmd
}

// configSectionsFile is the structured part of the config file.
type configSectionsFile struct {
	Clients []gateway.Client   `yaml:"clients"`
	Routes  []gateway.Route    `yaml:"routes"`
	Policy  gateway.PolicySpec `yaml:"policy"`
	Rest    map[string]any     `yaml:",inline"`
}

func serve(cmd *cobra.Command, sf *serveFlags) error {
	ctx := cmd.Context()
	if os.Getenv("GOGC") == "" {
		// The live heap is a few MB, so the default GOGC=100 collects
		// dozens of times a second under load; 400 trades a few MB of
		// memory for much less GC work and tail latency.
		debug.SetGCPercent(400)
	}
	log := slog.Default()
	var sections configSectionsFile
	if cfg := configFrom(cmd); cfg != nil && cfg.doc != nil {
		// Every key was checked by loadConfig; unknown ones are refused there.
		if err := cfg.doc.Decode(&sections); err != nil {
			return usagef("config: %s", yamlError(err))
		}
	}
	if err := preflight(sf, &sections); err != nil {
		return err
	}
	var devToken string
	var ln net.Listener // listened on early only by --dev without --issuer
	defer func() {
		if ln != nil {
			_ = ln.Close() // Serve has not taken it; closing again is harmless
		}
	}()
	if sf.dev {
		if !cmd.Flags().Changed("listen") {
			sf.listen = "127.0.0.1:8080"
		}
		if sf.issuer == "" {
			// The issuer names the address actually listened on (":0"
			// and ":8080" are no URLs a verifier can fetch).
			var err error
			if ln, err = net.Listen("tcp", sf.listen); err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			scheme := "http"
			if sf.tlsCert != "" {
				scheme = "https"
			}
			sf.issuer = scheme + "://" + reachable(ln.Addr())
		}
		var err error
		if devToken, err = setupDev(sf, &sections); err != nil {
			return err
		}
	}
	tlsCfg, err := loadTLS(sf.tlsCert, sf.tlsKey, sf.tlsClientCA)
	if err != nil {
		return err
	}

	metrics := gateway.NewMetrics()
	bi := buildInfo()
	metrics.SetBuildInfo(bi.Version, bi.Commit, bi.Date)
	sf.devMode = sf.dev
	kr, closeAll, err := sf.open(ctx, jwks.Config{Logger: log, OnSign: metrics.OnSign, OnRefresh: metrics.OnRefresh}, sf.devSource)
	if err != nil {
		return err
	}
	defer closeAll()
	for _, t := range sf.trusted {
		p, _ := parsePrefix(t) // checked by preflight
		sf.proxy.TrustedProxies = append(sf.proxy.TrustedProxies, p)
	}
	sf.proxy.Routes = sections.Routes
	if sf.allow != "" {
		sf.proxy.Policy = gateway.MustParsePolicy("allow: " + sf.allow) // checked by preflight
	} else {
		sf.proxy.Policy = sections.Policy
	}
	auditLog, closeAudit, err := audit.Open(sf.auditLog, sf.auditMaxMB, sf.auditBackups, func(err error) {
		log.Error("audit record not written", "err", err.Error())
	})
	if err != nil {
		return usagef("--audit-log: %v", err)
	}
	defer closeAudit.Close()
	srv, err := gateway.New(ctx, gateway.Config{
		Issuer: sf.issuer, JWKSPaths: sf.jwksPaths, MaxAge: sf.jwksMaxAge, Prepublish: sf.prepublish,
		RequestTimeout: sf.requestTimeout, MaxBody: sf.maxBody, Clients: sections.Clients, Proxy: sf.proxy, Logger: log,
		Prefix: sf.prefix, PublicHealth: sf.publicHealth, KeepEscapedSlashes: sf.escapedSlashes == "keep", Audit: auditLog, RequestLogSample: sf.requestLog,
	}, kr, metrics)
	if err != nil {
		return usageError{err}
	}

	refreshTimeout := max(sf.requestTimeout, 10*time.Second)
	rctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	err = kr.Refresh(rctx)
	cancel()
	if err != nil {
		// A key of the wrong type, or a URI that names nothing, will not
		// fix itself: refuse to start. Anything else (a backend that is
		// down) is retried in the background while /readyz says 503.
		if errors.Is(err, backends.ErrKeyType) || errors.Is(err, backends.ErrInvalidURI) || errors.Is(err, backends.ErrConfig) || errors.Is(err, backends.ErrNotFound) {
			return err
		}
		log.Warn("starting unready; the key URIs that did not load are retried in the background (readiness on the admin port says which)")
	}

	if ln == nil {
		if ln, err = net.Listen("tcp", sf.listen); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
	}
	var adminLn net.Listener
	if sf.adminListen != "" {
		if adminLn, err = net.Listen("tcp", sf.adminListen); err != nil {
			_ = ln.Close()
			return fmt.Errorf("admin listen (--admin-listen): %w", err)
		}
	} else if sf.pprof {
		_ = ln.Close()
		return usagef("--pprof needs the admin port (--admin-listen)")
	}
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	adminAddr := "off"
	if adminLn != nil {
		adminAddr = adminLn.Addr().String()
	}
	st := kr.State()
	var uris []string
	for _, src := range kr.Sources() {
		uris = append(uris, backends.Redact(src.URI))
	}
	log.Info("listening", "addr", ln.Addr().String(), "scheme", scheme, "admin", adminAddr, "issuer", sf.issuer,
		"key_uris", uris, "published", len(st.Plan.Keys), "active_kid", kr.ActiveKID(), "ready", st.Ready,
		"identity", dash(sf.proxy.Identity), "routes", srv.RouteSummary(), "audit_log", sf.auditLog)
	if sf.dev {
		admin := "(no admin port)"
		if adminLn != nil {
			admin = "http://" + adminLn.Addr().String()
		}
		printDevHelp(cmd.OutOrStdout(), scheme+"://"+ln.Addr().String(), admin, devToken)
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go kr.Run(runCtx, sf.refresh, refreshTimeout)
	adminDone := make(chan error, 1)
	if adminLn != nil {
		log.Info("admin listening", "addr", adminLn.Addr().String(), "pprof", sf.pprof)
		go func() { adminDone <- srv.ServeAdmin(runCtx, adminLn, sf.pprof) }()
	} else {
		adminDone <- nil
	}
	err = srv.Serve(ctx, ln, tlsCfg, sf.grace)
	stop()
	return errors.Join(err, <-adminDone)
}

// reachable returns host:port of a listening address as a client on this
// machine reaches it: an unspecified address (":8080") is loopback.
func reachable(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	ip := ta.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(ta.Port))
}

// preflight checks, before anything is opened, every requirement of serve
// that the flags, environment and config file alone decide, and reports
// all that are not met at once, each in the user's words (flag, variable,
// config key).
func preflight(sf *serveFlags, sections *configSectionsFile) error {
	var p []string
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	if !sf.dev {
		if sf.issuer == "" {
			add("--issuer (KMSGATE_ISSUER, config issuer) is required: the iss of every token, e.g. https://kmsgate.example.com")
		}
		if len(sf.keys) == 0 {
			add("--key (KMSGATE_KEY, config key) is required: a key URI such as gcpkms://…, awskms:///alias/…, hashivault://NAME or file:///keys.pem")
		}
	}
	if sf.refresh <= 0 {
		add("--refresh %s must be positive", sf.refresh)
	}
	if sf.escapedSlashes != "reject" && sf.escapedSlashes != "keep" {
		add("--escaped-slashes %q: want reject or keep", sf.escapedSlashes)
	}
	if sf.requestLog < 0 || sf.requestLog > 1 {
		add("--request-log-sample %v: want a share between 0 (none) and 1 (every request)", sf.requestLog)
	}
	if sf.auditLog != "-" && sf.auditLog != "off" && sf.auditLog != "" && (sf.auditMaxMB <= 0 || sf.auditBackups < 0) {
		add("--audit-log-max-size must be positive and --audit-log-max-backups not negative for an audit log file")
	}
	if (sf.tlsCert == "") != (sf.tlsKey == "") {
		add("--tls-cert and --tls-key go together")
	}
	if sf.tlsClientCA != "" && sf.tlsCert == "" {
		add("--tls-client-ca needs --tls-cert and --tls-key")
	}
	if sf.allow != "" && sf.allow != gateway.AnyAuthenticated {
		add("--allow %q: want %s (rules go in the config file's policy:)", sf.allow, gateway.AnyAuthenticated)
	}
	if sf.allow != "" && !sections.Policy.IsZero() {
		add("--allow and the config file's policy: both set the default policy; keep one")
	}
	if sf.cookieSecret != "" {
		data, err := readSecret(sf.cookieSecret)
		if err == nil {
			sf.proxy.SignIn.Sealer, err = session.ParseKeys([]byte(data), sf.cookieSecret)
		}
		if err != nil {
			add("--cookie-secret: %v", err)
		}
	}
	if sf.clientSecret != "" {
		secret, err := readSecret(sf.clientSecret)
		if err != nil {
			add("--oidc-client-secret: %v", err)
		}
		sf.proxy.SignIn.ClientSecret = secret
	}
	if sf.proxy.SignIn.Lifetime <= 0 || sf.proxy.SignIn.Idle <= 0 {
		add("--session-lifetime and --session-idle must be positive")
	}
	pc := sf.proxy
	pc.Routes, pc.TrustedProxies = sections.Routes, nil
	for _, t := range sf.trusted {
		pfx, err := parsePrefix(t)
		if err != nil {
			add("--trusted-proxy %q: %v", t, err)
			continue
		}
		pc.TrustedProxies = append(pc.TrustedProxies, pfx)
	}
	p = append(p, gateway.IdentityProblems(pc)...)
	// Only here is TLS known: client certificates need it, with a CA.
	if sf.tlsCert == "" || sf.tlsClientCA == "" {
		var where []string
		if pc.Identity == gateway.SourceClientCert {
			where = append(where, "--identity")
		}
		for i, r := range pc.Routes {
			if r.Identity == gateway.SourceClientCert {
				where = append(where, fmt.Sprintf("route %d", i+1))
			}
		}
		if len(where) > 0 {
			add("identity client-cert (%s) needs TLS that asks for client certificates: --tls-cert, --tls-key and --tls-client-ca", strings.Join(where, ", "))
		}
	}
	slices.Sort(p)
	switch len(p) {
	case 0:
		return nil
	case 1:
		return usagef("%s%s", p[0], devHint(sf))
	}
	return usagef("%d problems with the configuration:\n  - %s%s", len(p), strings.Join(p, "\n  - "), devHint(sf))
}

// devHint suggests --dev to someone trying kmsgate without a key or issuer.
func devHint(sf *serveFlags) string {
	if sf.dev || (sf.issuer != "" && len(sf.keys) > 0) {
		return ""
	}
	return "\n(to try kmsgate without a KMS: kmsgate serve --dev)"
}

// setupDev adds an in-memory key when no --key is given and a development
// client with a fresh random token, which it returns.
func setupDev(sf *serveFlags, sections *configSectionsFile) (string, error) {
	if len(sf.keys) == 0 {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", err
		}
		b, err := pem.New("dev", k)
		if err != nil {
			return "", err
		}
		sf.devSource = &jwks.Source{URI: "dev://in-memory", Backend: b}
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	tok := "dev-" + base64.RawURLEncoding.EncodeToString(raw[:])
	sum := sha256.Sum256([]byte(tok))
	sections.Clients = append(sections.Clients, gateway.Client{
		Name: "dev", TokenSHA256: hex.EncodeToString(sum[:]),
		Audiences: []string{"*"}, Subjects: []string{"*"}, MaxTTL: time.Hour, Claims: []string{"*"},
	})
	return tok, nil
}

func printDevHelp(w io.Writer, base, admin, token string) {
	fmt.Fprintf(w, `
kmsgate is running in development mode: an in-memory key that is gone when it stops.
Never use --dev in production.

  JWKS:            %[1]s/.well-known/jwks.json
  discovery:       %[1]s/.well-known/openid-configuration
  dev client token: %[2]s
  admin port:      %[3]s (/metrics, /healthz, /readyz)

Try:
  curl -s %[1]s/.well-known/jwks.json
  curl -s -X POST %[1]s/v1/sign -H 'Authorization: Bearer %[2]s' \
       -d '{"claims":{"sub":"alice","aud":"demo"},"ttl":"5m"}'
  kmsgate verify --jwks %[1]s/.well-known/jwks.json TOKEN

`, base, token, admin)
}

// loadTLS builds the server's TLS configuration, or nil without --tls-cert.
// With a client CA, client certificates are verified when presented, so
// bearer-token clients keep working beside mTLS clients.
func loadTLS(certFile, keyFile, clientCA string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		if clientCA != "" {
			return nil, usagef("--tls-client-ca needs --tls-cert and --tls-key")
		}
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, usagef("--tls-cert and --tls-key go together")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate %s: %w", certFile, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	if clientCA != "" {
		pemData, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, fmt.Errorf("client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("client CA %s: no PEM certificate in it", clientCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

// parsePrefix reads a CIDR, or a single address as a one-address prefix.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// readSecret reads a secret from env://NAME or file:PATH, trimmed of
// surrounding white space. The secret never appears in an error.
func readSecret(ref string) (string, error) {
	switch {
	case strings.HasPrefix(ref, "env://"):
		v, ok := os.LookupEnv(strings.TrimPrefix(ref, "env://"))
		if !ok || strings.TrimSpace(v) == "" {
			return "", fmt.Errorf("%s: the variable is not set or empty", ref)
		}
		return strings.TrimSpace(v), nil
	case strings.HasPrefix(ref, "file:"):
		b, err := os.ReadFile(strings.TrimPrefix(strings.TrimPrefix(ref, "file:"), "//"))
		if err != nil {
			return "", err
		}
		if strings.TrimSpace(string(b)) == "" {
			return "", fmt.Errorf("%s is empty", ref)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", fmt.Errorf("%q: want env://NAME or file:PATH (a secret is never given on the command line)", ref)
}
