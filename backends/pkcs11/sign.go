//go:build pkcs11 && cgo

package pkcs11

import (
	"context"
	"crypto/sha256"
	"fmt"

	p11 "github.com/miekg/pkcs11"

	"github.com/kmsgate/kmsgate/backends"
)

// ecdsaMechanism is CKM_ECDSA: the token signs the digest it is given.
var ecdsaMechanism = []*p11.Mechanism{p11.NewMechanism(p11.CKM_ECDSA, nil)}

// Sign implements backends.Backend: it signs the SHA-256 digest with
// CKM_ECDSA and exactly the key the version id names, on a pooled session,
// and returns the 64-byte R||S signature. The keyring verifies it against
// the version's public key before it is used.
func (b *Backend) Sign(ctx context.Context, id string, digest []byte) ([]byte, error) {
	b.mu.RLock()
	k := b.keys[id]
	b.mu.RUnlock()
	if k == nil {
		return nil, fmt.Errorf("pkcs11: %s: sign with %q: %w: not a key of this URI at the last refresh", b.uri, id, backends.ErrNotFound)
	}
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("pkcs11: %s: sign with %s: digest is %d bytes, want a %d-byte SHA-256 digest", b.uri, id, len(digest), sha256.Size)
	}
	if err := b.limiter.Wait(ctx, "pkcs11"); err != nil {
		return nil, err
	}
	var sig []byte
	err := b.withSession(ctx, "sign with "+id, func(s session) error {
		var err error
		sig, err = b.signOnce(s, k.handle.load(), digest)
		return err
	}, func(s session) error { return b.refind(s, k) })
	if err != nil {
		return nil, err
	}
	return sig, nil
}

// signOnce makes one C_SignInit and C_Sign with CKM_ECDSA and returns the
// signature as R||S. PKCS#11 defines the CKM_ECDSA output as R||S; a token
// that answers in DER is accepted too.
func (b *Backend) signOnce(s session, h p11.ObjectHandle, digest []byte) ([]byte, error) {
	ctx := b.mod.ctx
	if err := ctx.SignInit(s.h, ecdsaMechanism, h); err != nil {
		return nil, err
	}
	sig, err := ctx.Sign(s.h, digest)
	if err != nil {
		return nil, err
	}
	if len(sig) == backends.SignatureSize {
		return sig, nil
	}
	jose, err := backends.DERToJOSE(sig)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: %s: %w: the token returned a %d-byte signature that is neither R||S nor DER: %v", b.uri, backends.ErrIntegrity, len(sig), err)
	}
	return jose, nil
}

// refind looks key k up again by label and CKA_ID after its handle went
// stale, and stores the new handle.
func (b *Backend) refind(s session, k *key) error {
	t := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY),
		p11.NewAttribute(p11.CKA_LABEL, k.label),
		p11.NewAttribute(p11.CKA_ID, k.ckaID),
	}
	hs, err := b.find(s, t)
	if err != nil {
		return b.mapError("find "+k.id+" again", err)
	}
	if len(hs) != 1 {
		return fmt.Errorf("pkcs11: %s: find %s again: %w: %d private keys match", b.uri, k.id, backends.ErrNotFound, len(hs))
	}
	k.handle.store(hs[0])
	return nil
}
