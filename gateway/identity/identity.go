// Package identity establishes who a request is for: the identity sources
// (headers from a trusted authenticating proxy, OIDC bearer tokens, TLS
// client certificates) over a protocol-neutral view of the request.
package identity

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

// Identity is who a forwarded request is for, as an identity source
// established it; it becomes the claims of the signed assertion.
type Identity struct {
	Subject string
	User    string
	Email   string
	Groups  []string
	Name    string
}

// Key returns the assertion cache's key of the identity and an audience:
// every field, length-prefixed so that no two identities share a key.
func (id Identity) Key(audience string) string {
	n := len(audience) + len(id.Subject) + len(id.User) + len(id.Email) + len(id.Name) + 8*(5+len(id.Groups))
	for _, g := range id.Groups {
		n += len(g)
	}
	b := make([]byte, 0, n)
	add := func(s string) {
		b = strconv.AppendInt(b, int64(len(s)), 10)
		b = append(b, ':')
		b = append(b, s...)
	}
	add(audience)
	add(id.Subject)
	add(id.User)
	add(id.Email)
	add(id.Name)
	for _, g := range id.Groups {
		add(g)
	}
	return string(b)
}

// Identity source names, for --identity and a route's identity.
const (
	SourceHeaders    = "headers"
	SourceOIDC       = "oidc"
	SourceClientCert = "client-cert"
)

// ErrNoIdentity and ErrSpoofed are the two ways a request can fail to carry
// an acceptable identity: 401 and 403.
var (
	ErrNoIdentity = errors.New("no acceptable identity")
	ErrSpoofed    = errors.New("identity headers from an untrusted address")
)

// Source establishes the identity behind a request.
type Source interface {
	Identify(r Request) (Identity, error)
}

// Request is what an identity source reads from a request, whichever HTTP
// server received it.
type Request interface {
	Context() context.Context
	// Header returns the first value of a header, by canonical name.
	Header(name string) string
	// HeaderValues returns every value of a header, by canonical name.
	HeaderValues(name string) []string
	// HasHeader reports whether any variant of names is present (see
	// header.SameName).
	HasHeader(names []string) bool
	// Peer is the address of the connection's other end.
	Peer() netip.Addr
	// TLS is the connection's TLS state, nil without TLS.
	TLS() *tls.ConnectionState
}

// ForwardedHeaders are oauth2-proxy's identity headers, trusted only
// from --trusted-proxy addresses.
var ForwardedHeaders = []string{"X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups", "X-Forwarded-Preferred-Username"}

// headerSource reads the identity an authenticating proxy in front (such as
// oauth2-proxy) put in X-Forwarded-User, -Email, -Groups and
// -Preferred-Username, accepting them only from trusted addresses.
type headerSource struct{ trusted []netip.Prefix }

// NewHeaderSource returns the headers source, which accepts identity
// headers only from peers in trusted.
func NewHeaderSource(trusted []netip.Prefix) Source { return headerSource{trusted: trusted} }

func (s headerSource) Identify(r Request) (Identity, error) {
	if !Trusted(r.Peer(), s.trusted) {
		if r.HasHeader(ForwardedHeaders) {
			return Identity{}, ErrSpoofed
		}
		return Identity{}, ErrNoIdentity
	}
	user := r.Header("X-Forwarded-User")
	id := Identity{
		Subject: user,
		User:    user,
		Email:   r.Header("X-Forwarded-Email"),
		Name:    r.Header("X-Forwarded-Preferred-Username"),
	}
	for _, v := range r.HeaderValues("X-Forwarded-Groups") {
		for _, g := range strings.Split(v, ",") {
			if g = strings.TrimSpace(g); g != "" {
				id.Groups = append(id.Groups, g)
			}
		}
	}
	if id.Subject == "" {
		id.Subject = id.Email
	}
	if id.Subject == "" {
		return Identity{}, ErrNoIdentity
	}
	return id, nil
}

// Trusted reports whether a peer address is in one of the trusted
// prefixes.
func Trusted(ip netip.Addr, trusted []netip.Prefix) bool {
	if len(trusted) == 0 || !ip.IsValid() {
		return false
	}
	return slices.ContainsFunc(trusted, func(p netip.Prefix) bool { return p.Contains(ip) })
}

// ErrUnavailable is the failure of a source that cannot judge requests
// yet (its identity provider has not been reached): 503, not 401.
var ErrUnavailable = errors.New("the identity provider has not been reached yet")

// Readier is a source that may not be ready to judge requests yet.
type Readier interface {
	// Ready reports whether the source can judge requests, and if not,
	// what it waits for.
	Ready() (bool, string)
}

// oidcSource verifies an Authorization: Bearer OIDC token against its
// issuer's discovery document and JWKS (go-oidc): issuer, audience, expiry
// and an asymmetric algorithm are checked. Until the discovery document has
// been fetched it refuses every request with ErrUnavailable and retries in
// the background, so an identity provider that is down at start makes the
// gateway start unready instead of failing.
type oidcSource struct {
	issuer, audience string
	timeout          time.Duration // bounds a verification, which may fetch the issuer's JWKS
	verifier         atomic.Pointer[oidc.IDTokenVerifier]
	client           *http.Client
}

// NewOIDCSource returns the oidc source of an issuer and audience. It
// fetches the issuer's discovery document within ctx's first 15 s; if that
// fails, it keeps retrying in the background until ctx ends (every 1 s at
// first, backing off to 30 s), logging each failure to log. Only a
// configuration that can never work is an error.
func NewOIDCSource(ctx context.Context, issuer, audience string, timeout time.Duration, log *slog.Logger) (Source, error) {
	if issuer == "" || audience == "" {
		return nil, errors.New("the oidc identity source needs --oidc-issuer and --oidc-audience")
	}
	if u, err := url.Parse(issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("--oidc-issuer %q must be an http:// or https:// URL", issuer)
	}
	// go-oidc fetches the JWKS in the background with this client; without a
	// timeout, one hung fetch would hold every later verification.
	s := &oidcSource{issuer: issuer, audience: audience, timeout: timeout, client: &http.Client{Timeout: 10 * time.Second}}
	if err := s.connect(ctx); err != nil {
		log.Warn("oidc issuer not reachable; oidc requests get 503 and the gateway is not ready until it is", "issuer", issuer, "err", err.Error())
		go s.retry(ctx, log)
	}
	return s, nil
}

// connect fetches the discovery document and installs the verifier.
func (s *oidcSource) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	// The provider's JWKS fetches outlive this call: their client, not ctx.
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, s.client), s.issuer)
	if err != nil {
		return fmt.Errorf("oidc issuer %s: %w", s.issuer, err)
	}
	s.verifier.Store(p.VerifierContext(oidc.ClientContext(context.Background(), s.client), &oidc.Config{
		ClientID: s.audience,
		SupportedSigningAlgs: []string{oidc.RS256, oidc.RS384, oidc.RS512, oidc.ES256, oidc.ES384, oidc.ES512,
			oidc.PS256, oidc.PS384, oidc.PS512, oidc.EdDSA},
	}))
	return nil
}

// retry connects until it succeeds or ctx ends.
func (s *oidcSource) retry(ctx context.Context, log *slog.Logger) {
	wait := time.Second
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		err := s.connect(ctx)
		if err == nil {
			log.Info("oidc issuer reached; oidc requests are judged", "issuer", s.issuer)
			return
		}
		log.Warn("oidc issuer still not reachable", "issuer", s.issuer, "err", err.Error(), "retry_in", (2 * wait).String())
		wait = min(2*wait, 30*time.Second)
	}
}

// Ready implements Readier.
func (s *oidcSource) Ready() (bool, string) {
	if s.verifier.Load() == nil {
		return false, "oidc issuer " + s.issuer
	}
	return true, ""
}

func (s *oidcSource) Identify(r Request) (Identity, error) {
	auth := r.Header("Authorization")
	scheme, raw, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || raw == "" {
		return Identity{}, ErrNoIdentity
	}
	raw = strings.TrimSpace(raw)
	if !compactJWS(raw) {
		// go-jose would strip white space inside the token and verify
		// what is left; only the compact form is a bearer token.
		return Identity{}, fmt.Errorf("%w: the bearer token is not a compact JWS (three base64url parts)", ErrNoIdentity)
	}
	v := s.verifier.Load()
	if v == nil {
		return Identity{}, ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	tok, err := v.Verify(ctx, raw)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrNoIdentity, err)
	}
	var c struct {
		Email             string `json:"email"`
		Name              string `json:"name"`
		PreferredUsername string `json:"preferred_username"`
		Groups            any    `json:"groups"`
	}
	if err := tok.Claims(&c); err != nil {
		return Identity{}, fmt.Errorf("%w: claims: %v", ErrNoIdentity, err)
	}
	id := Identity{Subject: tok.Subject, User: tok.Subject, Email: c.Email, Name: c.Name}
	if c.PreferredUsername != "" {
		id.User = c.PreferredUsername
	}
	switch g := c.Groups.(type) {
	case string:
		id.Groups = []string{g}
	case []any:
		for _, v := range g {
			if s, ok := v.(string); ok {
				id.Groups = append(id.Groups, s)
			}
		}
	}
	return id, nil
}

// compactJWS reports whether s has the form of a JWS compact serialization
// (RFC 7515 7.1): three base64url parts separated by dots, nothing else.
func compactJWS(s string) bool {
	dots := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '.':
			dots++
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return dots == 2
}

// certSource takes the identity from a verified TLS client certificate:
// sub is the subject DN, user and name its common name, email the first
// email SAN, groups its organizational units.
type certSource struct{}

// NewCertSource returns the client-cert source.
func NewCertSource() Source { return certSource{} }

func (certSource) Identify(r Request) (Identity, error) {
	st := r.TLS()
	if st == nil || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return Identity{}, ErrNoIdentity
	}
	c := st.VerifiedChains[0][0]
	id := Identity{Subject: c.Subject.String(), User: c.Subject.CommonName, Name: c.Subject.CommonName, Groups: c.Subject.OrganizationalUnit}
	if len(c.EmailAddresses) > 0 {
		id.Email = c.EmailAddresses[0]
	}
	return id, nil
}
