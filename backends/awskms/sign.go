package awskms

import (
	"context"
	"crypto/sha256"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsgate/kmsgate/backends"
)

// Sign implements backends.Backend. id must be the ARN of a key that
// Versions reported with its public key: an alias, a bare key id or a key of
// another URI is refused without a call, so the signing path never goes
// through an alias. The digest is sent as MessageType DIGEST with
// ECDSA_SHA_256; the answer must name the same ARN and algorithm and carry a
// well-formed DER signature, converted here to R||S. A failed check is
// backends.ErrIntegrity. The keyring verifies the signature against the
// version's public key before any token leaves the gateway.
func (b *Backend) Sign(ctx context.Context, id string, digest []byte) ([]byte, error) {
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("awskms: sign with %s: digest is %d bytes, want a %d-byte SHA-256 digest", id, len(digest), sha256.Size)
	}
	if (*b.pubs.Load())[id] == nil {
		return nil, fmt.Errorf("awskms: sign with %s: %w: not an enabled key version of %s (list versions first)", id, backends.ErrNotFound, b.target)
	}
	ctx, cancel := b.caller.WithTimeout(ctx)
	defer cancel()
	in := &kms.SignInput{
		KeyId:            aws.String(id),
		Message:          digest,
		MessageType:      types.MessageTypeDigest,
		SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256,
	}
	var out *kms.SignOutput
	err := b.caller.Do(ctx, func(ctx context.Context) error {
		var err error
		out, err = b.client.Sign(ctx, in)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("awskms: sign with %s: %w", id, err)
	}
	if got := aws.ToString(out.KeyId); got != id {
		return nil, fmt.Errorf("awskms: sign with %s: %w: AWS says key %q signed", id, backends.ErrIntegrity, got)
	}
	if out.SigningAlgorithm != "" && out.SigningAlgorithm != types.SigningAlgorithmSpecEcdsaSha256 {
		return nil, fmt.Errorf("awskms: sign with %s: %w: AWS says it signed with %s", id, backends.ErrIntegrity, out.SigningAlgorithm)
	}
	sig, err := backends.DERToJOSE(out.Signature)
	if err != nil {
		return nil, fmt.Errorf("awskms: sign with %s: %w: %v", id, backends.ErrIntegrity, err)
	}
	return sig, nil
}
