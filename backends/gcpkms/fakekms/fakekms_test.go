package fakekms_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"slices"
	"testing"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kmsgate/kmsgate/backends/gcpkms/fakekms"
)

const key = "projects/p/locations/global/keyRings/r/cryptoKeys/k"

// start serves a fake with key and returns it with a real Cloud KMS client
// connected to it over gRPC.
func start(t *testing.T) (*fakekms.Server, *kms.KeyManagementClient) {
	t.Helper()
	f := fakekms.New()
	addr, err := f.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)
	if err := f.CreateKey(key, kmspb.CryptoKey_ASYMMETRIC_SIGN, kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256); err != nil {
		t.Fatal(err)
	}
	c, err := kms.NewKeyManagementClient(context.Background(), option.WithEndpoint(addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return f, c
}

func add(t *testing.T, f *fakekms.Server, spec fakekms.VersionSpec) string {
	t.Helper()
	name, err := f.AddVersion(key, spec)
	if err != nil {
		t.Fatal(err)
	}
	return name
}

func code(err error) codes.Code { return status.Code(err) }

var noRetry = gax.WithRetry(nil)

func list(t *testing.T, c *kms.KeyManagementClient, filter string, pageSize int32) ([]string, error) {
	t.Helper()
	it := c.ListCryptoKeyVersions(context.Background(), &kmspb.ListCryptoKeyVersionsRequest{Parent: key, Filter: filter, PageSize: pageSize}, noRetry)
	var names []string
	for {
		v, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return names, nil
		}
		if err != nil {
			return names, err
		}
		names = append(names, v.GetName())
	}
}

func TestListFilterAndPaging(t *testing.T) {
	f, c := start(t)
	v1 := add(t, f, fakekms.VersionSpec{})
	v2 := add(t, f, fakekms.VersionSpec{State: kmspb.CryptoKeyVersion_DISABLED})
	v3 := add(t, f, fakekms.VersionSpec{Algorithm: kmspb.CryptoKeyVersion_EC_SIGN_P384_SHA384})
	v4 := add(t, f, fakekms.VersionSpec{})
	if err := f.SetState(v4, kmspb.CryptoKeyVersion_DESTROYED); err != nil {
		t.Fatal(err)
	}
	v5 := add(t, f, fakekms.VersionSpec{State: kmspb.CryptoKeyVersion_PENDING_GENERATION})
	for filter, want := range map[string][]string{
		"":                                {v1, v2, v3, v4, v5},
		"state=ENABLED":                   {v1, v3},
		"state != DESTROYED":              {v1, v2, v3, v5},
		"NOT state=DESTROYED":             {v1, v2, v3, v5},
		"-state=DESTROYED":                {v1, v2, v3, v5},
		"state=ENABLED OR state=DISABLED": {v1, v2, v3},
		"state=ENABLED algorithm=EC_SIGN_P256_SHA256":                                 {v1},
		"state=ENABLED AND algorithm=EC_SIGN_P256_SHA256":                             {v1},
		"algorithm=EC_SIGN_P256_SHA256 AND state=ENABLED OR state=PENDING_GENERATION": {v1, v5},
		"(state=ENABLED AND algorithm=EC_SIGN_P256_SHA256) OR state=DISABLED":         {v1, v2},
		`name:"cryptoKeyVersions/2"`:                                                  {v2},
		"algorithm:p384":                                                              {v3},
	} {
		for _, size := range []int32{0, 1, 2} {
			got, err := list(t, c, filter, size)
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("filter %q page size %d: got %v %v, want %v", filter, size, got, err, want)
			}
		}
	}
	for _, bad := range []string{"state=NOPE", "color=red", "state", "state=ENABLED OR", "(state=ENABLED", "create_time>2020-01-01T00:00:00Z"} {
		if _, err := list(t, c, bad, 0); code(err) != codes.InvalidArgument {
			t.Errorf("filter %q: %v, want InvalidArgument", bad, err)
		}
	}
	// Pages: two versions per page take three calls for five versions.
	before := f.Calls(fakekms.ListCryptoKeyVersions)
	if got, err := list(t, c, "", 2); err != nil || len(got) != 5 {
		t.Fatal(got, err)
	}
	if n := f.Calls(fakekms.ListCryptoKeyVersions) - before; n != 3 {
		t.Fatalf("%d pages", n)
	}
	// A page token only continues the listing it came from.
	it := c.ListCryptoKeyVersions(context.Background(), &kmspb.ListCryptoKeyVersionsRequest{Parent: key, PageSize: 1}, noRetry)
	if _, err := it.Next(); err != nil {
		t.Fatal(err)
	}
	tok := it.PageInfo().Token
	if tok == "" {
		t.Fatal("no next page token")
	}
	_, err := c.ListCryptoKeyVersions(context.Background(), &kmspb.ListCryptoKeyVersionsRequest{Parent: key, PageToken: tok, Filter: "state=ENABLED"}, noRetry).Next()
	if code(err) != codes.InvalidArgument {
		t.Fatalf("page token with another filter: %v", err)
	}
	_, err = c.ListCryptoKeyVersions(context.Background(), &kmspb.ListCryptoKeyVersionsRequest{Parent: key + "x"}, noRetry).Next()
	if code(err) != codes.NotFound {
		t.Fatalf("unknown parent: %v", err)
	}
}

func sign(c *kms.KeyManagementClient, name string, d *kmspb.Digest, crc *wrapperspb.Int64Value) (*kmspb.AsymmetricSignResponse, error) {
	return c.AsymmetricSign(context.Background(), &kmspb.AsymmetricSignRequest{Name: name, Digest: d, DigestCrc32C: crc}, noRetry)
}

func sha(b []byte) *kmspb.Digest { return &kmspb.Digest{Digest: &kmspb.Digest_Sha256{Sha256: b}} }

func TestAsymmetricSign(t *testing.T) {
	f, c := start(t)
	v := add(t, f, fakekms.VersionSpec{})
	d := sha256.Sum256([]byte("payload"))
	resp, err := sign(c, v, sha(d[:]), wrapperspb.Int64(fakekms.CRC32C(d[:])))
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := f.PublicKey(v)
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], resp.GetSignature()) {
		t.Fatal("signature does not verify")
	}
	if !resp.GetVerifiedDigestCrc32C() || resp.GetName() != v || resp.GetSignatureCrc32C().GetValue() != fakekms.CRC32C(resp.GetSignature()) {
		t.Fatalf("integrity fields %+v", resp)
	}
	// Without digest_crc32c the digest is not verified.
	if resp, err := sign(c, v, sha(d[:]), nil); err != nil || resp.GetVerifiedDigestCrc32C() {
		t.Fatalf("no digest_crc32c: %+v %v", resp, err)
	}
	for name, tc := range map[string]struct {
		name   string
		digest *kmspb.Digest
		crc    *wrapperspb.Int64Value
		want   codes.Code
	}{
		"wrong digest length":      {v, sha(d[:31]), nil, codes.InvalidArgument},
		"digest_crc32c mismatch":   {v, sha(d[:]), wrapperspb.Int64(fakekms.CRC32C(d[:]) ^ 1), codes.InvalidArgument},
		"SHA-384 digest for P-256": {v, &kmspb.Digest{Digest: &kmspb.Digest_Sha384{Sha384: make([]byte, 48)}}, nil, codes.InvalidArgument},
		"no digest":                {v, nil, nil, codes.InvalidArgument},
		"unknown version":          {key + "/cryptoKeyVersions/99", sha(d[:]), nil, codes.NotFound},
		"malformed name":           {key, sha(d[:]), nil, codes.InvalidArgument},
	} {
		if _, err := sign(c, tc.name, tc.digest, tc.crc); code(err) != tc.want {
			t.Errorf("%s: %v, want %s", name, err, tc.want)
		}
	}
	// Another algorithm signs its own digest type.
	v384 := add(t, f, fakekms.VersionSpec{Algorithm: kmspb.CryptoKeyVersion_EC_SIGN_P384_SHA384})
	d384 := sha512.Sum384([]byte("payload"))
	resp, err = sign(c, v384, &kmspb.Digest{Digest: &kmspb.Digest_Sha384{Sha384: d384[:]}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pub384, _ := f.PublicKey(v384)
	if !ecdsa.VerifyASN1(pub384.(*ecdsa.PublicKey), d384[:], resp.GetSignature()) {
		t.Fatal("P-384 signature does not verify")
	}
	if _, err := sign(c, v384, sha(d[:]), nil); code(err) != codes.InvalidArgument {
		t.Fatalf("SHA-256 digest for P-384: %v", err)
	}
}

func TestStates(t *testing.T) {
	f, c := start(t)
	d := sha256.Sum256([]byte("x"))
	for _, st := range []kmspb.CryptoKeyVersion_CryptoKeyVersionState{
		kmspb.CryptoKeyVersion_PENDING_GENERATION, kmspb.CryptoKeyVersion_DISABLED,
		kmspb.CryptoKeyVersion_DESTROY_SCHEDULED, kmspb.CryptoKeyVersion_DESTROYED,
	} {
		v := add(t, f, fakekms.VersionSpec{})
		if err := f.SetState(v, st); err != nil {
			t.Fatal(err)
		}
		if _, err := sign(c, v, sha(d[:]), nil); code(err) != codes.FailedPrecondition {
			t.Errorf("sign with %s: %v", st, err)
		}
		if _, err := c.GetPublicKey(context.Background(), &kmspb.GetPublicKeyRequest{Name: v}, noRetry); code(err) != codes.FailedPrecondition {
			t.Errorf("public key of %s: %v", st, err)
		}
		got, err := c.GetCryptoKeyVersion(context.Background(), &kmspb.GetCryptoKeyVersionRequest{Name: v}, noRetry)
		if err != nil || got.GetState() != st {
			t.Errorf("get %s: %v %v", st, got.GetState(), err)
		}
	}
	// Generation finishing: PENDING_GENERATION then ENABLED signs.
	v := add(t, f, fakekms.VersionSpec{State: kmspb.CryptoKeyVersion_PENDING_GENERATION})
	if err := f.SetState(v, kmspb.CryptoKeyVersion_ENABLED); err != nil {
		t.Fatal(err)
	}
	if _, err := sign(c, v, sha(d[:]), nil); err != nil {
		t.Fatalf("generated version: %v", err)
	}
	destroyed := add(t, f, fakekms.VersionSpec{})
	_ = f.SetState(destroyed, kmspb.CryptoKeyVersion_DESTROYED)
	if err := f.SetState(destroyed, kmspb.CryptoKeyVersion_ENABLED); err == nil {
		t.Fatal("a destroyed version came back")
	}
}

func TestPublicKey(t *testing.T) {
	f, c := start(t)
	v := add(t, f, fakekms.VersionSpec{})
	pk, err := c.GetPublicKey(context.Background(), &kmspb.GetPublicKeyRequest{Name: v}, noRetry)
	if err != nil {
		t.Fatal(err)
	}
	if pk.GetName() != v || pk.GetAlgorithm() != kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256 || pk.GetPemCrc32C().GetValue() != fakekms.CRC32C([]byte(pk.GetPem())) {
		t.Fatalf("%+v", pk)
	}
	block, _ := pem.Decode([]byte(pk.GetPem()))
	got, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := f.PublicKey(v)
	if !got.(*ecdsa.PublicKey).Equal(want) {
		t.Fatal("PEM is not the version's key")
	}
	f.Inject(fakekms.Fault{Method: fakekms.GetPublicKey, Corrupt: fakekms.PEMCRC | fakekms.WrongName, Times: 1})
	pk, err = c.GetPublicKey(context.Background(), &kmspb.GetPublicKeyRequest{Name: v}, noRetry)
	if err != nil || pk.GetName() == v || pk.GetPemCrc32C().GetValue() == fakekms.CRC32C([]byte(pk.GetPem())) {
		t.Fatalf("corruption not applied: %+v %v", pk, err)
	}
	if pk, err = c.GetPublicKey(context.Background(), &kmspb.GetPublicKeyRequest{Name: v}, noRetry); err != nil || pk.GetName() != v {
		t.Fatalf("fault outlived Times: %+v %v", pk, err)
	}
}

func TestFaults(t *testing.T) {
	f, c := start(t)
	v := add(t, f, fakekms.VersionSpec{})
	d := sha256.Sum256([]byte("x"))
	f.Inject(fakekms.Fault{Method: fakekms.AsymmetricSign, Code: codes.ResourceExhausted, Times: 2})
	for i, want := range []codes.Code{codes.ResourceExhausted, codes.ResourceExhausted, codes.OK} {
		if _, err := sign(c, v, sha(d[:]), nil); code(err) != want {
			t.Fatalf("call %d: %v, want %s", i, err, want)
		}
	}
	// A delay ends when the client gives up.
	f.Inject(fakekms.Fault{Method: fakekms.AsymmetricSign, Delay: 10 * time.Second, Times: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.AsymmetricSign(ctx, &kmspb.AsymmetricSignRequest{Name: v, Digest: sha(d[:])}, noRetry)
	if code(err) != codes.DeadlineExceeded || time.Since(start) > time.Second {
		t.Fatalf("delayed call: %v after %s", err, time.Since(start))
	}
	// Faults on one name leave the others alone.
	other := add(t, f, fakekms.VersionSpec{})
	f.Inject(fakekms.Fault{Name: other, Code: codes.Unavailable})
	if _, err := sign(c, v, sha(d[:]), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := sign(c, other, sha(d[:]), nil); code(err) != codes.Unavailable {
		t.Fatal(err)
	}
	f.ClearFaults()
	f.Deny("projects/p/")
	if _, err := sign(c, v, sha(d[:]), nil); code(err) != codes.PermissionDenied {
		t.Fatalf("denied: %v", err)
	}
	f.ClearFaults()
	// Corrupted answers.
	f.Inject(fakekms.Fault{Method: fakekms.AsymmetricSign, Corrupt: fakekms.SignatureCRC | fakekms.UnverifiedDigest | fakekms.WrongName, Times: 1})
	resp, err := sign(c, v, sha(d[:]), wrapperspb.Int64(fakekms.CRC32C(d[:])))
	if err != nil || resp.GetVerifiedDigestCrc32C() || resp.GetName() == v || resp.GetSignatureCrc32C().GetValue() == fakekms.CRC32C(resp.GetSignature()) {
		t.Fatalf("corruptions not applied: %+v %v", resp, err)
	}
	f.Inject(fakekms.Fault{Method: fakekms.AsymmetricSign, Corrupt: fakekms.SignatureBytes, Times: 1})
	resp, err = sign(c, v, sha(d[:]), nil)
	if err != nil || resp.GetSignatureCrc32C().GetValue() == fakekms.CRC32C(resp.GetSignature()) {
		t.Fatalf("signature bytes not corrupted after the CRC: %+v %v", resp, err)
	}
	f.Inject(fakekms.Fault{Method: fakekms.AsymmetricSign, Corrupt: fakekms.WrongKey, Times: 1})
	resp, err = sign(c, v, sha(d[:]), nil)
	pub, _ := f.PublicKey(v)
	if err != nil || resp.GetSignatureCrc32C().GetValue() != fakekms.CRC32C(resp.GetSignature()) || ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], resp.GetSignature()) {
		t.Fatalf("wrong-key signature: %+v %v", resp, err)
	}
}

// TestGivenKey: a version made with VersionSpec.Key serves that key and
// signs with it; a key that does not fit the algorithm is refused.
func TestGivenKey(t *testing.T) {
	f, c := start(t)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	v := add(t, f, fakekms.VersionSpec{Key: k})
	if pub, _ := f.PublicKey(v); !k.PublicKey.Equal(pub) {
		t.Fatal("PublicKey is not the given key")
	}
	d := sha256.Sum256([]byte("given"))
	resp, err := sign(c, v, sha(d[:]), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(&k.PublicKey, d[:], resp.GetSignature()) {
		t.Fatal("the signature does not verify with the given key")
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.AddVersion(key, fakekms.VersionSpec{Key: p384}); err == nil {
		t.Fatal("a P-384 key was accepted for EC_SIGN_P256_SHA256")
	}
}
