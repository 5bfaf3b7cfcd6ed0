package jwks

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"maps"
	"time"
)

// ClockSkew is how far before the moment of signing iat and nbf are set,
// so that a verifier whose clock is up to that much behind accepts a fresh
// token even with zero leeway (apps verify within milliseconds of issue).
// exp stays the moment of signing plus the lifetime.
const ClockSkew = 5 * time.Second

// Reserved are the claims the gateway always sets itself; a caller that
// tries to set one is refused.
var Reserved = []string{"iss", "iat", "nbf", "exp", "jti"}

// NewClaims returns the caller's claims with iss, iat and nbf (now less
// ClockSkew), exp (now + ttl) and a fresh random jti added. It refuses claims that set a reserved name
// and a ttl that is not positive.
func NewClaims(issuer string, now time.Time, ttl time.Duration, claims map[string]any) (map[string]any, error) {
	for _, r := range Reserved {
		if _, ok := claims[r]; ok {
			return nil, fmt.Errorf("claim %q is set by the gateway and may not be given", r)
		}
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("ttl %s is not positive", ttl)
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("jti: %w", err)
	}
	out := make(map[string]any, len(claims)+5)
	maps.Copy(out, claims)
	if issuer != "" {
		out["iss"] = issuer
	}
	out["iat"] = now.Add(-ClockSkew).Unix()
	out["nbf"] = now.Add(-ClockSkew).Unix()
	out["exp"] = now.Add(ttl).Unix()
	out["jti"] = base64.RawURLEncoding.EncodeToString(id[:])
	return out, nil
}
