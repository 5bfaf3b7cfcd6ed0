package gcpkms_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/backends/gcpkms/fakekms"
	"github.com/kmsgate/kmsgate/jwks"
)

func jwksKIDs(t *testing.T, doc []byte) []string {
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
// independent library against the served document; it returns the kid.
func signAndVerify(t *testing.T, kr *jwks.Keyring, clock *backendtest.Clock, sub string) string {
	t.Helper()
	claims, err := jwks.NewClaims("https://kmsgate.example", clock.Now(), 5*time.Minute, map[string]any{"sub": sub, "aud": "app"})
	if err != nil {
		t.Fatal(err)
	}
	// The independent verifier checks exp/nbf against the real clock, so
	// the token's times follow the real clock; the fake clock only drives
	// rotation.
	claims["iat"], claims["nbf"], claims["exp"] = time.Now().Unix(), time.Now().Add(-time.Second).Unix(), time.Now().Add(5*time.Minute).Unix()
	tok, kid, err := kr.SignJWT(ctxTimeout(t, 5*time.Second), claims)
	if err != nil {
		t.Fatal(err)
	}
	got := backendtest.VerifyIndependently(t, tok, kr.State().Document.JSON)
	if got["sub"] != sub {
		t.Fatalf("claims %v", got)
	}
	return kid
}

// TestRotation walks a Cloud KMS rotation through the keyring: a new
// version is created (PENDING_GENERATION: not published), generated
// (published, pending), active once it has been published for --prepublish,
// and the old version leaves the JWKS when it is disabled.
func TestRotation(t *testing.T) {
	e := newEnv(t)
	clock := backendtest.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	e.fake.SetClock(clock.Now)
	v1 := e.addVersion(fakekms.VersionSpec{Created: clock.Now().Add(-30 * 24 * time.Hour)})
	b := e.open(keyName, backends.Options{})
	uri := e.uri(keyName)
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: uri, Backend: b}}, jwks.Config{Prepublish: 2 * time.Hour, Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	kid1 := backendtest.KIDOf(t, kr, v1)
	if got := signAndVerify(t, kr, clock, "alice"); got != kid1 {
		t.Fatalf("signed with %s, want v1 %s", got, kid1)
	}

	// Terraform/gcloud creates version 2: PENDING_GENERATION first.
	v2 := e.addVersion(fakekms.VersionSpec{State: pending})
	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if r := backendtest.Roles(kr); len(r) != 1 || r[v1] != jwks.RoleActive {
		t.Fatalf("with v2 pending generation: %v", r)
	}

	// Generated: published at once, but v1 keeps signing.
	clock.Add(time.Minute)
	e.setState(v2, enabled)
	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if r := backendtest.Roles(kr); len(r) != 2 || r[v1] != jwks.RoleActive || r[v2] != jwks.RolePending {
		t.Fatalf("after generation: %v", r)
	}
	kid2 := backendtest.KIDOf(t, kr, v2)
	if kids := jwksKIDs(t, kr.State().Document.JSON); len(kids) != 2 {
		t.Fatalf("JWKS kids %v", kids)
	}
	if got := signAndVerify(t, kr, clock, "bob"); got != kid1 {
		t.Fatalf("v2 signed before --prepublish passed")
	}

	// Not yet: v2 was created 1 minute + 1h59m ago.
	clock.Add(2*time.Hour - 2*time.Minute)
	if got := signAndVerify(t, kr, clock, "carol"); got != kid1 {
		t.Fatalf("v2 signed 1 minute before --prepublish passed")
	}
	// Now v2 has been there for --prepublish: it signs without a refresh.
	clock.Add(2 * time.Minute)
	signs := e.fake.Calls(fakekms.AsymmetricSign)
	if got := signAndVerify(t, kr, clock, "dave"); got != kid2 {
		t.Fatalf("after --prepublish signed with %s, want v2 %s", got, kid2)
	}
	if e.fake.Calls(fakekms.AsymmetricSign) != signs+1 {
		t.Fatal("the signature did not come from Cloud KMS")
	}
	if r := backendtest.Roles(kr); r[v1] != jwks.RoleRetiring || r[v2] != jwks.RoleActive {
		t.Fatalf("after --prepublish: %v", r)
	}

	// A refresh that fails keeps the last good set.
	e.fake.Inject(fakekms.Fault{Method: fakekms.ListCryptoKeyVersions, Code: codes.Unavailable})
	if err := kr.Refresh(ctxTimeout(t, 2*time.Second)); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("refresh with Cloud KMS down: %v", err)
	}
	if kids := jwksKIDs(t, kr.State().Document.JSON); len(kids) != 2 {
		t.Fatalf("last good set not kept: %v", kids)
	}
	e.fake.ClearFaults()

	// Disabling v1 drops it from the JWKS.
	e.setState(v1, disabled)
	if err := kr.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if kids := jwksKIDs(t, kr.State().Document.JSON); len(kids) != 1 || kids[0] != kid2 {
		t.Fatalf("after disabling v1: JWKS kids %v, want only %s", kids, kid2)
	}
	if got := signAndVerify(t, kr, clock, "erin"); got != kid2 {
		t.Fatalf("signed with %s", got)
	}
}

// TestKeyringWrongKeyFault: a signature Cloud KMS made with another key
// never leaves the keyring, even though its CRCs are consistent.
func TestKeyringWrongKeyFault(t *testing.T) {
	e := newEnv(t)
	e.addVersion(fakekms.VersionSpec{Created: time.Now().Add(-time.Hour)})
	b := e.open(keyName, backends.Options{})
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: e.uri(keyName), Backend: b}}, jwks.Config{Prepublish: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.fake.Inject(fakekms.Fault{Method: fakekms.AsymmetricSign, Corrupt: fakekms.WrongKey})
	tok, _, err := kr.SignJWT(ctxTimeout(t, 5*time.Second), map[string]any{"sub": "x"})
	if !errors.Is(err, backends.ErrIntegrity) || tok != "" {
		t.Fatalf("wrong-key signature: %q %v", tok, err)
	}
}
