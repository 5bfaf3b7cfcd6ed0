package core

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
)

// Client is one caller of the sign API, as configured under `clients:` in
// the config file, with its credential and policy.
type Client struct {
	// Name identifies the client in logs and metrics.
	Name string `yaml:"name"`
	// TokenSHA256 is the hex SHA-256 of the client's bearer token.
	TokenSHA256 string `yaml:"token-sha256"`
	// CertSubject is the subject of the client's TLS certificate, in
	// x509 pkix.Name.String form ("CN=billing,O=Example").
	CertSubject string `yaml:"cert-subject"`
	// Audiences the client may put in aud; "*" allows any.
	Audiences []string `yaml:"audiences"`
	// Subjects are path.Match patterns sub must match ("svc-*", "*").
	Subjects []string `yaml:"subjects"`
	// MaxTTL is the longest lifetime the client may ask for.
	MaxTTL time.Duration `yaml:"max-ttl"`
	// Claims are the names of the extra claims the client may set; "*"
	// allows any except the reserved ones.
	Claims []string `yaml:"claims"`

	tokenHash []byte
}

// validate checks a client's configuration and prepares it.
func (c *Client) validate() error {
	if c.Name == "" {
		return fmt.Errorf("client without a name")
	}
	if (c.TokenSHA256 == "") == (c.CertSubject == "") {
		return fmt.Errorf("client %q: give exactly one of token-sha256 and cert-subject", c.Name)
	}
	if c.TokenSHA256 != "" {
		h, err := hex.DecodeString(c.TokenSHA256)
		if err != nil || len(h) != sha256.Size {
			return fmt.Errorf("client %q: token-sha256 must be 64 hex characters (the SHA-256 of the token)", c.Name)
		}
		c.tokenHash = h
	}
	if len(c.Audiences) == 0 {
		return fmt.Errorf("client %q: audiences is empty (use [\"*\"] to allow any)", c.Name)
	}
	if len(c.Subjects) == 0 {
		return fmt.Errorf("client %q: subjects is empty (use [\"*\"] to allow any)", c.Name)
	}
	for _, p := range c.Subjects {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("client %q: subject pattern %q: %w", c.Name, p, err)
		}
	}
	if c.MaxTTL <= 0 {
		return fmt.Errorf("client %q: max-ttl must be positive (e.g. 15m)", c.Name)
	}
	return nil
}

// clientSet authenticates sign API callers.
type clientSet struct{ clients []*Client }

func newClientSet(cs []Client) (*clientSet, error) {
	set := &clientSet{}
	names := map[string]bool{}
	for i := range cs {
		c := cs[i]
		if err := c.validate(); err != nil {
			return nil, err
		}
		if names[c.Name] {
			return nil, fmt.Errorf("client %q is defined twice", c.Name)
		}
		names[c.Name] = true
		set.clients = append(set.clients, &c)
	}
	return set, nil
}

// authenticate returns the client behind a request: a bearer token whose
// SHA-256 matches, compared in constant time against every configured hash,
// or else a verified TLS client certificate whose subject matches.
func (s *clientSet) authenticate(r *Request) *Client {
	if auth := r.Headers.Get("Authorization"); auth != "" {
		scheme, tok, ok := strings.Cut(auth, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
			return nil
		}
		sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		var found *Client
		for _, c := range s.clients {
			if c.tokenHash != nil && subtle.ConstantTimeCompare(sum[:], c.tokenHash) == 1 && found == nil {
				found = c
			}
		}
		return found
	}
	if st := r.TLSState; st != nil && len(st.VerifiedChains) > 0 && len(st.VerifiedChains[0]) > 0 {
		subject := subjectOf(st.VerifiedChains[0][0])
		for _, c := range s.clients {
			if c.CertSubject != "" && c.CertSubject == subject {
				return c
			}
		}
	}
	return nil
}

func subjectOf(cert *x509.Certificate) string { return cert.Subject.String() }

// allowAudience reports whether the client may address aud.
func (c *Client) allowAudience(aud string) bool {
	return slices.Contains(c.Audiences, "*") || slices.Contains(c.Audiences, aud)
}

// allowSubject reports whether sub matches one of the client's patterns.
func (c *Client) allowSubject(sub string) bool {
	for _, p := range c.Subjects {
		if ok, _ := path.Match(p, sub); ok {
			return true
		}
	}
	return false
}

// allowClaim reports whether the client may set the extra claim name.
func (c *Client) allowClaim(name string) bool {
	return slices.Contains(c.Claims, "*") || slices.Contains(c.Claims, name)
}
