package gcpkms_test

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/grpc/codes"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/gcpkms"
	"github.com/kmsgate/kmsgate/backends/gcpkms/fakekms"
)

func TestBackendIdentity(t *testing.T) {
	e := newEnv(t)
	b := e.open(keyName, backends.Options{})
	if b.Kind() != "gcpkms" || b.Ordering() != backends.ByCreation || !b.Remote() {
		t.Fatalf("Kind %q Ordering %v Remote %v", b.Kind(), b.Ordering(), b.Remote())
	}
	if b.Name() != keyName {
		t.Fatalf("Name %q", b.Name())
	}
}

func TestVersionsEveryState(t *testing.T) {
	e := newEnv(t)
	base := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	v1 := e.addVersion(fakekms.VersionSpec{Created: base})
	v2 := e.addVersion(fakekms.VersionSpec{Created: base.Add(time.Hour)})
	vDisabled := e.addVersion(fakekms.VersionSpec{Created: base.Add(2 * time.Hour), State: disabled})
	vScheduled := e.addVersion(fakekms.VersionSpec{Created: base.Add(3 * time.Hour)})
	e.setState(vScheduled, kmspb.CryptoKeyVersion_DESTROY_SCHEDULED)
	vDestroyed := e.addVersion(fakekms.VersionSpec{Created: base.Add(4 * time.Hour)})
	e.setState(vDestroyed, kmspb.CryptoKeyVersion_DESTROYED)
	vPending := e.addVersion(fakekms.VersionSpec{Created: base.Add(5 * time.Hour), State: pending})
	vP384 := e.addVersion(fakekms.VersionSpec{Created: base.Add(6 * time.Hour), Algorithm: p384})

	b := e.open(keyName, backends.Options{})
	vs, err := b.Versions(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		state   backends.State
		created time.Time
		hasKey  bool
	}
	want := map[string]row{
		v1:         {backends.StateEnabled, base, true},
		v2:         {backends.StateEnabled, base.Add(time.Hour), true},
		vDisabled:  {backends.StateDisabled, base.Add(2 * time.Hour), false},
		vScheduled: {backends.StatePendingDeletion, base.Add(3 * time.Hour), false},
		vPending:   {backends.StatePendingGeneration, base.Add(5 * time.Hour), false},
	}
	got := map[string]row{}
	for _, v := range vs {
		got[v.ID] = row{v.State, v.Created, v.PublicKey != nil}
		if v.PublicKey != nil && !v.PublicKey.Equal(e.publicKey(v.ID)) {
			t.Errorf("%s: public key differs from the fake's", v.ID)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d versions, want %d: %v", len(got), len(want), got)
	}
	for id, w := range want {
		g, ok := got[id]
		if !ok {
			t.Errorf("%s missing", id)
			continue
		}
		if g.state != w.state || !g.created.Equal(w.created) || g.hasKey != w.hasKey {
			t.Errorf("%s: got %+v, want %+v", id, g, w)
		}
	}
	for _, id := range []string{vDestroyed, vP384} {
		if _, ok := got[id]; ok {
			t.Errorf("%s should not be listed", id)
		}
	}
	if f := e.fake.Filters(); len(f) != 1 || f[0] != "state != DESTROYED" {
		t.Errorf("list filters %q", f)
	}
	if logs := e.logs.String(); !contains(logs, "level=WARN", vP384, "EC_SIGN_P384_SHA384") {
		t.Errorf("no warning about the P-384 version:\n%s", logs)
	}
	// Public keys are cached: a second refresh makes one list call and no
	// public key call, and the warning is not repeated.
	pk := e.fake.Calls(fakekms.GetPublicKey)
	if _, err := b.Versions(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if n := e.fake.Calls(fakekms.GetPublicKey); n != pk {
		t.Errorf("second refresh made %d GetPublicKey calls", n-pk)
	}
	if n := strings.Count(e.logs.String(), "not EC_SIGN_P256_SHA256"); n != 1 {
		t.Errorf("warned %d times about the P-384 version, want once", n)
	}
	if n := e.fake.Calls(fakekms.GetCryptoKey); n != 1 {
		t.Errorf("GetCryptoKey called %d times, want once", n)
	}
}

func TestVersionsEveryPage(t *testing.T) {
	e := newEnv(t)
	var names []string
	for i := 0; i < 7; i++ {
		names = append(names, e.addVersion(fakekms.VersionSpec{}))
	}
	e.fake.SetMaxPageSize(2)
	b := e.open(keyName, backends.Options{})
	vs, err := b.Versions(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vs {
		got = append(got, v.ID)
	}
	if !slices.Equal(got, names) {
		t.Fatalf("got %v\nwant %v", got, names)
	}
	if n := e.fake.Calls(fakekms.ListCryptoKeyVersions); n != 4 {
		t.Fatalf("%d list calls for 7 versions in pages of 2, want 4", n)
	}
}

func TestPinnedVersion(t *testing.T) {
	e := newEnv(t)
	v1 := e.addVersion(fakekms.VersionSpec{})
	v2 := e.addVersion(fakekms.VersionSpec{})
	b := e.open(v2, backends.Options{})
	if b.Name() != v2 {
		t.Fatalf("Name %q", b.Name())
	}
	vs, err := b.Versions(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || vs[0].ID != v2 || vs[0].State != backends.StateEnabled || !vs[0].PublicKey.Equal(e.publicKey(v2)) {
		t.Fatalf("pinned versions %+v", vs)
	}
	if n := e.fake.Calls(fakekms.ListCryptoKeyVersions); n != 0 {
		t.Fatalf("pinned URI listed versions %d times", n)
	}
	sig, err := b.Sign(ctxTimeout(t, 5*time.Second), v2, digest("x"))
	if err != nil || !backends.VerifyJOSE(e.publicKey(v2), digest("x"), sig) {
		t.Fatalf("sign with the pinned version: %v", err)
	}
	before := e.fake.Calls(fakekms.AsymmetricSign)
	if _, err := b.Sign(ctxTimeout(t, 5*time.Second), v1, digest("x")); !errors.Is(err, backends.ErrNotFound) || !contains(err.Error(), "pinned to "+v2) {
		t.Fatalf("sign with another version of a pinned URI: %v", err)
	}
	if e.fake.Calls(fakekms.AsymmetricSign) != before {
		t.Fatal("a version outside the URI reached the service")
	}

	// A pinned version that is disabled is reported, unpublished.
	e.setState(v2, disabled)
	vs, err = b.Versions(ctxTimeout(t, 5*time.Second))
	if err != nil || len(vs) != 1 || vs[0].State != backends.StateDisabled {
		t.Fatalf("disabled pinned version: %+v, %v", vs, err)
	}
}

func TestPinnedVersionWrongName(t *testing.T) {
	e := newEnv(t)
	v := e.addVersion(fakekms.VersionSpec{})
	b := e.open(v, backends.Options{})
	e.fake.Inject(fakekms.Fault{Method: fakekms.GetCryptoKeyVersion, Corrupt: fakekms.WrongName})
	_, err := b.Versions(ctxTimeout(t, 5*time.Second))
	if !errors.Is(err, backends.ErrIntegrity) || !contains(err.Error(), v) {
		t.Fatalf("answer about another version: %v", err)
	}
	if st := b.Stats(); st.IntegrityMismatches["version_name"] != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPinnedOtherAlgorithmRefused(t *testing.T) {
	e := newEnv(t)
	v := e.addVersion(fakekms.VersionSpec{Algorithm: p384})
	b := e.open(v, backends.Options{})
	_, err := b.Versions(ctxTimeout(t, 5*time.Second))
	if !errors.Is(err, backends.ErrKeyType) || !contains(err.Error(), v, "EC_SIGN_P384_SHA384", "want EC_SIGN_P256_SHA256") {
		t.Fatalf("pinned P-384 version: %v", err)
	}
}

func TestPinnedRSARefused(t *testing.T) {
	e := newEnv(t)
	v := e.addVersion(fakekms.VersionSpec{Algorithm: kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_2048_SHA256})
	b := e.open(v, backends.Options{})
	_, err := b.Versions(ctxTimeout(t, 5*time.Second))
	if !errors.Is(err, backends.ErrKeyType) || !contains(err.Error(), v, "RSA_SIGN_PKCS1_2048_SHA256") {
		t.Fatalf("pinned RSA version: %v", err)
	}
}

func TestWrongPurposeRefused(t *testing.T) {
	e := newEnv(t)
	const encKey = "projects/test-project/locations/europe-west1/keyRings/kmsgate/cryptoKeys/enc"
	if err := e.fake.CreateKey(encKey, kmspb.CryptoKey_ENCRYPT_DECRYPT, kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION); err != nil {
		t.Fatal(err)
	}
	b := e.open(encKey, backends.Options{})
	_, err := b.Versions(ctxTimeout(t, 5*time.Second))
	if !errors.Is(err, backends.ErrKeyType) || !contains(err.Error(), encKey, "purpose ENCRYPT_DECRYPT") {
		t.Fatalf("symmetric key: %v", err)
	}
}

func TestTemplateWarning(t *testing.T) {
	e := newEnv(t)
	const k384 = "projects/test-project/locations/europe-west1/keyRings/kmsgate/cryptoKeys/p384"
	if err := e.fake.CreateKey(k384, signKey, p384); err != nil {
		t.Fatal(err)
	}
	b := e.open(k384, backends.Options{})
	vs, err := b.Versions(ctxTimeout(t, 5*time.Second))
	if err != nil || len(vs) != 0 {
		t.Fatalf("%v, %v", vs, err)
	}
	if !contains(e.logs.String(), "version template", "EC_SIGN_P384_SHA384") {
		t.Fatalf("no warning about the version template:\n%s", e.logs.String())
	}
}

func TestNotFoundAndPermission(t *testing.T) {
	e := newEnv(t)
	v := e.addVersion(fakekms.VersionSpec{})
	missing := strings.Replace(keyName, "cryptoKeys/jwt", "cryptoKeys/nope", 1)
	if _, err := e.open(missing, backends.Options{}).Versions(ctxTimeout(t, 5*time.Second)); !errors.Is(err, backends.ErrNotFound) || !contains(err.Error(), missing) {
		t.Fatalf("missing key: %v", err)
	}
	if _, err := e.open(keyName+"/cryptoKeyVersions/9", backends.Options{}).Versions(ctxTimeout(t, 5*time.Second)); !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("missing version: %v", err)
	}
	b := e.open(keyName, backends.Options{})
	if _, err := b.Versions(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	e.fake.Deny(keyName)
	calls := e.fake.Calls(fakekms.AsymmetricSign)
	if _, err := b.Sign(ctxTimeout(t, 5*time.Second), v, digest("x")); !errors.Is(err, backends.ErrPermission) || backends.Kind(err) != "permission" {
		t.Fatalf("denied sign: %v", err)
	}
	if n := e.fake.Calls(fakekms.AsymmetricSign) - calls; n != 1 {
		t.Fatalf("permission denied was tried %d times, want once", n)
	}
	if _, err := b.Versions(ctxTimeout(t, 5*time.Second)); !errors.Is(err, backends.ErrPermission) {
		t.Fatalf("denied list: %v", err)
	}
}

func TestSign(t *testing.T) {
	e := newEnv(t)
	v := e.addVersion(fakekms.VersionSpec{})
	b := e.open(keyName, backends.Options{})
	if _, err := b.Versions(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	pub := e.publicKey(v)
	for i := 0; i < 20; i++ {
		d := digest(strings.Repeat("a", i))
		sig, err := b.Sign(ctxTimeout(t, 5*time.Second), v, d)
		if err != nil {
			t.Fatal(err)
		}
		if len(sig) != 64 {
			t.Fatalf("signature is %d bytes", len(sig))
		}
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		if !ecdsa.Verify(pub, d, r, s) {
			t.Fatal("signature does not verify with the fake's public key")
		}
	}
	if st := b.Stats(); len(st.IntegrityMismatches) != 0 || st.Retries != 0 {
		t.Fatalf("clean signing counted %+v", st)
	}
	if _, err := b.Sign(ctxTimeout(t, 5*time.Second), v, []byte("short")); err == nil || !contains(err.Error(), "digest is 5 bytes") {
		t.Fatalf("short digest: %v", err)
	}
	calls := e.fake.Calls(fakekms.AsymmetricSign)
	for _, bad := range []string{
		strings.Replace(v, "cryptoKeys/jwt", "cryptoKeys/other", 1),
		keyName, keyName + "/cryptoKeyVersions/", keyName + "/cryptoKeyVersions/01", keyName + "/cryptoKeyVersions/1/x", keyName + "/cryptoKeyVersions/-1",
	} {
		if _, err := b.Sign(ctxTimeout(t, 5*time.Second), bad, digest("x")); !errors.Is(err, backends.ErrNotFound) || !contains(err.Error(), "not a version of "+keyName) {
			t.Errorf("Sign(%q): %v", bad, err)
		}
	}
	if e.fake.Calls(fakekms.AsymmetricSign) != calls {
		t.Fatal("a version outside the URI reached the service")
	}
}

// TestSignRefusedStates: once a version leaves ENABLED the service refuses
// to sign, and the backend reports ErrDisabled without retrying.
func TestSignRefusedStates(t *testing.T) {
	for _, st := range []kmspb.CryptoKeyVersion_CryptoKeyVersionState{
		kmspb.CryptoKeyVersion_DISABLED, kmspb.CryptoKeyVersion_DESTROY_SCHEDULED, kmspb.CryptoKeyVersion_DESTROYED,
	} {
		t.Run(st.String(), func(t *testing.T) {
			e := newEnv(t)
			v := e.addVersion(fakekms.VersionSpec{})
			b := e.open(keyName, backends.Options{})
			if _, err := b.Versions(ctxTimeout(t, 5*time.Second)); err != nil {
				t.Fatal(err)
			}
			e.setState(v, st)
			calls := e.fake.Calls(fakekms.AsymmetricSign)
			_, err := b.Sign(ctxTimeout(t, 5*time.Second), v, digest("x"))
			if !errors.Is(err, backends.ErrDisabled) || !contains(err.Error(), v, st.String()) {
				t.Fatalf("sign with a %s version: %v", st, err)
			}
			if n := e.fake.Calls(fakekms.AsymmetricSign) - calls; n != 1 {
				t.Fatalf("%d AsymmetricSign calls, want 1", n)
			}
		})
	}
	t.Run("PENDING_GENERATION", func(t *testing.T) {
		e := newEnv(t)
		v := e.addVersion(fakekms.VersionSpec{State: pending})
		b := e.open(keyName, backends.Options{})
		_, err := b.Sign(ctxTimeout(t, 5*time.Second), v, digest("x"))
		if !errors.Is(err, backends.ErrDisabled) || !contains(err.Error(), "PENDING_GENERATION") {
			t.Fatalf("sign with a pending version: %v", err)
		}
	})
}

// TestIntegrityFaults injects each corrupted answer once (a retry cures
// it, and the mismatch is counted) and then on every call (the call fails
// with ErrIntegrity after the bounded attempts).
func TestIntegrityFaults(t *testing.T) {
	for _, tc := range []struct {
		name    string
		method  string
		corrupt fakekms.Corruption
		check   string
	}{
		{"signature_crc32c", fakekms.AsymmetricSign, fakekms.SignatureCRC, "signature_crc32c"},
		{"signature corrupted in transit", fakekms.AsymmetricSign, fakekms.SignatureBytes, "signature_crc32c"},
		{"verified_digest_crc32c", fakekms.AsymmetricSign, fakekms.UnverifiedDigest, "verified_digest_crc32c"},
		{"wrong version name", fakekms.AsymmetricSign, fakekms.WrongName, "name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			v := e.addVersion(fakekms.VersionSpec{})
			b := e.open(keyName, backends.Options{})
			if _, err := b.Versions(ctxTimeout(t, 5*time.Second)); err != nil {
				t.Fatal(err)
			}
			pub := e.publicKey(v)

			e.fake.Inject(fakekms.Fault{Method: tc.method, Corrupt: tc.corrupt, Times: 1})
			calls := e.fake.Calls(tc.method)
			sig, err := b.Sign(ctxTimeout(t, 5*time.Second), v, digest("once"))
			if err != nil || !backends.VerifyJOSE(pub, digest("once"), sig) {
				t.Fatalf("one bad answer was not cured by a retry: %v", err)
			}
			if n := e.fake.Calls(tc.method) - calls; n != 2 {
				t.Fatalf("%d calls, want 2", n)
			}
			if st := b.Stats(); st.IntegrityMismatches[tc.check] != 1 || st.Retries != 1 {
				t.Fatalf("stats %+v, want one %s mismatch and one retry", st, tc.check)
			}

			e.fake.Inject(fakekms.Fault{Method: tc.method, Corrupt: tc.corrupt})
			calls = e.fake.Calls(tc.method)
			sig, err = b.Sign(ctxTimeout(t, 5*time.Second), v, digest("always"))
			if !errors.Is(err, backends.ErrIntegrity) || backends.Kind(err) != "integrity" || sig != nil {
				t.Fatalf("persistent bad answers: sig %x, err %v", sig, err)
			}
			if n := e.fake.Calls(tc.method) - calls; n != 3 {
				t.Fatalf("%d calls, want the bound of 3", n)
			}
			if st := b.Stats(); st.IntegrityMismatches[tc.check] != 4 {
				t.Fatalf("stats %+v, want 4 %s mismatches", st, tc.check)
			}
		})
	}
}

func TestPublicKeyIntegrity(t *testing.T) {
	for _, tc := range []struct {
		corrupt fakekms.Corruption
		check   string
	}{
		{fakekms.PEMCRC, "pem_crc32c"},
		{fakekms.WrongName, "public_key_name"},
	} {
		t.Run(tc.check, func(t *testing.T) {
			e := newEnv(t)
			v := e.addVersion(fakekms.VersionSpec{})
			b := e.open(keyName, backends.Options{})
			e.fake.Inject(fakekms.Fault{Method: fakekms.GetPublicKey, Corrupt: tc.corrupt})
			_, err := b.Versions(ctxTimeout(t, 5*time.Second))
			if !errors.Is(err, backends.ErrIntegrity) || !contains(err.Error(), v) {
				t.Fatalf("persistently corrupted public key: %v", err)
			}
			if n := e.fake.Calls(fakekms.GetPublicKey); n != 3 {
				t.Fatalf("%d GetPublicKey calls, want 3", n)
			}
			e.fake.ClearFaults()
			e.fake.Inject(fakekms.Fault{Method: fakekms.GetPublicKey, Corrupt: tc.corrupt, Times: 2})
			vs, err := b.Versions(ctxTimeout(t, 5*time.Second))
			if err != nil || len(vs) != 1 || !vs[0].PublicKey.Equal(e.publicKey(v)) {
				t.Fatalf("two bad answers then a good one: %+v, %v", vs, err)
			}
			if st := b.Stats(); st.IntegrityMismatches[tc.check] != 5 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestTransientErrors(t *testing.T) {
	for _, tc := range []struct {
		code  codes.Code
		kind  error
		retry bool
	}{
		{codes.Unavailable, backends.ErrUnavailable, true},
		{codes.ResourceExhausted, backends.ErrThrottled, true},
		{codes.DeadlineExceeded, backends.ErrUnavailable, true},
		{codes.Internal, backends.ErrUnavailable, true},
		{codes.FailedPrecondition, backends.ErrDisabled, false},
		{codes.PermissionDenied, backends.ErrPermission, false},
		{codes.NotFound, backends.ErrNotFound, false},
		{codes.InvalidArgument, nil, false},
	} {
		t.Run(tc.code.String(), func(t *testing.T) {
			e := newEnv(t)
			v := e.addVersion(fakekms.VersionSpec{})
			b := e.open(keyName, backends.Options{})
			if _, err := b.Versions(ctxTimeout(t, 5*time.Second)); err != nil {
				t.Fatal(err)
			}
			e.fake.Inject(fakekms.Fault{Method: fakekms.AsymmetricSign, Code: tc.code})
			_, err := b.Sign(ctxTimeout(t, 5*time.Second), v, digest("x"))
			if err == nil {
				t.Fatal("no error")
			}
			if tc.kind != nil && !errors.Is(err, tc.kind) {
				t.Fatalf("%v is not %v", err, tc.kind)
			}
			if tc.kind == nil && (backends.Kind(err) != "unknown" || !contains(err.Error(), "InvalidArgument")) {
				t.Fatalf("InvalidArgument: %v (kind %s)", err, backends.Kind(err))
			}
			want := 1
			if tc.retry {
				want = 3
			}
			if n := e.fake.Calls(fakekms.AsymmetricSign); n != want {
				t.Fatalf("%d calls, want %d", n, want)
			}
			if tc.retry {
				// Two failures, then the service recovers: the caller
				// sees a signature.
				e.fake.ClearFaults()
				e.fake.Inject(fakekms.Fault{Method: fakekms.AsymmetricSign, Code: tc.code, Times: 2})
				if _, err := b.Sign(ctxTimeout(t, 5*time.Second), v, digest("x")); err != nil {
					t.Fatalf("after two %s: %v", tc.code, err)
				}
			}
		})
	}
}

// TestDeadline: a service that answers after the caller's deadline does not
// hold the call (the client library's own retries would wait up to 60 s);
// it fails with ErrUnavailable at the deadline.
func TestDeadline(t *testing.T) {
	e := newEnv(t)
	v := e.addVersion(fakekms.VersionSpec{})
	b := e.open(keyName, backends.Options{})
	if _, err := b.Versions(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	e.fake.Inject(fakekms.Fault{Method: fakekms.AsymmetricSign, Delay: 10 * time.Second})
	const deadline = 300 * time.Millisecond
	start := time.Now()
	_, err := b.Sign(ctxTimeout(t, deadline), v, digest("x"))
	took := time.Since(start)
	if !errors.Is(err, backends.ErrUnavailable) || backends.Kind(err) != "unavailable" {
		t.Fatalf("slow service: %v", err)
	}
	if took > deadline+700*time.Millisecond {
		t.Fatalf("returned after %s, deadline %s", took, deadline)
	}

	// Without a deadline of its own, each attempt gets the attempt timeout
	// and the call the default timeout, both far below 60 s.
	e2 := newEnv(t)
	v2 := e2.addVersion(fakekms.VersionSpec{})
	b2 := e2.open(keyName, backends.Options{})
	if _, err := b2.Versions(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	gcpkms.SetTiming(b2, 900*time.Millisecond, 200*time.Millisecond, 0)
	e2.fake.Inject(fakekms.Fault{Method: fakekms.AsymmetricSign, Delay: 10 * time.Second})
	start = time.Now()
	_, err = b2.Sign(context.Background(), v2, digest("x"))
	took = time.Since(start)
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("slow service without a caller deadline: %v", err)
	}
	if took > 1600*time.Millisecond {
		t.Fatalf("returned after %s, default timeout 900ms", took)
	}
	if n := e2.fake.Calls(fakekms.AsymmetricSign); n < 2 || n > 3 {
		t.Fatalf("%d attempts of 200ms within 900ms, want 2 or 3", n)
	}
}

// TestPendingGenerationPolled: a PENDING_GENERATION version is polled in the
// background; once generated, its public key is cached without a refresh,
// and signing never polls.
func TestPendingGenerationPolled(t *testing.T) {
	e := newEnv(t)
	v1 := e.addVersion(fakekms.VersionSpec{})
	v2 := e.addVersion(fakekms.VersionSpec{State: pending})
	b := e.open(keyName, backends.Options{})
	vs, err := b.Versions(ctxTimeout(t, 5*time.Second))
	if err != nil || len(vs) != 2 || vs[1].ID != v2 || vs[1].State != backends.StatePendingGeneration || vs[1].PublicKey != nil {
		t.Fatalf("%+v, %v", vs, err)
	}
	waitFor(t, "the poller to read the pending version", func() bool { return e.fake.Calls(fakekms.GetCryptoKeyVersion) >= 2 })

	// Signing never waits for the poller: with a poll held for 1 s,
	// a signature still comes back at once.
	e.fake.Inject(fakekms.Fault{Method: fakekms.GetCryptoKeyVersion, Delay: time.Second, Times: 1})
	polls := e.fake.Calls(fakekms.GetCryptoKeyVersion)
	waitFor(t, "a held poll", func() bool { return e.fake.Calls(fakekms.GetCryptoKeyVersion) > polls })
	start := time.Now()
	if _, err := b.Sign(ctxTimeout(t, 5*time.Second), v1, digest("x")); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("sign took %s while a poll was held", took)
	}

	pkCalls := e.fake.Calls(fakekms.GetPublicKey)
	e.setState(v2, enabled)
	waitFor(t, "the poller to fetch the new public key", func() bool { return contains(e.logs.String(), "version generated", v2) })
	vs, err = b.Versions(ctxTimeout(t, 5*time.Second))
	if err != nil || len(vs) != 2 || vs[1].State != backends.StateEnabled || !vs[1].PublicKey.Equal(e.publicKey(v2)) {
		t.Fatalf("%+v, %v", vs, err)
	}
	if n := e.fake.Calls(fakekms.GetPublicKey); n != pkCalls+1 {
		t.Fatalf("refresh after generation fetched the key again (%d calls)", n-pkCalls)
	}
	// The poller ends once the version is generated.
	waitFor(t, "the poller to end", func() bool { return gcpkms.Pollers(b) == 0 })
}

func TestCloseStopsPollers(t *testing.T) {
	e := newEnv(t)
	e.addVersion(fakekms.VersionSpec{State: pending})
	b := e.open(keyName, backends.Options{})
	if _, err := b.Versions(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a poll", func() bool { return e.fake.Calls(fakekms.GetCryptoKeyVersion) >= 1 })
	start := time.Now()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Close took %s", took)
	}
	// Close has waited for the poller, which was still polling: none is
	// left to poll again.
	if n := gcpkms.Pollers(b); n != 0 {
		t.Fatalf("%d pollers left after Close", n)
	}
}

func TestClientRateLimit(t *testing.T) {
	e := newEnv(t)
	v := e.addVersion(fakekms.VersionSpec{})
	b := e.open(keyName, backends.Options{QPS: 1})
	// At 1 call per second, the first signature takes the only token; the
	// next cannot get one within 500 ms and is refused at once, before
	// reaching the service.
	if _, err := b.Sign(ctxTimeout(t, 500*time.Millisecond), v, digest("x")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := b.Sign(ctxTimeout(t, 500*time.Millisecond), v, digest("x"))
	if !errors.Is(err, backends.ErrThrottled) || backends.Kind(err) != "throttled" {
		t.Fatalf("over the client-side limit: %v", err)
	}
	if n := e.fake.Calls(fakekms.AsymmetricSign); n != 1 {
		t.Fatalf("%d AsymmetricSign calls, want 1: the second went past the limit", n)
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Fatalf("took %s", took)
	}
}

// TestLimiterRefusal: a call that --backend-qps cannot fit before its
// deadline is treated as in every remote backend (backends.Caller): it is
// ErrThrottled, returned at once and never retried. Refused before the
// first attempt, nothing reaches the service; refused before a retry, the
// one failed call is all that did.
func TestLimiterRefusal(t *testing.T) {
	e := newEnv(t)
	v := e.addVersion(fakekms.VersionSpec{})
	b := e.open(keyName, backends.Options{QPS: 1}) // burst 1
	// This signature takes the only token: the next one is a second away.
	if _, err := b.Sign(ctxTimeout(t, 5*time.Second), v, digest("x")); err != nil {
		t.Fatal(err)
	}
	before := gcpkms.CallStats(b)
	signs := e.fake.Calls(fakekms.AsymmetricSign)

	// Deadline 500ms, next slot in 1s: refused before the first attempt.
	start := time.Now()
	_, err := b.Sign(ctxTimeout(t, 500*time.Millisecond), v, digest("x"))
	if took := time.Since(start); took > 250*time.Millisecond {
		t.Fatalf("refusal took %s, want it at once, not at the 500ms deadline", took)
	}
	checkRefusal(t, err)
	if n := e.fake.Calls(fakekms.AsymmetricSign) - signs; n != 0 {
		t.Fatalf("%d AsymmetricSign calls, want none", n)
	}

	// Deadline 1.5s: the first attempt gets the slot at 1s and fails with
	// a retryable UNAVAILABLE; the retry's slot (2s) is past the deadline,
	// so the call ends ErrThrottled with no retry.
	e.fake.Inject(fakekms.Fault{Method: fakekms.AsymmetricSign, Code: codes.Unavailable, Times: 1})
	_, err = b.Sign(ctxTimeout(t, 1500*time.Millisecond), v, digest("x"))
	checkRefusal(t, err)
	if n := e.fake.Calls(fakekms.AsymmetricSign) - signs; n != 1 {
		t.Fatalf("%d AsymmetricSign calls, want 1 (the failed attempt, no retry)", n)
	}
	after := gcpkms.CallStats(b)
	if got := [3]uint64{after.Attempts - before.Attempts, after.Retries - before.Retries, after.Refused - before.Refused}; got != [3]uint64{1, 0, 2} {
		t.Fatalf("attempts/retries/refusals %v, want [1 0 2]", got)
	}
	if st := b.Stats(); st.Retries != 0 {
		t.Fatalf("Stats().Retries = %d, want 0", st.Retries)
	}
}

// checkRefusal checks that err is the client-side limit's refusal.
func checkRefusal(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, backends.ErrThrottled) || backends.Kind(err) != "throttled" || !strings.Contains(err.Error(), "--backend-qps") {
		t.Fatalf("%v (kind %q), want ErrThrottled from the client-side limit", err, backends.Kind(err))
	}
}
