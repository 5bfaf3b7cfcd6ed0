package backendtest

import (
	"testing"

	"github.com/kmsgate/kmsgate/jwks"
)

// Roles returns the keyring's published versions as version id -> role.
func Roles(kr *jwks.Keyring) map[string]jwks.Role {
	out := map[string]jwks.Role{}
	for _, k := range kr.State().Plan.Keys {
		out[k.Version.ID] = k.Role
	}
	return out
}

// KIDOf returns the kid of a published version; it fails the test if the
// version is not published.
func KIDOf(t testing.TB, kr *jwks.Keyring, id string) string {
	t.Helper()
	for _, k := range kr.State().Plan.Keys {
		if k.Version.ID == id {
			return k.KID
		}
	}
	t.Fatalf("%s is not in the key set", id)
	return ""
}
