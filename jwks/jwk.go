// Package jwks turns backend key versions into a JSON Web Key Set: it builds
// JWKs and kids, orders key versions so that rotation never breaks a verifier,
// serves the set as stable bytes, and signs JWTs with the active version. Its
// client side verifies kmsgate's tokens in applications.
package jwks

import (
	"crypto"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/hex"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// KIDFormat says how a key id is derived from a public key.
type KIDFormat string

const (
	// KIDThumbprint is the RFC 7638 SHA-256 thumbprint, base64url without
	// padding (the default).
	KIDThumbprint KIDFormat = "thumbprint"
	// KIDHex is the same thumbprint as 64 hex characters, the kid Pomerium
	// publishes, for drop-in replacement.
	KIDHex KIDFormat = "hex"
)

// ParseKIDFormat checks a --kid-format value.
func ParseKIDFormat(s string) (KIDFormat, error) {
	switch f := KIDFormat(s); f {
	case KIDThumbprint, KIDHex:
		return f, nil
	case "":
		return KIDThumbprint, nil
	default:
		return "", fmt.Errorf("kid format %q: want %q or %q", s, KIDThumbprint, KIDHex)
	}
}

// KID returns the key id of pub in format f.
func KID(pub *ecdsa.PublicKey, f KIDFormat) (string, error) {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("jwks: thumbprint: %w", err)
	}
	if f == KIDHex {
		return hex.EncodeToString(tp), nil
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// JWK is one published key, with its members in a fixed order so that the
// same key set always serialises to the same bytes.
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
}

// NewJWK returns the public JWK of a P-256 key with the given kid.
func NewJWK(pub *ecdsa.PublicKey, kid string) JWK {
	var x, y [32]byte
	pub.X.FillBytes(x[:])
	pub.Y.FillBytes(y[:])
	return JWK{
		Kty: "EC",
		Crv: "P-256",
		X:   base64.RawURLEncoding.EncodeToString(x[:]),
		Y:   base64.RawURLEncoding.EncodeToString(y[:]),
		Kid: kid,
		Use: "sig",
		Alg: "ES256",
	}
}
