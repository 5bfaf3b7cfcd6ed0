package vault_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
)

// TestVersionsAndSign creates and rotates a real Transit key, checks that
// the backend reports every version with Vault's public key and creation
// time, and signs with each version; each token is verified by an
// independent JWT library against Vault's own PEM, and each signature by
// Vault's verify endpoint.
func TestVersionsAndSign(t *testing.T) {
	e := newEnv(t)
	name := keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	e.rotate("transit", name)
	e.rotate("transit", name)
	want := e.keyVersions("transit", name)
	if len(want) != 3 {
		t.Fatalf("Vault holds %d versions, want 3", len(want))
	}

	b := e.open("hashivault://" + name)
	if b.Kind() != "vault" || b.Ordering() != backends.ByCreation || !b.Remote() {
		t.Fatalf("Kind %q Ordering %v Remote %v", b.Kind(), b.Ordering(), b.Remote())
	}
	vs, err := b.Versions(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 3 {
		t.Fatalf("%d versions, want 3: %+v", len(vs), vs)
	}
	for i, v := range vs {
		n := i + 1
		if v.ID != fmt.Sprintf("%s/v%d", name, n) {
			t.Errorf("version %d: ID %q", n, v.ID)
		}
		if v.State != backends.StateEnabled {
			t.Errorf("%s: state %s, want enabled", v.ID, v.State)
		}
		if !v.PublicKey.Equal(want[n].pub) {
			t.Errorf("%s: public key differs from Vault's", v.ID)
		}
		if !v.Created.Equal(want[n].created) {
			t.Errorf("%s: created %s, Vault says %s", v.ID, v.Created, want[n].created)
		}
		if i > 0 && !v.Created.After(vs[i-1].Created) {
			t.Errorf("%s created %s, not after %s", v.ID, v.Created, vs[i-1].Created)
		}

		tok, doc := signedToken(t, b, v.ID, want[n].pem, fmt.Sprintf("user-%d", n))
		claims := backendtest.VerifyIndependently(t, tok, doc)
		if claims["sub"] != fmt.Sprintf("user-%d", n) {
			t.Errorf("%s: claims %v", v.ID, claims)
		}

		digest := sha256.Sum256([]byte("vault verifies this " + v.ID))
		sig, err := b.Sign(ctxTimeout(t, 10*time.Second), v.ID, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		if !backends.VerifyJOSE(want[n].pub, digest[:], sig) {
			t.Errorf("%s: signature does not verify with the version's key", v.ID)
		}
		if !e.vaultVerify("transit", name, n, digest[:], sig) {
			t.Errorf("%s: Vault's verify endpoint rejects the signature", v.ID)
		}
		// A signature of version n does not verify with another version.
		other := want[n%3+1].pub
		if backends.VerifyJOSE(other, digest[:], sig) {
			t.Errorf("%s: signature verifies with another version's key", v.ID)
		}
	}
}

// TestMount reads a key on another Transit mount (?mount=, nested path).
func TestMount(t *testing.T) {
	e := newEnv(t)
	mount := "team-a/" + keyName(t)
	e.write("sys/mounts/"+mount, map[string]any{"type": "transit"})
	name := keyName(t)
	e.createKey(mount, name, "ecdsa-p256")
	want := e.keyVersions(mount, name)

	b := e.open("hashivault://" + name + "?mount=/" + mount + "/")
	vs, err := b.Versions(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || !vs[0].PublicKey.Equal(want[1].pub) {
		t.Fatalf("versions %+v", vs)
	}
	tok, doc := signedToken(t, b, vs[0].ID, want[1].pem, "alice")
	backendtest.VerifyIndependently(t, tok, doc)

	// The same name on the default mount does not exist.
	_, err = e.open("hashivault://" + name).Versions(ctxTimeout(t, 10*time.Second))
	if !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("key on the default mount: %v, want ErrNotFound", err)
	}
}

// TestMinVersions checks how Transit's min_* settings map to states:
// versions below min_decryption_version are not published, versions below
// min_encryption_version are published but do not sign, and versions
// trimmed below min_available_version are gone. Vault itself refuses to sign
// with a verify-only version.
func TestMinVersions(t *testing.T) {
	e := newEnv(t)
	name := keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	for range 4 {
		e.rotate("transit", name)
	}
	e.configure("transit", name, map[string]any{"min_decryption_version": 3, "min_encryption_version": 4})
	b := e.open("hashivault://" + name)
	ctx := ctxTimeout(t, 30*time.Second)
	vs, err := b.Versions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]backends.State{}
	for _, v := range vs {
		states[v.ID] = v.State
	}
	for n := 1; n <= 5; n++ {
		want := backends.StateEnabled
		switch {
		case n < 3:
			want = backends.StateDisabled
		case n < 4:
			want = backends.StateVerifyOnly
		}
		id := fmt.Sprintf("%s/v%d", name, n)
		if got, ok := states[id]; ok && got != want {
			t.Errorf("%s: state %s, want %s", id, got, want)
		} else if !ok && n >= 3 {
			t.Errorf("%s: missing (states %v)", id, states)
		}
		if n < 3 && states[id].Published() {
			t.Errorf("%s is below min_decryption_version but published", id)
		}
	}
	digest := sha256.Sum256([]byte("x"))
	if _, err := b.Sign(ctx, name+"/v3", digest[:]); !errors.Is(err, backends.ErrDisabled) {
		t.Errorf("sign with v3 (below min_encryption_version): %v, want ErrDisabled", err)
	}
	if _, err := b.Sign(ctx, name+"/v4", digest[:]); err != nil {
		t.Errorf("sign with v4: %v", err)
	}
	if _, err := b.Sign(ctx, name+"/v9", digest[:]); !errors.Is(err, backends.ErrNotFound) {
		t.Errorf("sign with v9 (does not exist): %v, want ErrNotFound", err)
	}

	// Trim: versions below min_available_version leave the key.
	e.write("transit/keys/"+name+"/trim", map[string]any{"min_available_version": 3})
	vs, err = b.Versions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, v := range vs {
		ids = append(ids, v.ID)
	}
	if strings.Join(ids, " ") != fmt.Sprintf("%[1]s/v3 %[1]s/v4 %[1]s/v5", name) {
		t.Errorf("after trim: %v", ids)
	}
}

// TestWrongKeyType refuses Transit keys that are not ecdsa-p256, naming the
// key and its type.
func TestWrongKeyType(t *testing.T) {
	e := newEnv(t)
	for _, typ := range []string{"rsa-2048", "ed25519", "aes256-gcm96", "ecdsa-p384"} {
		t.Run(typ, func(t *testing.T) {
			name := keyName(t)
			e.createKey("transit", name, typ)
			b := e.open("hashivault://" + name)
			_, err := b.Versions(ctxTimeout(t, 10*time.Second))
			if !errors.Is(err, backends.ErrKeyType) {
				t.Fatalf("%s key: %v, want ErrKeyType", typ, err)
			}
			if msg := err.Error(); !strings.Contains(msg, name) || !strings.Contains(msg, typ) {
				t.Fatalf("error does not name the key and its type: %v", err)
			}
		})
	}
}

// TestKeyNotFound: a key that does not exist is ErrNotFound for both calls.
func TestKeyNotFound(t *testing.T) {
	e := newEnv(t)
	name := keyName(t)
	b := e.open("hashivault://" + name)
	ctx := ctxTimeout(t, 10*time.Second)
	if _, err := b.Versions(ctx); !errors.Is(err, backends.ErrNotFound) {
		t.Errorf("versions: %v, want ErrNotFound", err)
	}
	digest := sha256.Sum256([]byte("x"))
	if _, err := b.Sign(ctx, name+"/v1", digest[:]); !errors.Is(err, backends.ErrNotFound) {
		t.Errorf("sign: %v, want ErrNotFound", err)
	}
	// A version ID of another key is refused before any call.
	if _, err := b.Sign(ctx, "other/v1", digest[:]); !errors.Is(err, backends.ErrNotFound) {
		t.Errorf("sign with another key's version: %v", err)
	}
	if _, err := b.Sign(ctx, name+"/v1", digest[:20]); err == nil {
		t.Error("a 20-byte digest was accepted")
	}
}

// TestPermission: a token whose policy only allows transit/sign on another
// key gets ErrPermission; a token with exactly policy.hcl (the README's
// least privilege) can list and sign, and nothing more.
func TestPermission(t *testing.T) {
	e := newEnv(t)
	name, other := keyName(t), keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	e.createKey("transit", other, "ecdsa-p256")
	e.policy("sign-other-"+other, fmt.Sprintf(`path "transit/sign/%s" { capabilities = ["update"] }`, other))
	e.policy("least-"+name, leastPolicy(t, "transit", name))
	digest := sha256.Sum256([]byte("x"))

	t.Run("other key only", func(t *testing.T) {
		t.Setenv("VAULT_TOKEN", e.token(map[string]any{"policies": []string{"sign-other-" + other}, "no_default_policy": true}))
		b := e.open("hashivault://" + name)
		ctx := ctxTimeout(t, 10*time.Second)
		if _, err := b.Versions(ctx); !errors.Is(err, backends.ErrPermission) {
			t.Errorf("versions: %v, want ErrPermission", err)
		}
		_, err := b.Sign(ctx, name+"/v1", digest[:])
		if !errors.Is(err, backends.ErrPermission) || backends.Kind(err) != "permission" {
			t.Errorf("sign: %v, want ErrPermission", err)
		}
		// The same token can sign with the other key: the denial is the
		// policy, not a broken token.
		ob := e.open("hashivault://" + other)
		if _, err := ob.Sign(ctx, other+"/v1", digest[:]); err != nil {
			t.Errorf("sign with the allowed key: %v", err)
		}
	})

	t.Run("least privilege policy", func(t *testing.T) {
		tok := e.token(map[string]any{"policies": []string{"least-" + name}})
		t.Setenv("VAULT_TOKEN", tok)
		b := e.open("hashivault://" + name)
		ctx := ctxTimeout(t, 10*time.Second)
		vs, err := b.Versions(ctx)
		if err != nil || len(vs) != 1 {
			t.Fatalf("versions: %v %v", vs, err)
		}
		sig, err := b.Sign(ctx, vs[0].ID, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		if !backends.VerifyJOSE(vs[0].PublicKey, digest[:], sig) {
			t.Fatal("signature does not verify")
		}
		// Nothing beyond reading and signing: no rotation, no other key.
		restricted := envAt(t, e.addr, tok)
		if _, err := restricted.admin.Logical().Write("transit/keys/"+name+"/rotate", nil); err == nil {
			t.Error("the least-privilege token can rotate the key")
		}
		if _, err := restricted.admin.Logical().Read("transit/keys/" + other); err == nil {
			t.Error("the least-privilege token can read another key")
		}
	})
}

// TestSignatureVersionCheck: the backend requires the version Vault used
// to be the one asked for; asking for a version after it was raised above
// min_encryption_version fails instead of signing with another.
func TestSignatureVersionCheck(t *testing.T) {
	e := newEnv(t)
	name := keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	e.rotate("transit", name)
	b := e.open("hashivault://" + name)
	ctx := ctxTimeout(t, 10*time.Second)
	vs, err := b.Versions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("x"))
	// Each version signs with its own key: the v1 signature does not
	// verify with v2's key and vice versa.
	for i, v := range vs {
		sig, err := b.Sign(ctx, v.ID, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		if !backends.VerifyJOSE(v.PublicKey, digest[:], sig) || backends.VerifyJOSE(vs[1-i].PublicKey, digest[:], sig) {
			t.Fatalf("%s: signature is not by that version", v.ID)
		}
	}
	if _, err := b.Sign(ctx, name+"/v0", digest[:]); !errors.Is(err, backends.ErrNotFound) {
		t.Errorf("v0 (Vault's 'latest'): %v, want ErrNotFound before any call", err)
	}
	if _, err := b.Sign(ctx, name+"/v01", digest[:]); !errors.Is(err, backends.ErrNotFound) {
		t.Errorf("v01: %v, want ErrNotFound", err)
	}
}

// TestConcurrentSign signs from many goroutines at once with one backend.
func TestConcurrentSign(t *testing.T) {
	e := newEnv(t)
	name := keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	b := e.open("hashivault://" + name)
	vs, err := b.Versions(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 16, 10
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := range each {
				d := sha256.Sum256([]byte(fmt.Sprintf("%d/%d", w, i)))
				sig, err := b.Sign(context.Background(), vs[0].ID, d[:])
				if err == nil && !backends.VerifyJOSE(vs[0].PublicKey, d[:], sig) {
					err = fmt.Errorf("signature %d/%d does not verify", w, i)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
