package verify

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// ParseSet parses a JWKS document, keeping only the keys kmsgate signs with
// (EC P-256, ES256 or no alg). A document with no such key is an error.
func ParseSet(data []byte) (*jose.JSONWebKeySet, error) {
	var raw jose.JSONWebKeySet
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("jwks: parse key set: %w", err)
	}
	out := &jose.JSONWebKeySet{}
	for _, k := range raw.Keys {
		if !k.Valid() || !k.IsPublic() || (k.Algorithm != "" && k.Algorithm != string(jose.ES256)) {
			continue
		}
		if ec, ok := k.Key.(*ecdsa.PublicKey); !ok || ec.Curve != elliptic.P256() {
			continue
		}
		out.Keys = append(out.Keys, k)
	}
	if len(out.Keys) == 0 {
		return nil, errors.New("jwks: key set has no EC P-256 (ES256) key")
	}
	return out, nil
}

// Expect is what a verified token must carry.
type Expect struct {
	// Issuer is the required iss; empty accepts any (the CLI without --issuer).
	Issuer string
	// Audience is the required aud; empty accepts any.
	Audience string
	// Leeway is the allowed clock skew for exp, nbf and iat.
	Leeway time.Duration
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
}

// ErrUnknownKID is returned by VerifyWithSet when the token's kid is not in
// the key set; a caller may refresh the set and try again.
var ErrUnknownKID = errors.New("jwks: token kid is not in the key set")

// VerifyWithSet verifies a compact ES256 JWT against a key set: the header
// must name a kid of the set, the signature must verify with that key, and
// exp, nbf, iat, iss and aud must pass. It returns every claim.
func VerifyWithSet(token string, set *jose.JSONWebKeySet, want Expect) (map[string]any, error) {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, fmt.Errorf("jwks: parse token: %w", err)
	}
	if len(tok.Headers) != 1 {
		return nil, errors.New("jwks: token must have exactly one signature")
	}
	kid := tok.Headers[0].KeyID
	if kid == "" {
		return nil, errors.New("jwks: token has no kid")
	}
	keys := set.Key(kid)
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: %q", ErrUnknownKID, kid)
	}
	var std jwt.Claims
	all := map[string]any{}
	if err := tok.Claims(keys[0].Key, &std, &all); err != nil {
		return nil, fmt.Errorf("jwks: signature: %w", err)
	}
	now := time.Now
	if want.Now != nil {
		now = want.Now
	}
	exp := jwt.Expected{Issuer: want.Issuer, Time: now()}
	if want.Audience != "" {
		exp.AnyAudience = jwt.Audience{want.Audience}
	}
	if std.Expiry == nil {
		return nil, errors.New("jwks: token has no exp")
	}
	// iss and aud first, saying what the token holds and what was wanted.
	if want.Issuer != "" && std.Issuer != want.Issuer {
		return nil, fmt.Errorf("jwks: claims: %w: iss is %q, want %q", jwt.ErrInvalidIssuer, std.Issuer, want.Issuer)
	}
	if want.Audience != "" && !std.Audience.Contains(want.Audience) {
		return nil, fmt.Errorf("jwks: claims: %w: aud is %q, want %q among them", jwt.ErrInvalidAudience, []string(std.Audience), want.Audience)
	}
	if err := std.ValidateWithLeeway(exp, want.Leeway); err != nil {
		at := exp.Time.UTC().Format(time.RFC3339)
		switch {
		case errors.Is(err, jwt.ErrExpired):
			return nil, fmt.Errorf("jwks: claims: %w: exp %s, now %s, leeway %s", err, std.Expiry.Time().UTC().Format(time.RFC3339), at, want.Leeway)
		case errors.Is(err, jwt.ErrNotValidYet) && std.NotBefore != nil:
			return nil, fmt.Errorf("jwks: claims: %w: nbf %s, now %s, leeway %s", err, std.NotBefore.Time().UTC().Format(time.RFC3339), at, want.Leeway)
		case errors.Is(err, jwt.ErrIssuedInTheFuture) && std.IssuedAt != nil:
			return nil, fmt.Errorf("jwks: claims: %w: iat %s, now %s, leeway %s", err, std.IssuedAt.Time().UTC().Format(time.RFC3339), at, want.Leeway)
		}
		return nil, fmt.Errorf("jwks: claims: %w", err)
	}
	return all, nil
}
