package azurekv

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/kmsgate/kmsgate/backends"
)

// Sign implements backends.Backend: it signs a SHA-256 digest with ES256
// and exactly the version id (a kid Versions reported) and returns the JOSE
// R||S signature, which Key Vault returns as it is (not DER). The answer's
// kid must name the version asked for and the signature must be 64 bytes;
// either failure is backends.ErrIntegrity. The keyring verifies the
// signature against the version's public key before any token leaves the
// gateway.
func (b *Backend) Sign(ctx context.Context, id string, digest []byte) ([]byte, error) {
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("azurekv: sign with %s: digest is %d bytes, want a %d-byte SHA-256 digest", id, len(digest), sha256.Size)
	}
	version, err := b.owns(id)
	if err != nil {
		return nil, fmt.Errorf("azurekv: sign with %s: %w", id, err)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	alg := azkeys.SignatureAlgorithmES256
	params := azkeys.SignParameters{Algorithm: &alg, Value: digest}
	var res azkeys.KeyOperationResult
	err = b.call(ctx, func(ctx context.Context) error {
		r, err := b.client.Sign(ctx, b.name, version, params, nil)
		res = r.KeyOperationResult
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("azurekv: sign with %s: %w", id, err)
	}
	if res.KID == nil {
		return nil, fmt.Errorf("azurekv: sign with %s: %w: the answer has no kid", id, backends.ErrIntegrity)
	}
	if got, err := b.kidVersion(string(*res.KID)); err != nil || got != version {
		return nil, fmt.Errorf("azurekv: sign with %s: %w: Key Vault says kid %q signed", id, backends.ErrIntegrity, string(*res.KID))
	}
	if len(res.Result) != backends.SignatureSize {
		return nil, fmt.Errorf("azurekv: sign with %s: %w: the signature is %d bytes, want %d (ES256 R||S)", id, backends.ErrIntegrity, len(res.Result), backends.SignatureSize)
	}
	return res.Result, nil
}

// owns returns the version of id when id is a version of this URI (a
// pinned URI signs with its version only).
func (b *Backend) owns(id string) (string, error) {
	prefix := b.base + "/keys/" + b.name + "/"
	version, ok := strings.CutPrefix(id, prefix)
	if !ok || !versionRE.MatchString(version) {
		return "", fmt.Errorf("%w: not a version of %s (want %sVERSION)", backends.ErrNotFound, b.display, prefix)
	}
	if b.pinned != "" && version != b.pinned {
		return "", fmt.Errorf("%w: this key URI is pinned to version %s", backends.ErrNotFound, b.pinned)
	}
	return version, nil
}
