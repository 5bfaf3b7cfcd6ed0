package backends

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"
	"math/big"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// SignatureSize is the length of a JOSE ES256 signature: R||S, 32 bytes each.
const SignatureSize = 64

// maxDERSignature bounds the DER input: SEQUENCE header plus two INTEGERs of
// at most 33 bytes (a leading zero) each.
const maxDERSignature = 2 + 2*(2+33)

// DERToJOSE converts an ASN.1 DER ECDSA P-256 signature, as KMS services
// return it, to the 64-byte JOSE form R||S with each half left-padded to 32
// bytes. Malformed DER, trailing data, non-positive values and values wider
// than 256 bits are rejected.
func DERToJOSE(der []byte) ([]byte, error) {
	if len(der) > maxDERSignature {
		return nil, fmt.Errorf("DER signature: %d bytes, more than %d", len(der), maxDERSignature)
	}
	var (
		inner cryptobyte.String
		r, s  = new(big.Int), new(big.Int)
	)
	in := cryptobyte.String(der)
	if !in.ReadASN1(&inner, asn1.SEQUENCE) || !in.Empty() {
		return nil, errors.New("DER signature: not a single ASN.1 SEQUENCE")
	}
	if !inner.ReadASN1Integer(r) || !inner.ReadASN1Integer(s) || !inner.Empty() {
		return nil, errors.New("DER signature: SEQUENCE does not hold exactly two INTEGERs")
	}
	out := make([]byte, SignatureSize)
	for i, v := range []*big.Int{r, s} {
		if v.Sign() <= 0 {
			return nil, fmt.Errorf("DER signature: %s is not positive", "RS"[i:i+1])
		}
		if v.BitLen() > 256 {
			return nil, fmt.Errorf("DER signature: %s is %d bits, more than 256", "RS"[i:i+1], v.BitLen())
		}
		v.FillBytes(out[i*32 : (i+1)*32])
	}
	return out, nil
}

// VerifyJOSE reports whether sig, a 64-byte R||S signature, is a valid
// signature of digest by pub.
func VerifyJOSE(pub *ecdsa.PublicKey, digest, sig []byte) bool {
	if pub == nil || len(sig) != SignatureSize {
		return false
	}
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:])
	return ecdsa.Verify(pub, digest, r, s)
}

// CheckP256 returns an ErrKeyType error naming what the key is when pub is not
// an EC P-256 key. name identifies the key in the message.
func CheckP256(name string, pub any) (*ecdsa.PublicKey, error) {
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s: %w: %T, want an EC P-256 key", name, ErrKeyType, pub)
	}
	if ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%s: %w: EC curve %s, want P-256", name, ErrKeyType, ec.Curve.Params().Name)
	}
	return ec, nil
}
