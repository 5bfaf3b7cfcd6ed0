// Package identity establishes who a request is for: the identity sources
// (headers from a trusted authenticating proxy, OIDC bearer tokens, TLS
// client certificates) over a protocol-neutral view of the request.
package identity

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
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

// oidcSource verifies an Authorization: Bearer OIDC token against its
// issuer's discovery document and JWKS (go-oidc): issuer, audience, expiry
// and an asymmetric algorithm are checked.
type oidcSource struct {
	verifier *oidc.IDTokenVerifier
	timeout  time.Duration // bounds a verification, which may fetch the issuer's JWKS
}

// NewOIDCSource fetches the issuer's discovery document.
func NewOIDCSource(ctx context.Context, issuer, audience string, timeout time.Duration) (Source, error) {
	if issuer == "" || audience == "" {
		return nil, errors.New("the oidc identity source needs --oidc-issuer and --oidc-audience")
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	// go-oidc fetches the JWKS in the background with this client; without a
	// timeout, one hung fetch would hold every later verification.
	ctx = oidc.ClientContext(ctx, &http.Client{Timeout: 10 * time.Second})
	p, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		return nil, fmt.Errorf("oidc issuer %s: %w", issuer, err)
	}
	v := p.Verifier(&oidc.Config{
		ClientID: audience,
		SupportedSigningAlgs: []string{oidc.RS256, oidc.RS384, oidc.RS512, oidc.ES256, oidc.ES384, oidc.ES512,
			oidc.PS256, oidc.PS384, oidc.PS512, oidc.EdDSA},
	})
	return &oidcSource{verifier: v, timeout: timeout}, nil
}

func (s *oidcSource) Identify(r Request) (Identity, error) {
	auth := r.Header("Authorization")
	scheme, raw, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || raw == "" {
		return Identity{}, ErrNoIdentity
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	tok, err := s.verifier.Verify(ctx, strings.TrimSpace(raw))
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
