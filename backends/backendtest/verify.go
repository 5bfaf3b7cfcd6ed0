package backendtest

import (
	"context"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// VerifyIndependently verifies token against the JWKS document jwksJSON with
// lestrrat-go/jwx, a JWT library kmsgate does not use itself, requiring
// ES256, a kid that is in the set, and valid time claims. It returns the
// token's claims and fails the test on any error.
func VerifyIndependently(t testing.TB, token string, jwksJSON []byte) map[string]any {
	t.Helper()
	set, err := jwk.Parse(jwksJSON)
	if err != nil {
		t.Fatalf("independent verifier: parse JWKS: %v", err)
	}
	msg, err := jws.Parse([]byte(token))
	if err != nil {
		t.Fatalf("independent verifier: parse JWS: %v", err)
	}
	if n := len(msg.Signatures()); n != 1 {
		t.Fatalf("independent verifier: %d signatures, want 1", n)
	}
	hdr := msg.Signatures()[0].ProtectedHeaders()
	if hdr.Algorithm() != jwa.ES256 {
		t.Fatalf("independent verifier: alg %q, want ES256", hdr.Algorithm())
	}
	if hdr.Type() != "JWT" {
		t.Fatalf("independent verifier: typ %q, want JWT", hdr.Type())
	}
	if _, ok := set.LookupKeyID(hdr.KeyID()); !ok {
		t.Fatalf("independent verifier: kid %q is not in the JWKS", hdr.KeyID())
	}
	tok, err := jwt.Parse([]byte(token), jwt.WithKeySet(set, jws.WithRequireKid(true)), jwt.WithValidate(true))
	if err != nil {
		t.Fatalf("independent verifier: %v", err)
	}
	claims, err := tok.AsMap(context.Background())
	if err != nil {
		t.Fatalf("independent verifier: claims: %v", err)
	}
	return claims
}
