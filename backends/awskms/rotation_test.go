package awskms_test

import (
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/jwks"
)

// signAndCheck signs a token through the keyring, checks which kid signed
// it, and verifies it with the independent verifier against the JWKS served
// at that moment.
func signAndCheck(t *testing.T, kr *jwks.Keyring, wantKID string) {
	t.Helper()
	tok, kid, err := kr.SignJWT(ctxT(t), timeClaims())
	if err != nil {
		t.Fatalf("SignJWT: %v", err)
	}
	if kid != wantKID {
		t.Fatalf("signed with kid %s, want %s", kid, wantKID)
	}
	backendtest.VerifyIndependently(t, tok, kr.State().Document.JSON)
}

// TestRotationThroughAliasPrefix walks a rotation the way an operator does
// it with AWS KMS: a second key appears under the alias prefix as pending
// (published, not signing), becomes active once it has been published for
// --prepublish while the first turns retiring (still published), and
// disabling the first drops it from the JWKS.
func TestRotationThroughAliasPrefix(t *testing.T) {
	ep := localKMS(t)
	a := newAdmin(t, ep)
	prefix := aliasPrefix(t)
	const prepublish = 2 * time.Hour

	k1 := a.p256()
	a.alias(prefix+"2025-01", *k1.KeyId)
	uri := hostURI(t, ep, prefix)
	b := open(t, uri, backends.Options{})
	clock := backendtest.NewClock(time.Now())
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: uri, Backend: b}}, jwks.Config{Prepublish: prepublish, Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if r := backendtest.Roles(kr); len(r) != 1 || r[*k1.Arn] != jwks.RoleActive {
		t.Fatalf("one key: roles %v, want %s active", r, *k1.Arn)
	}
	kid1 := backendtest.KIDOf(t, kr, *k1.Arn)
	signAndCheck(t, kr, kid1)

	// local-kms keeps creation times in whole seconds; the second key must
	// be younger than the first.
	waitNextSecond()
	k2 := a.p256()
	a.alias(prefix+"2025-06", *k2.KeyId)
	if !k2.CreationDate.After(*k1.CreationDate) {
		t.Fatalf("creation dates %s and %s are not ordered", k1.CreationDate, k2.CreationDate)
	}
	clock.Set(k2.CreationDate.Add(time.Minute))
	if err := kr.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	kid2 := backendtest.KIDOf(t, kr, *k2.Arn)
	if r := backendtest.Roles(kr); r[*k1.Arn] != jwks.RoleActive || r[*k2.Arn] != jwks.RolePending {
		t.Fatalf("after the second key: roles %v, want first active, second pending", r)
	}
	// The pending key is published before it signs.
	tok, kid, err := kr.SignJWT(ctxT(t), timeClaims())
	if err != nil || kid != kid1 {
		t.Fatalf("sign while pending: kid %s, %v; want %s", kid, err, kid1)
	}
	backendtest.VerifyIndependently(t, tok, kr.State().Document.JSON)
	if n := countKeys(t, kr.State().Document.JSON); n != 2 {
		t.Fatalf("JWKS has %d keys while the second is pending, want 2", n)
	}

	// Just before the prepublish window ends nothing changes; after it, the
	// second key signs and the first is retiring, with no refresh needed.
	clock.Set(k2.CreationDate.Add(prepublish - time.Second))
	signAndCheck(t, kr, kid1)
	clock.Set(k2.CreationDate.Add(prepublish + time.Second))
	if r := backendtest.Roles(kr); r[*k1.Arn] != jwks.RoleRetiring || r[*k2.Arn] != jwks.RoleActive {
		t.Fatalf("after --prepublish: roles %v, want first retiring, second active", r)
	}
	signAndCheck(t, kr, kid2)
	// A token signed by the first key earlier still verifies: it is
	// published while retiring.
	backendtest.VerifyIndependently(t, tok, kr.State().Document.JSON)

	// Disabling the first key drops it from the JWKS at the next refresh.
	a.disable(*k1.KeyId)
	if err := kr.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if r := backendtest.Roles(kr); len(r) != 1 || r[*k2.Arn] != jwks.RoleActive {
		t.Fatalf("after disabling the first key: roles %v, want only the second, active", r)
	}
	if n := countKeys(t, kr.State().Document.JSON); n != 1 {
		t.Fatalf("JWKS has %d keys after disabling the first, want 1", n)
	}
	signAndCheck(t, kr, kid2)
}
