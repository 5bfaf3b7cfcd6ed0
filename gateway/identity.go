package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
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

// key returns a stable digest of the identity, for the assertion cache.
func (id Identity) key() string {
	h := sha256.New()
	for _, s := range append([]string{id.Subject, id.User, id.Email, id.Name}, id.Groups...) {
		fmt.Fprintf(h, "%d:%s|", len(s), s)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Identity source names, for --identity and a route's identity.
const (
	SourceHeaders    = "headers"
	SourceOIDC       = "oidc"
	SourceClientCert = "client-cert"
)

// errNoIdentity and errSpoofed are the two ways a request can fail to carry
// an acceptable identity: 401 and 403.
var (
	errNoIdentity = errors.New("no acceptable identity")
	errSpoofed    = errors.New("identity headers from an untrusted address")
)

// identitySource establishes the identity behind a request.
type identitySource interface {
	identify(r *http.Request) (Identity, error)
}

// forwardedIdentityHeaders are oauth2-proxy's identity headers, trusted only
// from --trusted-proxy addresses.
var forwardedIdentityHeaders = []string{"X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups", "X-Forwarded-Preferred-Username"}

// headerSource reads the identity an authenticating proxy in front (such as
// oauth2-proxy) put in X-Forwarded-User, -Email, -Groups and
// -Preferred-Username, accepting them only from trusted addresses.
type headerSource struct{ trusted []netip.Prefix }

func (s headerSource) identify(r *http.Request) (Identity, error) {
	if !isTrusted(r, s.trusted) {
		if hasAnyHeader(r.Header, forwardedIdentityHeaders) {
			return Identity{}, errSpoofed
		}
		return Identity{}, errNoIdentity
	}
	id := Identity{
		Subject: r.Header.Get("X-Forwarded-User"),
		User:    r.Header.Get("X-Forwarded-User"),
		Email:   r.Header.Get("X-Forwarded-Email"),
		Name:    r.Header.Get("X-Forwarded-Preferred-Username"),
	}
	for _, v := range r.Header.Values("X-Forwarded-Groups") {
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
		return Identity{}, errNoIdentity
	}
	return id, nil
}

// isTrusted reports whether the request's peer address is in one of the
// trusted prefixes.
func isTrusted(r *http.Request, trusted []netip.Prefix) bool {
	if len(trusted) == 0 {
		return false
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	return slices.ContainsFunc(trusted, func(p netip.Prefix) bool { return p.Contains(ip) })
}

// oidcSource verifies an Authorization: Bearer OIDC token against its
// issuer's discovery document and JWKS (go-oidc): issuer, audience, expiry
// and an asymmetric algorithm are checked.
type oidcSource struct{ verifier *oidc.IDTokenVerifier }

// newOIDCSource fetches the issuer's discovery document.
func newOIDCSource(ctx context.Context, issuer, audience string) (*oidcSource, error) {
	if issuer == "" || audience == "" {
		return nil, errors.New("the oidc identity source needs --oidc-issuer and --oidc-audience")
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	p, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		return nil, fmt.Errorf("oidc issuer %s: %w", issuer, err)
	}
	v := p.Verifier(&oidc.Config{
		ClientID: audience,
		SupportedSigningAlgs: []string{oidc.RS256, oidc.RS384, oidc.RS512, oidc.ES256, oidc.ES384, oidc.ES512,
			oidc.PS256, oidc.PS384, oidc.PS512, oidc.EdDSA},
	})
	return &oidcSource{verifier: v}, nil
}

func (s *oidcSource) identify(r *http.Request) (Identity, error) {
	auth := r.Header.Get("Authorization")
	scheme, raw, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || raw == "" {
		return Identity{}, errNoIdentity
	}
	tok, err := s.verifier.Verify(r.Context(), strings.TrimSpace(raw))
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", errNoIdentity, err)
	}
	var c struct {
		Email             string `json:"email"`
		Name              string `json:"name"`
		PreferredUsername string `json:"preferred_username"`
		Groups            any    `json:"groups"`
	}
	if err := tok.Claims(&c); err != nil {
		return Identity{}, fmt.Errorf("%w: claims: %v", errNoIdentity, err)
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

func (certSource) identify(r *http.Request) (Identity, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return Identity{}, errNoIdentity
	}
	c := r.TLS.VerifiedChains[0][0]
	id := Identity{Subject: c.Subject.String(), User: c.Subject.CommonName, Name: c.Subject.CommonName, Groups: c.Subject.OrganizationalUnit}
	if len(c.EmailAddresses) > 0 {
		id.Email = c.EmailAddresses[0]
	}
	return id, nil
}

// headerNameKey folds a header name the way some upstream stacks do (CGI
// and WSGI turn "-" into "_" and ignore case), so that no variant of a
// protected header slips through.
func headerNameKey(name string) string {
	return strings.ToLower(strings.ReplaceAll(name, "_", "-"))
}

// hasAnyHeader reports whether h has any of names, in any variant.
func hasAnyHeader(h http.Header, names []string) bool {
	for k := range h {
		for _, n := range names {
			if headerNameKey(k) == headerNameKey(n) {
				return true
			}
		}
	}
	return false
}

// deleteHeaders removes every variant of names from h (any letter case, "_"
// for "-"), with all their values.
func deleteHeaders(h http.Header, names ...string) {
	for k := range h {
		for _, n := range names {
			if headerNameKey(k) == headerNameKey(n) {
				delete(h, k)
			}
		}
	}
}
