package awskms_test

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/jwks"
)

// signJWT signs claims through a keyring over one backend and returns the
// token and the served JWKS.
func signJWT(t *testing.T, uri string, b backends.Backend, claims map[string]any) (string, []byte) {
	t.Helper()
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: uri, Backend: b}}, jwks.Config{Prepublish: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.Refresh(ctxT(t)); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	tok, _, err := kr.SignJWT(ctxT(t), claims)
	if err != nil {
		t.Fatalf("SignJWT: %v", err)
	}
	return tok, kr.State().Document.JSON
}

func timeClaims() map[string]any {
	now := time.Now()
	return map[string]any{"sub": "alice", "aud": "app", "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}
}

// TestSignEveryURIForm creates a P-256 key with an alias and opens it by
// alias, alias ARN, key id and key ARN: each reports the same single version
// (the key ARN, its creation time and public key), signs a digest that
// verifies with the public key fetched directly from local-kms, and signs a
// JWT that an independent library verifies against the served JWKS.
func TestSignEveryURIForm(t *testing.T) {
	ep := localKMS(t)
	a := newAdmin(t, ep)
	key := a.p256()
	alias := strings.TrimSuffix(aliasPrefix(t), "/")
	a.alias(alias, *key.KeyId)
	want := a.publicKey(*key.KeyId)
	aliasARN := "arn:aws:kms:" + testRegion + ":" + *key.AWSAccountId + ":" + alias

	for _, uri := range []string{
		hostURI(t, ep, alias),
		hostURI(t, ep, aliasARN),
		hostURI(t, ep, *key.KeyId),
		hostURI(t, ep, *key.Arn),
		"awskms:///" + alias + "?endpoint=" + ep + "&region=" + testRegion,
	} {
		t.Run(uri, func(t *testing.T) {
			b := open(t, uri, backends.Options{})
			if b.Kind() != "awskms" || b.Ordering() != backends.ByCreation || !b.Remote() {
				t.Fatalf("Kind/Ordering/Remote = %s/%v/%v", b.Kind(), b.Ordering(), b.Remote())
			}
			vs, err := b.Versions(ctxT(t))
			if err != nil {
				t.Fatal(err)
			}
			if len(vs) != 1 {
				t.Fatalf("%d versions, want 1: %+v", len(vs), vs)
			}
			v := vs[0]
			if v.ID != *key.Arn || v.State != backends.StateEnabled || !v.Created.Equal(*key.CreationDate) {
				t.Fatalf("version %s %s %s, want %s enabled %s", v.ID, v.State, v.Created, *key.Arn, *key.CreationDate)
			}
			if v.PublicKey == nil || !v.PublicKey.Equal(want) {
				t.Fatalf("public key differs from GetPublicKey's")
			}
			digest := sha256.Sum256([]byte("kmsgate " + uri))
			sig, err := b.Sign(ctxT(t), v.ID, digest[:])
			if err != nil {
				t.Fatal(err)
			}
			if len(sig) != 64 {
				t.Fatalf("signature is %d bytes, want 64", len(sig))
			}
			if !ecdsa.Verify(want, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
				t.Fatal("signature does not verify with the key's public key")
			}
			tok, set := signJWT(t, uri, b, timeClaims())
			claims := backendtest.VerifyIndependently(t, tok, set)
			if claims["sub"] != "alice" {
				t.Fatalf("claims %v", claims)
			}
		})
	}
}

// TestAliasPrefix: every key with an alias under the prefix is one version;
// aliases outside the prefix are ignored, and two aliases of one key are one
// version.
func TestAliasPrefix(t *testing.T) {
	ep := localKMS(t)
	a := newAdmin(t, ep)
	prefix := aliasPrefix(t)
	k1, k2, other := a.p256(), a.p256(), a.p256()
	a.alias(prefix+"one", *k1.KeyId)
	a.alias(prefix+"two", *k2.KeyId)
	a.alias(prefix+"two-again", *k2.KeyId)
	a.alias(strings.TrimSuffix(prefix, "/")+"-outside", *other.KeyId) // shares the text but not the folder
	a.alias(prefix+"nested/three", *k1.KeyId)

	for _, uri := range []string{
		hostURI(t, ep, prefix),
		hostURI(t, ep, "arn:aws:kms:"+testRegion+":"+*k1.AWSAccountId+":"+prefix),
	} {
		b := open(t, uri, backends.Options{})
		vs, err := b.Versions(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, v := range vs {
			if got[v.ID] {
				t.Fatalf("%s: version %s reported twice", uri, v.ID)
			}
			got[v.ID] = true
			if v.State != backends.StateEnabled || v.PublicKey == nil {
				t.Fatalf("%s: version %+v", uri, v)
			}
		}
		if len(got) != 2 || !got[*k1.Arn] || !got[*k2.Arn] {
			t.Fatalf("%s: versions %v, want %s and %s", uri, got, *k1.Arn, *k2.Arn)
		}
		for _, v := range vs {
			d := sha256.Sum256([]byte(v.ID))
			sig, err := b.Sign(ctxT(t), v.ID, d[:])
			if err != nil || !backends.VerifyJOSE(v.PublicKey, d[:], sig) {
				t.Fatalf("%s: sign with %s: %v", uri, v.ID, err)
			}
		}
	}

	// A prefix with no alias under it names nothing: refused, not empty.
	b := open(t, hostURI(t, ep, aliasPrefix(t)), backends.Options{})
	if _, err := b.Versions(ctxT(t)); !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("empty prefix: %v, want ErrNotFound", err)
	}
}

// TestAliasPrefixPagination puts more aliases under a prefix than one
// ListAliases page (100) holds.
func TestAliasPrefixPagination(t *testing.T) {
	ep := localKMS(t)
	a := newAdmin(t, ep)
	prefix := aliasPrefix(t)
	k := a.p256()
	for i := range 120 {
		a.alias(prefix+"a"+strings.Repeat("x", i%7)+"-"+string(rune('a'+i%26))+"-"+time.Duration(i).String(), *k.KeyId)
	}
	last := a.p256()
	a.alias(prefix+"zzz-last", *last.KeyId)
	p := newProxy(t, ep)
	b := open(t, hostURI(t, p.URL, prefix), backends.Options{})
	vs, err := b.Versions(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 2 {
		t.Fatalf("%d versions, want 2", len(vs))
	}
	if n := p.count("ListAliases"); n < 2 {
		t.Fatalf("%d ListAliases calls, want at least 2 pages", n)
	}

	// Many refreshes in a row on reused connections, straight to local-kms:
	// none may fail. With the SDK's own handling of request bodies about one
	// listing in twenty failed with "use of closed network connection" on a
	// 200 answer (see inMemoryBodies); the SDK's retryer, which is off here,
	// used to hide that.
	b = open(t, hostURI(t, ep, prefix), backends.Options{})
	for i := range 50 {
		if _, err := b.Versions(ctxT(t)); err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
	}
}

// TestWrongKeyTypeRefused: RSA, P-384 and symmetric keys are refused with
// ErrKeyType naming the key, its spec and its usage, alone or among good
// keys under a prefix.
func TestWrongKeyTypeRefused(t *testing.T) {
	ep := localKMS(t)
	a := newAdmin(t, ep)
	for _, c := range []struct {
		spec  types.KeySpec
		usage types.KeyUsageType
	}{
		{types.KeySpecRsa2048, types.KeyUsageTypeSignVerify},
		{types.KeySpecEccNistP384, types.KeyUsageTypeSignVerify},
		{types.KeySpecEccSecgP256k1, types.KeyUsageTypeSignVerify},
		{types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt},
	} {
		t.Run(string(c.spec), func(t *testing.T) {
			bad := a.createKey(c.spec, c.usage)
			prefix := aliasPrefix(t)
			a.alias(prefix+"bad", *bad.KeyId)
			good := a.p256()
			a.alias(prefix+"good", *good.KeyId)
			for _, uri := range []string{hostURI(t, ep, *bad.Arn), hostURI(t, ep, prefix+"bad"), hostURI(t, ep, prefix)} {
				b := open(t, uri, backends.Options{})
				vs, err := b.Versions(ctxT(t))
				if !errors.Is(err, backends.ErrKeyType) {
					t.Fatalf("%s: versions %v, err %v; want ErrKeyType", uri, vs, err)
				}
				for _, s := range []string{*bad.Arn, string(c.spec), string(c.usage), "ECC_NIST_P256"} {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("%s: error %q does not name %s", uri, err, s)
					}
				}
			}
		})
	}
}

// TestDisabledAndDeletedKeys: disabled and pending-deletion keys are
// reported with their state and no public key (so the JWKS drops them), and
// signing with them fails with ErrDisabled from local-kms's
// DisabledException and KMSInvalidStateException; a key that does not exist
// is ErrNotFound; a PendingImport key under a prefix is dropped.
func TestDisabledAndDeletedKeys(t *testing.T) {
	ep := localKMS(t)
	a := newAdmin(t, ep)
	prefix := aliasPrefix(t)
	live, disabled, deleted := a.p256(), a.p256(), a.p256()
	a.alias(prefix+"live", *live.KeyId)
	a.alias(prefix+"disabled", *disabled.KeyId)
	a.alias(prefix+"deleted", *deleted.KeyId)
	p := newProxy(t, ep)
	uri := hostURI(t, p.URL, prefix)
	b := open(t, uri, backends.Options{})
	if vs, err := b.Versions(ctxT(t)); err != nil || len(vs) != 3 {
		t.Fatalf("versions %v, %v; want 3", vs, err)
	}

	a.disable(*disabled.KeyId)
	a.scheduleDeletion(*deleted.KeyId)
	// local-kms makes PendingImport keys only with symmetric key specs: such
	// a key under the prefix is dropped for its state, before its type is
	// looked at.
	imp, err := a.c.CreateKey(ctxT(t), &kms.CreateKeyInput{Origin: types.OriginTypeExternal})
	if err != nil {
		t.Fatal(err)
	}
	a.alias(prefix+"import", *imp.KeyMetadata.KeyId)

	p.resetCounts()
	vs, err := b.Versions(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]backends.State{}
	for _, v := range vs {
		states[v.ID] = v.State
		if v.State != backends.StateEnabled && v.PublicKey != nil {
			t.Errorf("%s is %s but has a public key", v.ID, v.State)
		}
	}
	want := map[string]backends.State{
		*live.Arn:            backends.StateEnabled,
		*disabled.Arn:        backends.StateDisabled,
		*deleted.Arn:         backends.StatePendingDeletion,
		*imp.KeyMetadata.Arn: backends.StatePendingImport,
	}
	for id, st := range want {
		if states[id] != st {
			t.Errorf("%s: state %q, want %q", id, states[id], st)
		}
	}
	if n := p.count("GetPublicKey"); n != 0 {
		t.Errorf("%d GetPublicKey calls on the second refresh; public keys are kept", n)
	}

	// The keyring publishes only the live key.
	tok, set := signJWT(t, uri, b, timeClaims())
	backendtest.VerifyIndependently(t, tok, set)
	if n := countKeys(t, set); n != 1 {
		t.Fatalf("JWKS has %d keys, want 1: %s", n, set)
	}

	d := sha256.Sum256([]byte("x"))
	for id, code := range map[string]string{*disabled.Arn: "DisabledException", *deleted.Arn: "KMSInvalidStateException"} {
		_, err := b.Sign(ctxT(t), id, d[:])
		if !errors.Is(err, backends.ErrDisabled) || !strings.Contains(err.Error(), code) || !strings.Contains(err.Error(), id) {
			t.Errorf("sign with %s: %v; want ErrDisabled from %s naming the key", id, err, code)
		}
	}

	// Enabling again brings the key back.
	a.enable(*disabled.KeyId)
	vs, err = b.Versions(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if v.ID == *disabled.Arn && (v.State != backends.StateEnabled || v.PublicKey == nil) {
			t.Fatalf("re-enabled key: %+v", v)
		}
	}

	for _, ref := range []string{"0f0f0f0f-1111-2222-3333-444444444444", strings.TrimSuffix(aliasPrefix(t), "/")} {
		nb := open(t, hostURI(t, ep, ref), backends.Options{})
		if _, err := nb.Versions(ctxT(t)); !errors.Is(err, backends.ErrNotFound) || !strings.Contains(err.Error(), "NotFoundException") {
			t.Errorf("%s: %v, want ErrNotFound from NotFoundException", ref, err)
		}
	}
}

// TestSignOnlyReportedVersions: Sign takes only key ARNs that Versions
// reported with a public key; an alias, a bare key id or another key's ARN
// is refused without a call to AWS, as is a digest that is not 32 bytes.
func TestSignOnlyReportedVersions(t *testing.T) {
	ep := localKMS(t)
	a := newAdmin(t, ep)
	key, other := a.p256(), a.p256()
	alias := strings.TrimSuffix(aliasPrefix(t), "/")
	a.alias(alias, *key.KeyId)
	p := newProxy(t, ep)
	b := open(t, hostURI(t, p.URL, alias), backends.Options{})
	d := sha256.Sum256([]byte("x"))
	if _, err := b.Sign(ctxT(t), *key.Arn, d[:]); !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("sign before Versions: %v, want ErrNotFound", err)
	}
	if _, err := b.Versions(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{alias, "arn:aws:kms:" + testRegion + ":" + *key.AWSAccountId + ":" + alias, *key.KeyId, *other.Arn} {
		if _, err := b.Sign(ctxT(t), id, d[:]); !errors.Is(err, backends.ErrNotFound) {
			t.Errorf("sign with %s: %v, want ErrNotFound", id, err)
		}
	}
	if _, err := b.Sign(ctxT(t), *key.Arn, d[:20]); err == nil {
		t.Error("20-byte digest accepted")
	}
	if n := p.count("Sign"); n != 0 {
		t.Fatalf("%d Sign calls reached AWS, want 0", n)
	}
	if _, err := b.Sign(ctxT(t), *key.Arn, d[:]); err != nil {
		t.Fatal(err)
	}
	if n := p.count("Sign"); n != 1 {
		t.Fatalf("%d Sign calls, want 1", n)
	}
}

// TestSignRequest checks what goes to AWS: the explicit key ARN (never the
// alias the URI names), MessageType DIGEST, ECDSA_SHA_256 and the digest
// itself, by verifying it with local-kms's own Verify.
func TestSignRequest(t *testing.T) {
	ep := localKMS(t)
	a := newAdmin(t, ep)
	key := a.p256()
	alias := strings.TrimSuffix(aliasPrefix(t), "/")
	a.alias(alias, *key.KeyId)
	p := newProxy(t, ep)
	p.recordRequests()
	b := open(t, hostURI(t, p.URL, alias), backends.Options{})
	if _, err := b.Versions(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("what is signed"))
	sig, err := b.Sign(ctxT(t), *key.Arn, d[:])
	if err != nil {
		t.Fatal(err)
	}
	sent := p.requests("Sign")
	if len(sent) != 1 {
		t.Fatalf("%d Sign requests, want 1", len(sent))
	}
	var req struct{ KeyId, MessageType, SigningAlgorithm, Message string }
	if err := json.Unmarshal([]byte(sent[0]), &req); err != nil {
		t.Fatal(err)
	}
	if req.KeyId != *key.Arn || req.MessageType != "DIGEST" || req.SigningAlgorithm != "ECDSA_SHA_256" || req.Message != base64.StdEncoding.EncodeToString(d[:]) {
		t.Fatalf("Sign request %s; want KeyId %s, DIGEST, ECDSA_SHA_256 and the digest", sent[0], *key.Arn)
	}
	// local-kms verifies the DER form of our R||S over the digest.
	der := joseToDER(sig)
	v, err := a.c.Verify(ctxT(t), &kms.VerifyInput{KeyId: key.Arn, Message: d[:], MessageType: types.MessageTypeDigest,
		Signature: der, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	if err != nil || !v.SignatureValid {
		t.Fatalf("local-kms Verify: %v %v", v, err)
	}
	// The same signature does not verify as a signature of the message
	// hashed again (MessageType RAW): the digest was sent as a digest.
	v, err = a.c.Verify(ctxT(t), &kms.VerifyInput{KeyId: key.Arn, Message: d[:], MessageType: types.MessageTypeRaw,
		Signature: der, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	if err == nil && v.SignatureValid {
		t.Fatal("signature verifies over sha256(digest): the digest was hashed again")
	}
}

// joseToDER converts R||S to an ASN.1 DER ECDSA signature.
func joseToDER(sig []byte) []byte {
	enc := func(b []byte) []byte {
		for len(b) > 1 && b[0] == 0 && b[1] < 0x80 {
			b = b[1:]
		}
		if b[0] >= 0x80 {
			b = append([]byte{0}, b...)
		}
		return append([]byte{0x02, byte(len(b))}, b...)
	}
	r, s := enc(append([]byte(nil), sig[:32]...)), enc(append([]byte(nil), sig[32:]...))
	return append([]byte{0x30, byte(len(r) + len(s))}, append(r, s...)...)
}
