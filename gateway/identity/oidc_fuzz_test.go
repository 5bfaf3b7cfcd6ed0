package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// authRequest is a Request with only an Authorization header.
type authRequest string

func (a authRequest) Context() context.Context { return context.Background() }
func (a authRequest) Header(name string) string {
	if name == "Authorization" {
		return string(a)
	}
	return ""
}
func (a authRequest) HeaderValues(name string) []string { return nil }
func (a authRequest) HasHeader([]string) bool           { return false }
func (a authRequest) Peer() netip.Addr                  { return netip.Addr{} }
func (a authRequest) TLS() *tls.ConnectionState         { return nil }

// FuzzOIDCBearer checks the oidc identity source on Authorization header
// values, with the issuer's key fixed: a refused value gets ErrNoIdentity
// (the issuer has been reached, so never ErrUnavailable); an accepted one
// is "Bearer" (any letter case), a space and a token that an independent
// JWT library (lestrrat-go/jwx) verifies with the issuer's key, issuer,
// audience and clock, and whose claims are the identity: sub, email, name,
// preferred_username (else sub) as user, and groups as a string or the
// strings of a list.
func FuzzOIDCBearer(f *testing.F) {
	const issuer, audience = "https://idp.example", "kmsgate"
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), bytes.Repeat([]byte{0x42}, 32))
	if err != nil {
		f.Fatal(err)
	}
	d := &Discovery{issuer: issuer}
	d.verifiers.Store(audience, oidc.NewVerifier(issuer, &oidc.StaticKeySet{PublicKeys: []crypto.PublicKey{&key.PublicKey}}, &oidc.Config{
		ClientID: audience, Now: func() time.Time { return now },
		SupportedSigningAlgs: []string{oidc.RS256, oidc.ES256, oidc.ES384, oidc.PS256, oidc.EdDSA},
	}))
	s := &oidcSource{Discovery: d, audience: audience, groupsClaim: "groups", timeout: time.Second}

	sign := func(alg jose.SignatureAlgorithm, k any, claims map[string]any) string {
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: k}, (&jose.SignerOptions{}).WithType("JWT"))
		if err != nil {
			f.Fatal(err)
		}
		tok, err := josejwt.Signed(signer).Claims(claims).Serialize()
		if err != nil {
			f.Fatal(err)
		}
		return tok
	}
	claims := func(extra map[string]any) map[string]any {
		c := map[string]any{"iss": issuer, "aud": audience, "sub": "user-1", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		for k, v := range extra {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		return c
	}
	good := sign(jose.ES256, key, claims(map[string]any{"email": "u@example.com", "name": "U", "preferred_username": "u1", "groups": []any{"a", 1, "b"}}))
	for _, v := range []string{
		"Bearer " + good,
		"bearer  " + good + " ",
		"BEARER " + sign(jose.ES256, key, claims(map[string]any{"groups": "solo"})),
		"Bearer " + sign(jose.ES256, key, claims(map[string]any{"aud": []string{"other", audience}})),
		"Bearer " + sign(jose.ES256, key, claims(map[string]any{"aud": "other"})),
		"Bearer " + sign(jose.ES256, key, claims(map[string]any{"iss": "https://evil.example"})),
		"Bearer " + sign(jose.ES256, key, claims(map[string]any{"exp": now.Add(-time.Minute).Unix()})),
		"Bearer " + sign(jose.ES256, key, claims(map[string]any{"sub": nil})),
		"Bearer " + sign(jose.HS256, []byte("secret-that-is-32-bytes-long!!!!"), claims(nil)),
		"Bearer " + good[:len(good)-2] + "AA",
		"Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
		"Basic dXNlcjpwdw==", "Bearer", "Bearer ", "", "Bearer a.b.c",
	} {
		f.Add(v)
	}
	// The seeds reach both outcomes.
	if _, err := s.Identify(authRequest("Bearer " + good)); err != nil {
		f.Fatalf("a good token is refused: %v", err)
	}
	if _, err := s.Identify(authRequest("Bearer " + sign(jose.ES256, key, claims(map[string]any{"aud": "other"})))); !errors.Is(err, ErrNoIdentity) {
		f.Fatalf("a token for another audience: %v", err)
	}
	f.Fuzz(func(t *testing.T, auth string) {
		id, err := s.Identify(authRequest(auth))
		if err != nil {
			if !errors.Is(err, ErrNoIdentity) || errors.Is(err, ErrUnavailable) || strings.TrimSpace(err.Error()) == "" {
				t.Fatalf("%q: refused with %v; want ErrNoIdentity", auth, err)
			}
			return
		}
		scheme, raw, _ := strings.Cut(auth, " ")
		if !strings.EqualFold(scheme, "Bearer") {
			t.Fatalf("%q accepted with the scheme %q", auth, scheme)
		}
		tok, err := jwt.Parse([]byte(strings.TrimSpace(raw)), jwt.WithKey(jwa.ES256, &key.PublicKey), jwt.WithValidate(true),
			jwt.WithClock(jwt.ClockFunc(func() time.Time { return now })), jwt.WithIssuer(issuer), jwt.WithAudience(audience))
		if err != nil {
			t.Fatalf("%q accepted as %+v, but jwx refuses it: %v", auth, id, err)
		}
		str := func(name string) string {
			v, _ := tok.Get(name)
			s, _ := v.(string)
			return s
		}
		want := Identity{Subject: tok.Subject(), User: tok.Subject(), Email: str("email"), Name: str("name")}
		if u := str("preferred_username"); u != "" {
			want.User = u
		}
		switch g, _ := tok.Get("groups"); g := g.(type) {
		case string:
			want.Groups = []string{g}
		case []any:
			for _, v := range g {
				if s, ok := v.(string); ok {
					want.Groups = append(want.Groups, s)
				}
			}
		}
		if !reflect.DeepEqual(id, want) {
			t.Fatalf("%q: identity %+v, but the token says %+v", auth, id, want)
		}
	})
}
