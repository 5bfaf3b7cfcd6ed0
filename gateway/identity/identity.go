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
	"sync"
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
	SourceOIDCLogin  = "oidc-login"
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

// Discovery is an OIDC issuer's discovery document, fetched at start or,
// when the issuer cannot be reached then, in the background until it is,
// so an identity provider that is down at start makes the gateway start
// unready instead of failing. It is shared by the sources that use the
// issuer.
type Discovery struct {
	issuer    string
	client    *http.Client
	p         atomic.Pointer[oidc.Provider]
	verifiers sync.Map // client id -> *oidc.IDTokenVerifier, one key set each
}

// Discover fetches the discovery document of issuer within ctx's first
// 15 s; if that fails, it keeps retrying in the background until ctx ends
// (every 1 s at first, backing off to 30 s), logging each failure to log.
// Only an issuer that can never work is an error.
func Discover(ctx context.Context, issuer string, log *slog.Logger) (*Discovery, error) {
	// go-oidc fetches the JWKS in the background with this client; without a
	// timeout, one hung fetch would hold every later verification.
	return discover(ctx, issuer, log, &http.Client{Timeout: 10 * time.Second})
}

// discover is Discover with the HTTP client that reaches the issuer (tests
// pass one that serves in memory).
func discover(ctx context.Context, issuer string, log *slog.Logger, client *http.Client) (*Discovery, error) {
	if u, err := url.Parse(issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("--oidc-issuer %q must be an http:// or https:// URL", issuer)
	}
	d := &Discovery{issuer: issuer, client: client}
	if err := d.connect(ctx); err != nil {
		log.Warn("oidc issuer not reachable; its requests get 503 and the gateway is not ready until it is", "issuer", issuer, "err", err.Error())
		go d.retry(ctx, log)
	}
	return d, nil
}

// connect fetches the discovery document.
func (d *Discovery) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	// The provider's JWKS fetches outlive this call: their client, not ctx.
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, d.client), d.issuer)
	if err != nil {
		return fmt.Errorf("oidc issuer %s: %w", d.issuer, err)
	}
	d.p.Store(p)
	return nil
}

// retry connects until it succeeds or ctx ends.
func (d *Discovery) retry(ctx context.Context, log *slog.Logger) {
	wait := time.Second
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		err := d.connect(ctx)
		if err == nil {
			log.Info("oidc issuer reached; its requests are judged", "issuer", d.issuer)
			return
		}
		wait = min(2*wait, 30*time.Second)
		log.Warn("oidc issuer still not reachable", "issuer", d.issuer, "err", err.Error(), "retry_in", wait.String())
	}
}

// Provider returns the issuer's provider, nil until it has been reached.
func (d *Discovery) Provider() *oidc.Provider { return d.p.Load() }

// Client is the HTTP client for calls to the issuer (with a timeout).
func (d *Discovery) Client() *http.Client { return d.client }

// Issuer is the issuer's URL.
func (d *Discovery) Issuer() string { return d.issuer }

// Ready implements Readier.
func (d *Discovery) Ready() (bool, string) {
	if d.p.Load() == nil {
		return false, "oidc issuer " + d.issuer
	}
	return true, ""
}

// Verifier returns the ID token verifier of the issuer for clientID (the
// audience), accepting only asymmetric algorithms; nil until the issuer
// has been reached. It is made once per client id, so the issuer's key set
// is fetched when a token names a new kid, not on every verification.
func (d *Discovery) Verifier(clientID string) *oidc.IDTokenVerifier {
	if v, ok := d.verifiers.Load(clientID); ok {
		return v.(*oidc.IDTokenVerifier)
	}
	p := d.p.Load()
	if p == nil {
		return nil
	}
	v, _ := d.verifiers.LoadOrStore(clientID, p.VerifierContext(oidc.ClientContext(context.Background(), d.client), &oidc.Config{
		ClientID: clientID,
		SupportedSigningAlgs: []string{oidc.RS256, oidc.RS384, oidc.RS512, oidc.ES256, oidc.ES384, oidc.ES512,
			oidc.PS256, oidc.PS384, oidc.PS512, oidc.EdDSA},
	}))
	return v.(*oidc.IDTokenVerifier)
}

// FromIDToken is the identity a verified ID token names: sub, user (its
// preferred_username, else sub), email, name, and the groups from the
// groupsClaim claim (a list of texts, or one text).
func FromIDToken(tok *oidc.IDToken, groupsClaim string) (Identity, error) {
	var c map[string]any
	if err := tok.Claims(&c); err != nil {
		return Identity{}, fmt.Errorf("%w: claims: %v", ErrNoIdentity, err)
	}
	text := func(k string) string { s, _ := c[k].(string); return s }
	id := Identity{Subject: tok.Subject, User: tok.Subject, Email: text("email"), Name: text("name")}
	if u := text("preferred_username"); u != "" {
		id.User = u
	}
	switch g := c[groupsClaim].(type) {
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

// oidcSource verifies an Authorization: Bearer OIDC token against its
// issuer's discovery document and JWKS (go-oidc): issuer, audience, expiry
// and an asymmetric algorithm are checked. Until the issuer has been
// reached it refuses every request with ErrUnavailable.
type oidcSource struct {
	*Discovery
	audience, groupsClaim string
	timeout               time.Duration // bounds a verification, which may fetch the issuer's JWKS
}

// NewOIDCSource returns the oidc source of an issuer (see Discover) and
// audience, taking the groups from groupsClaim.
func NewOIDCSource(d *Discovery, audience, groupsClaim string, timeout time.Duration) (Source, error) {
	if audience == "" {
		return nil, errors.New("the oidc identity source needs --oidc-issuer and --oidc-audience")
	}
	return &oidcSource{Discovery: d, audience: audience, groupsClaim: groupsClaim, timeout: timeout}, nil
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
	v := s.Verifier(s.audience)
	if v == nil {
		return Identity{}, ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	tok, err := v.Verify(ctx, raw)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrNoIdentity, err)
	}
	return FromIDToken(tok, s.groupsClaim)
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

// ClientAddr is the address of the client a request comes from: the peer,
// or, when the peer is a trusted proxy, the last address of the
// X-Forwarded-For chain that is not itself a trusted proxy (the chain's
// first when all are). A malformed chain from a trusted proxy is an error:
// the client is then unknown, and no rule about it can be judged.
func ClientAddr(r Request, trusted []netip.Prefix) (netip.Addr, error) {
	peer := r.Peer()
	if !Trusted(peer, trusted) {
		return peer, nil
	}
	values := r.HeaderValues("X-Forwarded-For")
	client := peer
	for i := len(values) - 1; i >= 0; i-- {
		entries := strings.Split(values[i], ",")
		for j := len(entries) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(entries[j]))
			if err != nil {
				return netip.Addr{}, fmt.Errorf("X-Forwarded-For from a trusted proxy: %q is not an IP address", strings.TrimSpace(entries[j]))
			}
			client = a.Unmap()
			if !Trusted(client, trusted) {
				return client, nil
			}
		}
	}
	return client, nil
}

// ErrSignIn is the failure of a browser-session source when a request has
// no valid session: the core sends a browser to sign in and answers
// anything else 401.
var ErrSignIn = errors.New("no valid session")

// CookieSetter is a request that takes cookies to set on its response: a
// session source renews its cookie through it.
type CookieSetter interface {
	SetCookie(values ...string)
}
