package fakekv_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/azurekv/fakekv"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/jwks"
)

func jwksKIDs(t testing.TB, doc []byte) []string {
	t.Helper()
	var set struct {
		Keys []struct {
			KID string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range set.Keys {
		kids = append(kids, k.KID)
	}
	return kids
}

// signAndVerify signs through the keyring and checks the token with an
// independent library against the key set; it returns the kid.
func signAndVerify(t *testing.T, kr *jwks.Keyring, sub string) string {
	t.Helper()
	claims, err := jwks.NewClaims("https://kmsgate.example", time.Now(), 5*time.Minute, map[string]any{"sub": sub, "aud": "app"})
	if err != nil {
		t.Fatal(err)
	}
	tok, kid, err := kr.SignJWT(ctxTimeout(t, 5*time.Second), claims)
	if err != nil {
		t.Fatal(err)
	}
	if got := backendtest.VerifyIndependently(t, tok, kr.State().Document.JSON); got["sub"] != sub {
		t.Fatalf("claims %v", got)
	}
	return kid
}

// TestRotation walks a Key Vault rotation (a new version, as the rotation
// policy or `az keyvault key rotate` makes it) through the keyring: the new
// version is published at once and pending, signs once it has been
// published for --prepublish, and the old version leaves the JWKS when it is
// disabled. A version created with an nbf ahead is published but signs only
// from its nbf on; a refresh that fails keeps the last good set.
func TestRotation(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	clock := backendtest.NewClock(now)
	v1 := e.add("jwt", fakekv.Version{Created: now.Add(-30 * 24 * time.Hour)})
	b := e.open(e.uri("jwt"), backends.Options{})
	id1 := e.id("jwt", v1)
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: e.uri("jwt"), Backend: b}}, jwks.Config{Prepublish: 2 * time.Hour, Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	kid1 := backendtest.KIDOf(t, kr, id1)
	if got := signAndVerify(t, kr, "alice"); got != kid1 {
		t.Fatalf("signed with %s, want v1 %s", got, kid1)
	}

	// Rotation makes v2: published, pending; v1 keeps signing.
	v2 := e.add("jwt", fakekv.Version{})
	id2 := e.id("jwt", v2)
	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if r := backendtest.Roles(kr); len(r) != 2 || r[id1] != jwks.RoleActive || r[id2] != jwks.RolePending {
		t.Fatalf("after rotation: %v", r)
	}
	kid2 := backendtest.KIDOf(t, kr, id2)
	if got := signAndVerify(t, kr, "bob"); got != kid1 {
		t.Fatal("v2 signed before --prepublish passed")
	}
	// After --prepublish, v2 signs, with the vault's signature.
	clock.Add(2*time.Hour + time.Minute)
	signs := e.fake.Calls(fakekv.OpSign)
	if got := signAndVerify(t, kr, "carol"); got != kid2 {
		t.Fatalf("after --prepublish signed with %s, want v2 %s", got, kid2)
	}
	if e.fake.Calls(fakekv.OpSign) != signs+1 {
		t.Fatal("the signature did not come from the vault")
	}

	// The vault is down: the last good set is kept.
	e.fake.Inject(fakekv.Fault{Op: fakekv.OpList, Status: 503})
	if err := kr.Refresh(ctxTimeout(t, 2*time.Second)); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("refresh with the vault down: %v", err)
	}
	if kids := jwksKIDs(t, kr.State().Document.JSON); len(kids) != 2 {
		t.Fatalf("last good set not kept: %v", kids)
	}
	e.fake.ClearFaults()

	// Disabling v1 drops it from the JWKS.
	if err := e.fake.SetEnabled("jwt", v1, false); err != nil {
		t.Fatal(err)
	}
	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if kids := jwksKIDs(t, kr.State().Document.JSON); len(kids) != 1 || kids[0] != kid2 {
		t.Fatalf("after disabling v1: JWKS kids %v, want only %s", kids, kid2)
	}

	// v2 expires: out of the JWKS and out of signing; nothing usable is
	// left, and the keyring says so instead of signing.
	if err := e.fake.Update("jwt", v2, func(_ *bool, _, exp *time.Time, _ *[]string) { *exp = time.Now().Add(-time.Second) }); err != nil {
		t.Fatal(err)
	}
	vs, err := b.Versions(ctx)
	if err != nil || byID(vs)[id2].State != backends.StateExpired {
		t.Fatalf("expired v2: %+v %v", vs, err)
	}
	// A version whose nbf is ahead: published, never signing before it.
	v3 := e.add("jwt", fakekv.Version{NotBefore: time.Now().Add(time.Hour)})
	vs, err = b.Versions(ctx)
	if err != nil || byID(vs)[e.id("jwt", v3)].State != backends.StateVerifyOnly || byID(vs)[e.id("jwt", v3)].PublicKey == nil {
		t.Fatalf("nbf ahead: %+v %v", vs, err)
	}
}

// TestKeyringRefusesBadSignature: the keyring verifies the vault's R||S
// signature against the version's public key, so a signature by another
// version under the right kid never leaves it.
func TestKeyringRefusesBadSignature(t *testing.T) {
	e := newEnv(t)
	e.add("jwt", fakekv.Version{Created: time.Now().Add(-3 * time.Hour)})
	b := e.open(e.uri("jwt"), backends.Options{})
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: e.uri("jwt"), Backend: b}}, jwks.Config{Prepublish: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The answer names the right version but the signature was made with
	// another key (a vault bug, or a man in the middle).
	e.add("other", fakekv.Version{})
	e.fake.Inject(fakekv.Fault{Op: fakekv.OpSign, SignWith: "other"})
	tok, _, err := kr.SignJWT(ctxTimeout(t, 5*time.Second), map[string]any{"sub": "x"})
	if !errors.Is(err, backends.ErrIntegrity) || tok != "" {
		t.Fatalf("signature by another key: %q %v", tok, err)
	}
}
