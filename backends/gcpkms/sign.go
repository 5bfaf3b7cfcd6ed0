package gcpkms

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strings"
	"sync"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kmsgate/kmsgate/backends"
)

// Sign implements backends.Backend: it signs a SHA-256 digest with exactly
// the CryptoKeyVersion versionID and returns the JOSE R||S signature.
//
// The request carries digest_crc32c. The answer must have
// verified_digest_crc32c set, a signature_crc32c that matches the signature,
// name the version asked for, and hold a well-formed DER signature. An answer
// that fails any check is counted (see Stats) and the call is retried, at
// most DefaultAttempts calls in all and within ctx's deadline, before failing
// with backends.ErrIntegrity.
//
// Sign does not verify the signature against the version's public key: the
// keyring does that for every Remote backend before a token leaves the
// gateway (jwks.Keyring.SignJWT), and a P-256 verification costs about as
// much CPU as the whole gRPC round trip, so doing it twice would double the
// gateway's own cost per signature.
func (b *Backend) Sign(ctx context.Context, versionID string, digest []byte) ([]byte, error) {
	if err := b.owns(versionID); err != nil {
		return nil, fmt.Errorf("gcpkms: sign with %s: %w", versionID, err)
	}
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("gcpkms: sign with %s: digest is %d bytes, want %d (SHA-256)", versionID, len(digest), sha256.Size)
	}
	ctx, cancel := b.caller.WithTimeout(ctx)
	defer cancel()
	req := &kmspb.AsymmetricSignRequest{
		Name:         versionID,
		Digest:       &kmspb.Digest{Digest: &kmspb.Digest_Sha256{Sha256: digest}},
		DigestCrc32C: wrapperspb.Int64(crc32c(digest)),
	}
	var sig []byte
	err := b.call(ctx, func(ctx context.Context, opts []gax.CallOption) error {
		resp, err := b.client.AsymmetricSign(ctx, req, opts...)
		if err != nil {
			return classify(err)
		}
		sig, err = b.checkSignature(versionID, resp)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("gcpkms: sign with %s: %w", versionID, err)
	}
	return sig, nil
}

// owns checks that versionID is a version of this URI.
func (b *Backend) owns(versionID string) error {
	if b.pinned != "" {
		if versionID != b.pinned {
			return fmt.Errorf("%w: this key URI is pinned to %s", backends.ErrNotFound, b.pinned)
		}
		return nil
	}
	n, ok := strings.CutPrefix(versionID, b.key+"/cryptoKeyVersions/")
	if !ok || n == "" || n[0] == '0' || strings.Trim(n, "0123456789") != "" {
		return fmt.Errorf("%w: not a version of %s", backends.ErrNotFound, b.key)
	}
	return nil
}

// checkSignature applies the integrity checks to one AsymmetricSign answer
// and returns the JOSE signature.
func (b *Backend) checkSignature(versionID string, resp *kmspb.AsymmetricSignResponse) ([]byte, error) {
	if resp.GetName() != versionID {
		b.stats.count("name")
		return nil, integrityError("asked %s to sign, the service answered for %q", versionID, resp.GetName())
	}
	if !resp.GetVerifiedDigestCrc32C() {
		b.stats.count("verified_digest_crc32c")
		return nil, integrityError("the service did not confirm digest_crc32c (verified_digest_crc32c is false)")
	}
	if resp.GetSignatureCrc32C() == nil {
		b.stats.count("signature_crc32c")
		return nil, integrityError("the answer has no signature_crc32c")
	}
	if got, want := resp.GetSignatureCrc32C().GetValue(), crc32c(resp.GetSignature()); got != want {
		b.stats.count("signature_crc32c")
		return nil, integrityError("signature_crc32c is %d, the signature's CRC32C is %d", got, want)
	}
	sig, err := backends.DERToJOSE(resp.GetSignature())
	if err != nil {
		b.stats.count("signature_der")
		return nil, integrityError("%v", err)
	}
	return sig, nil
}

// Stats is what one backend has counted since it was opened.
type Stats struct {
	// IntegrityMismatches counts answers that failed an integrity check, by
	// check: "name", "verified_digest_crc32c", "signature_crc32c",
	// "signature_der", "signature_verify", "pem_crc32c", "public_key_name",
	// "version_name", "list_name". Mismatches that a retry cured are counted
	// too; a call that still fails returns backends.ErrIntegrity, which the
	// gateway counts by kind.
	IntegrityMismatches map[string]uint64
	// Retries counts attempts made after a retryable failure.
	Retries uint64
}

type stats struct {
	mu         sync.Mutex
	mismatches map[string]uint64
}

func (s *stats) count(check string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mismatches == nil {
		s.mismatches = map[string]uint64{}
	}
	s.mismatches[check]++
}

// Stats returns a copy of the backend's counters.
func (b *Backend) Stats() Stats {
	b.stats.mu.Lock()
	defer b.stats.mu.Unlock()
	m := make(map[string]uint64, len(b.stats.mismatches))
	for k, v := range b.stats.mismatches {
		m[k] = v
	}
	return Stats{IntegrityMismatches: m, Retries: b.caller.Stats().Retries}
}
