//go:build pkcs11 && cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	p11 "github.com/miekg/pkcs11"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/kmsgate/kmsgate/backends"
)

// atomicHandle is an object handle that a recovery may replace while other
// signatures read it.
type atomicHandle struct{ v atomic.Uint64 }

func (h *atomicHandle) load() p11.ObjectHandle   { return p11.ObjectHandle(h.v.Load()) }
func (h *atomicHandle) store(o p11.ObjectHandle) { h.v.Store(uint64(o)) }

// oidP256 is the DER of the named curve prime256v1 (1.2.840.10045.3.1.7),
// the CKA_EC_PARAMS of a P-256 key.
var oidP256 = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

// curveNames names other curves an HSM key may be on, by OID.
var curveNames = map[string]string{
	"1.3.132.0.34":         "P-384",
	"1.3.132.0.35":         "P-521",
	"1.3.132.0.10":         "secp256k1",
	"1.2.840.10045.3.1.1":  "P-192",
	"1.3.132.0.33":         "P-224",
	"1.3.36.3.3.2.8.1.1.7": "brainpoolP256r1",
	"1.3.101.112":          "Ed25519",
	"1.3.101.113":          "Ed448",
}

// keyTypeNames names CKA_KEY_TYPE values for errors.
var keyTypeNames = map[uint]string{
	p11.CKK_RSA:       "RSA",
	p11.CKK_DSA:       "DSA",
	p11.CKK_DH:        "DH",
	p11.CKK_EC:        "EC",
	0x40:              "EdDSA",      // CKK_EC_EDWARDS (PKCS#11 3.0)
	0x41:              "Montgomery", // CKK_EC_MONTGOMERY (PKCS#11 3.0)
	p11.CKK_AES:       "AES",
	p11.CKK_GOSTR3410: "GOST R 34.10",
}

// probeDigest is the digest each key signs once, when it is first listed,
// to prove that the public key published for it is its own.
var probeDigest = sha256.Sum256([]byte("kmsgate pkcs11 key binding check"))

// Versions implements backends.Backend: it finds the URI's private keys on
// the token and returns them in CKA_ID order (then label), all enabled. A
// key that is not a usable EC P-256 signing key fails the listing with
// backends.ErrKeyType naming it; so do two keys with the same label and
// CKA_ID, which could not be told apart.
func (b *Backend) Versions(ctx context.Context) ([]backends.Version, error) {
	var keys []*key
	err := b.withSession(ctx, "list the keys", func(s session) error {
		// A session whose login was lost sees no private object: make
		// sure of the login before searching.
		if err := b.login(s.h); err != nil {
			return err
		}
		var err error
		keys, err = b.list(s)
		if err != nil {
			return err
		}
		return b.checkBindings(s, keys)
	}, nil)
	if err != nil {
		return nil, err
	}
	m := make(map[string]*key, len(keys))
	out := make([]backends.Version, len(keys))
	for i, k := range keys {
		m[k.id] = k
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), k.pub)
		if err != nil { // checked by list
			return nil, fmt.Errorf("pkcs11: %s: %s: %w: %v", b.uri, k.id, backends.ErrIntegrity, err)
		}
		out[i] = backends.Version{ID: k.id, PublicKey: pub, State: backends.StateEnabled}
	}
	b.mu.Lock()
	b.keys = m
	b.mu.Unlock()
	return out, nil
}

// privateTemplate is the search template of the URI's private keys.
func (b *Backend) privateTemplate() []*p11.Attribute {
	t := []*p11.Attribute{p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY)}
	if b.uri.HasObject && !b.uri.LabelPrefix {
		t = append(t, p11.NewAttribute(p11.CKA_LABEL, b.uri.Object))
	}
	if b.uri.HasID {
		t = append(t, p11.NewAttribute(p11.CKA_ID, b.uri.ID))
	}
	return t
}

// find returns the handles of the objects matching template.
func (b *Backend) find(s session, template []*p11.Attribute) ([]p11.ObjectHandle, error) {
	ctx := b.mod.ctx
	if err := ctx.FindObjectsInit(s.h, template); err != nil {
		return nil, err
	}
	var all []p11.ObjectHandle
	for {
		hs, _, err := ctx.FindObjects(s.h, 64)
		if err != nil {
			_ = ctx.FindObjectsFinal(s.h)
			return nil, err
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
		if len(all) > 100000 {
			_ = ctx.FindObjectsFinal(s.h)
			return nil, fmt.Errorf("pkcs11: %s: %w: more than 100000 objects match", b.uri, backends.ErrUnavailable)
		}
	}
	if err := ctx.FindObjectsFinal(s.h); err != nil {
		return nil, err
	}
	return all, nil
}

// list finds and checks the URI's private keys.
func (b *Backend) list(s session) ([]*key, error) {
	hs, err := b.find(s, b.privateTemplate())
	if err != nil {
		return nil, err
	}
	var keys []*key
	byID := map[string]bool{}
	for _, h := range hs {
		k, err := b.readKey(s, h)
		if err != nil {
			return nil, err
		}
		if k == nil {
			continue // outside the label prefix
		}
		if byID[k.id] {
			return nil, fmt.Errorf("pkcs11: %s: %w: two private keys are %s; give each key its own CKA_ID (pkcs11-tool --set-id)", b.uri, backends.ErrKeyType, k.id)
		}
		byID[k.id] = true
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("pkcs11: %s: %w: no private key on the token matches (check object=, id= and that the PIN's user can see the key)", b.uri, backends.ErrNotFound)
	}
	sortKeys(keys)
	return keys, nil
}

// readKey reads and checks one private key; it returns nil for a key whose
// label is outside the URI's label prefix.
func (b *Backend) readKey(s session, h p11.ObjectHandle) (*key, error) {
	ctx := b.mod.ctx
	attrs, err := ctx.GetAttributeValue(s.h, h, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_LABEL, nil),
		p11.NewAttribute(p11.CKA_ID, nil),
		p11.NewAttribute(p11.CKA_KEY_TYPE, nil),
	})
	if err != nil {
		return nil, err
	}
	label, ckaID := string(attrs[0].Value), attrs[1].Value
	if b.uri.LabelPrefix && !strings.HasPrefix(label, b.uri.Object) {
		return nil, nil
	}
	k := &key{id: VersionID(label, ckaID), label: label, ckaID: ckaID}
	k.handle.store(h)
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("pkcs11: %s: key %s: %w: %s", b.uri, k.id, backends.ErrKeyType, fmt.Sprintf(format, args...))
	}
	kt, ok := ulong(attrs[2].Value)
	if !ok {
		return nil, refuse("CKA_KEY_TYPE is unreadable")
	}
	if kt != p11.CKK_EC {
		name := keyTypeNames[kt]
		if name == "" {
			name = fmt.Sprintf("key type 0x%x", kt)
		}
		return nil, refuse("%s key, want EC P-256", name)
	}
	params, err := ctx.GetAttributeValue(s.h, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_EC_PARAMS, nil)})
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(params[0].Value, oidP256) {
		return nil, refuse("EC curve %s, want P-256", curveName(params[0].Value))
	}
	// The usage attributes, one at a time: a token may not know one.
	flag := func(t uint) (bool, bool) {
		a, err := ctx.GetAttributeValue(s.h, h, []*p11.Attribute{p11.NewAttribute(t, nil)})
		if err != nil || len(a[0].Value) != 1 {
			return false, false
		}
		return a[0].Value[0] != 0, true
	}
	if v, ok := flag(p11.CKA_SIGN); !ok || !v {
		return nil, refuse("CKA_SIGN is not true: the token will not sign with it")
	}
	if v, ok := flag(p11.CKA_SENSITIVE); ok && !v {
		return nil, refuse("CKA_SENSITIVE is false: the private key can be read from the token in clear; generate it sensitive (the default of pkcs11-tool and most HSMs)")
	}
	if v, ok := flag(p11.CKA_ALWAYS_AUTHENTICATE); ok && v {
		return nil, refuse("CKA_ALWAYS_AUTHENTICATE is true: every signature would need the PIN again")
	}
	if v, ok := flag(p11.CKA_EXTRACTABLE); ok && v {
		b.warnOnce(k.id, "PKCS#11 key is extractable (CKA_EXTRACTABLE true): it can be exported wrapped from the HSM")
	}
	if k.pub, err = b.publicKey(s, k, h); err != nil {
		return nil, err
	}
	return k, nil
}

// publicKey returns the uncompressed EC point of key k: from the public key
// object with the same label and CKA_ID, or else from the private key's
// CKA_PUBLIC_KEY_INFO (PKCS#11 3.0).
func (b *Backend) publicKey(s session, k *key, priv p11.ObjectHandle) ([]byte, error) {
	ctx := b.mod.ctx
	hs, err := b.find(s, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PUBLIC_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_EC),
		p11.NewAttribute(p11.CKA_LABEL, k.label),
		p11.NewAttribute(p11.CKA_ID, k.ckaID),
	})
	if err != nil {
		return nil, err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("pkcs11: %s: key %s: %w: %s", b.uri, k.id, backends.ErrIntegrity, fmt.Sprintf(format, args...))
	}
	switch len(hs) {
	case 1:
		a, err := ctx.GetAttributeValue(s.h, hs[0], []*p11.Attribute{p11.NewAttribute(p11.CKA_EC_POINT, nil)})
		if err != nil {
			return nil, err
		}
		point, err := ecPoint(a[0].Value)
		if err != nil {
			return nil, bad("the public key object's CKA_EC_POINT: %v", err)
		}
		return point, nil
	case 0:
		a, err := ctx.GetAttributeValue(s.h, priv, []*p11.Attribute{p11.NewAttribute(p11.CKA_PUBLIC_KEY_INFO, nil)})
		if err != nil || len(a[0].Value) == 0 {
			return nil, fmt.Errorf("pkcs11: %s: key %s: %w: no public key object with the same label and CKA_ID, and no CKA_PUBLIC_KEY_INFO on the private key; import the public key next to it", b.uri, k.id, backends.ErrNotFound)
		}
		pk, err := x509.ParsePKIXPublicKey(a[0].Value)
		if err != nil {
			return nil, bad("CKA_PUBLIC_KEY_INFO: %v", err)
		}
		ec, err := backends.CheckP256(k.id, pk)
		if err != nil {
			return nil, err
		}
		return ec.Bytes()
	default:
		return nil, bad("%d public key objects have the same label and CKA_ID", len(hs))
	}
}

// ecPoint returns the uncompressed P-256 point of a CKA_EC_POINT value: the
// DER OCTET STRING the standard asks for, or the raw point some tokens give.
func ecPoint(v []byte) ([]byte, error) {
	point := v
	if len(v) != 65 || v[0] != 4 {
		var inner cryptobyte.String
		in := cryptobyte.String(v)
		if !in.ReadASN1(&inner, cbasn1.OCTET_STRING) || !in.Empty() {
			return nil, errors.New("neither an uncompressed point nor a DER OCTET STRING holding one")
		}
		point = inner
	}
	if _, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point); err != nil {
		return nil, fmt.Errorf("not a P-256 point: %v", err)
	}
	return bytes.Clone(point), nil
}

// checkBindings signs the probe digest once with every key not checked yet
// (or whose public key changed) and verifies it with the public key found
// for it.
func (b *Backend) checkBindings(s session, keys []*key) error {
	for _, k := range keys {
		b.mu.RLock()
		done := bytes.Equal(b.checked[k.id], k.pub)
		b.mu.RUnlock()
		if done {
			continue
		}
		sig, err := b.signOnce(s, k.handle.load(), probeDigest[:])
		if err != nil {
			return err
		}
		pub, _ := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), k.pub)
		if !backends.VerifyJOSE(pub, probeDigest[:], sig) {
			return fmt.Errorf("pkcs11: %s: key %s: %w: a signature by the private key does not verify with the public key object of the same label and CKA_ID; that public key is not its own", b.uri, k.id, backends.ErrIntegrity)
		}
		b.mu.Lock()
		b.checked[k.id] = k.pub
		b.mu.Unlock()
	}
	return nil
}

// warnOnce logs msg about version id the first time only.
func (b *Backend) warnOnce(id, msg string) {
	b.mu.Lock()
	_, done := b.warned[id]
	b.warned[id] = struct{}{}
	b.mu.Unlock()
	if !done {
		b.log.Warn(msg, "version", id)
	}
}

// ulong decodes a CK_ULONG attribute value (native byte order and size).
func ulong(v []byte) (uint, bool) {
	switch len(v) {
	case 4:
		return uint(binary.NativeEndian.Uint32(v)), true
	case 8:
		return uint(binary.NativeEndian.Uint64(v)), true
	}
	return 0, false
}

// curveName names the curve of a CKA_EC_PARAMS value.
func curveName(params []byte) string {
	var oid asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(params, &oid); err == nil && len(rest) == 0 {
		if n := curveNames[oid.String()]; n != "" {
			return n
		}
		return oid.String()
	}
	return "with parameters " + hex.EncodeToString(params)
}
