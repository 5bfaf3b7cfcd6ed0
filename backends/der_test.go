package backends

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"math/big"
	"strings"
	"testing"
)

func TestDERToJOSE(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("payload"))
	// Real signatures, many of them, so short R or S (leading zero bytes,
	// which need left padding) occur.
	for i := 0; i < 300; i++ {
		der, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		sig, err := DERToJOSE(der)
		if err != nil {
			t.Fatalf("DERToJOSE(%x): %v", der, err)
		}
		if len(sig) != SignatureSize {
			t.Fatalf("len %d", len(sig))
		}
		if !VerifyJOSE(&key.PublicKey, digest[:], sig) {
			t.Fatalf("converted signature does not verify: %x", der)
		}
	}
}

func TestDERToJOSEPadding(t *testing.T) {
	// R = 1 (one byte), S = 2^255 + 1 (33 bytes with the sign byte).
	s := new(big.Int).Add(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(1))
	sb := append([]byte{0}, s.Bytes()...)
	der := append([]byte{0x30, byte(3 + 2 + len(sb)), 0x02, 0x01, 0x01, 0x02, byte(len(sb))}, sb...)
	got, err := DERToJOSE(der)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 64)
	want[31] = 1
	s.FillBytes(want[32:])
	if !bytes.Equal(got, want) {
		t.Fatalf("got %x\nwant %x", got, want)
	}
}

func TestDERToJOSERejects(t *testing.T) {
	big33 := "0221" + "01" + strings.Repeat("00", 32) // 2^256: 257 bits
	for name, h := range map[string]string{
		"empty":          "",
		"not a sequence": "020101",
		"trailing data":  "3006020101020101" + "00",
		"one integer":    "3003020101",
		"three integers": "3009020101020101020101",
		"negative R":     "30060201ff020101",
		"zero S":         "3006020101020100",
		"R too wide":     "3026" + big33 + "020101",
		"oversized":      "30" + "81ff" + strings.Repeat("00", 255),
		"bad length":     "3010020101020101",
		"non-minimal":    "300702020001020101",
	} {
		der, err := hex.DecodeString(h)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if sig, err := DERToJOSE(der); err == nil {
			t.Errorf("%s: accepted, got %x", name, sig)
		}
	}
}

// FuzzDERToJOSE checks that no input panics, that every accepted input is 64
// bytes whose halves re-encode to the same DER, and that real signatures
// round-trip.
func FuzzDERToJOSE(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	digest := sha256.Sum256([]byte("x"))
	for i := 0; i < 8; i++ {
		der, _ := ecdsa.SignASN1(rand.Reader, key, digest[:])
		f.Add(der)
	}
	f.Add([]byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01})
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		sig, err := DERToJOSE(der)
		if err != nil {
			return
		}
		if len(sig) != SignatureSize {
			t.Fatalf("accepted %x but returned %d bytes", der, len(sig))
		}
		r := new(big.Int).SetBytes(sig[:32])
		s := new(big.Int).SetBytes(sig[32:])
		if r.Sign() == 0 || s.Sign() == 0 {
			t.Fatalf("accepted %x with a zero half", der)
		}
		re, err := encodeDER(r, s)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(re, der) {
			t.Fatalf("accepted %x, which is not the DER of its own R and S (%x)", der, re)
		}
	})
}
