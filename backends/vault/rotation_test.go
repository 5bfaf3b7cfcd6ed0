package vault_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/jwks"
)

// jwksKIDs returns the kids of a JWKS document, in order.
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

// TestRotation walks a Transit rotation through the keyring, with Vault's
// real creation times and a fake clock for the prepublish window: a new
// version is published at once but only signs after --prepublish; raising
// min_encryption_version makes a version verify-only, and raising
// min_decryption_version removes the old versions from the JWKS. Every
// token is verified by an independent library against the served JWKS.
func TestRotation(t *testing.T) {
	e := newEnv(t)
	name := keyName(t)
	uri := "hashivault://" + name
	e.createKey("transit", name, "ecdsa-p256")
	b := e.open(uri)
	clock := backendtest.NewClock(time.Now())
	const prepublish = 2 * time.Hour
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: uri, Backend: b}}, jwks.Config{Prepublish: prepublish, Clock: clock.Now, Logger: slog.New(slog.NewTextHandler(e.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	refresh := func() {
		t.Helper()
		if err := kr.Refresh(ctxTimeout(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	kids := map[string]string{} // version ID -> kid
	keys := func() {
		for n, v := range e.keyVersions("transit", name) {
			kid, err := jwks.KID(v.pub, jwks.KIDThumbprint)
			if err != nil {
				t.Fatal(err)
			}
			kids[versionIDOf(name, n)] = kid
		}
	}
	// sign signs a token, verifies it independently against the served
	// JWKS, and returns its kid and the token.
	sign := func(sub string) (string, string) {
		t.Helper()
		now := time.Now()
		tok, kid, err := kr.SignJWT(ctxTimeout(t, 10*time.Second), map[string]any{"sub": sub, "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		if c := backendtest.VerifyIndependently(t, tok, kr.State().Document.JSON); c["sub"] != sub {
			t.Fatalf("claims %v", c)
		}
		return kid, tok
	}
	want := func(step string, r map[string]jwks.Role, served ...string) {
		t.Helper()
		got := backendtest.Roles(kr)
		if len(got) != len(r) {
			t.Fatalf("%s: roles %v, want %v", step, got, r)
		}
		for id, role := range r {
			if got[id] != role {
				t.Fatalf("%s: roles %v, want %v", step, got, r)
			}
		}
		var wantKIDs []string
		for _, id := range served {
			wantKIDs = append(wantKIDs, kids[id])
		}
		gotKIDs := jwksKIDs(t, kr.State().Document.JSON)
		slices.Sort(wantKIDs)
		slices.Sort(gotKIDs)
		if !slices.Equal(gotKIDs, wantKIDs) {
			t.Fatalf("%s: JWKS kids %v, want %v (%v)", step, gotKIDs, wantKIDs, served)
		}
	}
	v1, v2, v3 := versionIDOf(name, 1), versionIDOf(name, 2), versionIDOf(name, 3)

	refresh()
	keys()
	want("one version", map[string]jwks.Role{v1: jwks.RoleActive}, v1)
	if kid, _ := sign("a"); kid != kids[v1] {
		t.Fatalf("signed with %s, want v1", kid)
	}

	// Rotate: v2 is published at once, pending; v1 keeps signing.
	e.rotate("transit", name)
	refresh()
	keys()
	want("rotated", map[string]jwks.Role{v1: jwks.RoleActive, v2: jwks.RolePending}, v1, v2)
	kid, oldTok := sign("b")
	if kid != kids[v1] {
		t.Fatalf("signed with %s right after rotation, want v1", kid)
	}
	clock.Add(prepublish - time.Minute)
	if kid, _ := sign("c"); kid != kids[v1] {
		t.Fatalf("signed with %s before the prepublish window ended, want v1", kid)
	}

	// After --prepublish, v2 signs (no refresh needed); v1 is retiring and
	// tokens it signed still verify.
	clock.Add(2 * time.Minute)
	want("prepublished", map[string]jwks.Role{v1: jwks.RoleRetiring, v2: jwks.RoleActive}, v1, v2)
	if kid, _ := sign("d"); kid != kids[v2] {
		t.Fatalf("signed with %s after the prepublish window, want v2", kid)
	}
	backendtest.VerifyIndependently(t, oldTok, kr.State().Document.JSON)

	// Rotate again and raise min_encryption_version to 3: v2 can no longer
	// sign in Vault, so the gateway moves to v3 at once (the only version
	// that can sign) rather than ask Vault for a refused version; v1 and v2
	// stay published.
	e.rotate("transit", name)
	e.configure("transit", name, map[string]any{"min_encryption_version": 3})
	refresh()
	keys()
	vs, err := b.Versions(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if vs[1].ID != v2 || vs[1].State != backends.StateVerifyOnly {
		t.Fatalf("v2 after min_encryption_version=3: %+v", vs[1])
	}
	want("min_encryption_version", map[string]jwks.Role{v1: jwks.RoleRetiring, v2: jwks.RoleRetiring, v3: jwks.RoleActive}, v1, v2, v3)
	if kid, _ := sign("e"); kid != kids[v3] {
		t.Fatalf("signed with %s, want v3", kid)
	}

	// Raise min_decryption_version to 3: v1 and v2 leave the JWKS (Vault no
	// longer lists them), and a token signed by v1 no longer verifies.
	e.configure("transit", name, map[string]any{"min_decryption_version": 3})
	refresh()
	want("min_decryption_version", map[string]jwks.Role{v3: jwks.RoleActive}, v3)
	if kid, _ := sign("f"); kid != kids[v3] {
		t.Fatalf("signed with %s, want v3", kid)
	}
	if verifies(oldTok, kr.State().Document.JSON) {
		t.Fatal("a token signed by v1 still verifies after v1 left the JWKS")
	}
}

func versionIDOf(name string, n int) string { return fmt.Sprintf("%s/v%d", name, n) }

// verifies reports whether token verifies against the JWKS doc with
// lestrrat-go/jwx (for checks that a token must NOT verify).
func verifies(token string, doc []byte) bool {
	set, err := jwk.Parse(doc)
	if err != nil {
		return false
	}
	_, err = jwt.Parse([]byte(token), jwt.WithKeySet(set, jws.WithRequireKid(true)), jwt.WithValidate(true))
	return err == nil
}
