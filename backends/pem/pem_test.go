package pem

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kmsgate/kmsgate/backends"
)

// The base64 SIGNING_KEY values printed in the seeds (Pomerium's docs).
var seedKeys = []string{
	"LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0tCk1IY0NBUUVFSUNUWHlVQ0phYmlHTW1wd3VqYlBmWHhNS2MzWjNFM0tEcmlEbmQwZktiTmtvQW9HQ0NxR1NNNDkKQXdFSG9VUURRZ0FFM1FYQmZ1eEV1UEhJT0ZDb3RaaXBOMUFqM3UrOUtFRWd4RFVURW9CcjYxYXpaYWFvYlRGbwo0cGY3WFRSbzVhM2U2aDdKUW9wckp4QSszd0dwTUpSYWl3PT0KLS0tLS1FTkQgRUMgUFJJVkFURSBLRVktLS0tLQo=",
	"LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0tCk1IY0NBUUVFSUVSNThaeDA2SHJXTW9PUTRaNjlMaDdMZUtFZW5TSmJZcHJvZ3V3TEl0blNvQW9HQ0NxR1NNNDkKQXdFSG9VUURRZ0FFK1FtamZKQ2ovdzkrOUhrRDVlbTlIZFhRM3ViUEhIdWNOMTlNOXJxR05PeEpTRmR3VHgvaAphdVkvcVFSWWR0YVpnVEpEUWZSYVQ2Q1pPYndSYTl2TXNnPT0KLS0tLS1FTkQgRUMgUFJJVkFURSBLRVktLS0tLQo=",
}

func pemOf(t *testing.T, typ string, der []byte) string {
	t.Helper()
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

func sec1(t *testing.T, k *ecdsa.PrivateKey) string {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pemOf(t, "EC PRIVATE KEY", der)
}

func pkcs8(t *testing.T, k any) string {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pemOf(t, "PRIVATE KEY", der)
}

func TestSeedKeysLoad(t *testing.T) {
	for i, s := range seedKeys {
		keys, err := Parse([]byte(s))
		if err != nil || len(keys) != 1 {
			t.Fatalf("seed key %d: %d keys, %v", i, len(keys), err)
		}
	}
	// The second seed also prints its public key.
	keys, _ := Parse([]byte(seedKeys[1]))
	der, _ := x509.MarshalPKIXPublicKey(&keys[0].PublicKey)
	if got := base64.StdEncoding.EncodeToString(der); got != "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+QmjfJCj/w9+9HkD5em9HdXQ3ubPHHucN19M9rqGNOxJSFdwTx/hauY/qQRYdtaZgTJDQfRaT6CZObwRa9vMsg==" {
		t.Fatalf("public key of seed key 2 = %s", got)
	}
}

func TestParseForms(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	params := "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
	both := params + sec1(t, k1) + pkcs8(t, k2)
	for name, in := range map[string]string{
		"raw PEM":                   both,
		"base64":                    base64.StdEncoding.EncodeToString([]byte(both)),
		"base64 wrapped":            wrap(base64.StdEncoding.EncodeToString([]byte(both)), 76),
		"base64 unpadded":           base64.RawStdEncoding.EncodeToString([]byte(both)),
		"surrounded by white space": "\n\n  " + both + "\n\n",
	} {
		keys, err := Parse([]byte(in))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if len(keys) != 2 || !keys[0].Equal(k1) || !keys[1].Equal(k2) {
			t.Errorf("%s: got %d keys, or not in file order", name, len(keys))
		}
	}
}

func wrap(s string, n int) string {
	var b strings.Builder
	for len(s) > n {
		b.WriteString(s[:n] + "\n")
		s = s[n:]
	}
	b.WriteString(s)
	return b.String()
}

// badKeys are the inputs the backend must refuse, with what the error must say.
func badKeys(t *testing.T) map[string]struct{ in, want string } {
	good, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalECPrivateKey(good)
	//lint:ignore SA1019 legacy encrypted PEM is exactly what must be refused
	enc, err := x509.EncryptPEMBlock(rand.Reader, "EC PRIVATE KEY", der, []byte("pw"), x509.PEMCipherAES256) //nolint:staticcheck
	if err != nil {
		t.Fatal(err)
	}
	return map[string]struct{ in, want string }{
		"empty":            {"", "empty"},
		"white space":      {" \n\t", "empty"},
		"garbage":          {"this is not a key", "not PEM, and not base64 of PEM"},
		"base64 garbage":   {base64.StdEncoding.EncodeToString([]byte("hello world")), "does not decode to PEM"},
		"RSA PKCS#1":       {pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey)), "key 1: RSA PRIVATE KEY: wrong key type: RSA key, want EC P-256"},
		"RSA PKCS#8":       {pkcs8(t, rsaKey), "key 1: wrong key type: RSA key, want EC P-256"},
		"Ed25519 PKCS#8":   {pkcs8(t, edKey), "key 1: wrong key type: Ed25519 key, want EC P-256"},
		"P-384 SEC1":       {sec1(t, p384), "key 1: wrong key type: EC curve P-384, want P-256"},
		"P-384 PKCS#8":     {pkcs8(t, p384), "key 1: wrong key type: EC curve P-384, want P-256"},
		"encrypted legacy": {string(pem.EncodeToMemory(enc)), "key 1: EC PRIVATE KEY is encrypted"},
		"encrypted PKCS#8": {pemOf(t, "ENCRYPTED PRIVATE KEY", []byte{0x30, 0}), "key 1: ENCRYPTED PRIVATE KEY"},
		"certificate":      {pemOf(t, "CERTIFICATE", []byte{0x30, 0}), `key 1: PEM block "CERTIFICATE" is not a private key`},
		"second key RSA":   {sec1(t, good) + pkcs8(t, rsaKey), "key 2: wrong key type: RSA key"},
		"corrupt SEC1":     {pemOf(t, "EC PRIVATE KEY", []byte{1, 2, 3}), "key 1: EC PRIVATE KEY:"},
		"trailing garbage": {sec1(t, good) + "garbage\n", "key 2: data that is not a PEM block"},
		"public key only":  {pemOf(t, "PUBLIC KEY", []byte{0x30, 0}), `key 1: PEM block "PUBLIC KEY" is not a private key`},
		"parameters only":  {"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n", "no private key"},
	}
}

func TestParseRefuses(t *testing.T) {
	for name, c := range badKeys(t) {
		_, err := Parse([]byte(c.in))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not say %q", name, err, c.want)
		}
	}
}

// TestBackendFileAndEnv opens both URI forms, lists and signs, and picks up a
// rotated file.
func TestBackendFileAndEnv(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	path := filepath.Join(t.TempDir(), "keys.pem")
	if err := os.WriteFile(path, []byte(sec1(t, k1)+sec1(t, k2)), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, uri := range []string{"file://" + path, "env://KMSGATE_TEST_PEM"} {
		t.Setenv("KMSGATE_TEST_PEM", base64.StdEncoding.EncodeToString([]byte(sec1(t, k1)+sec1(t, k2))))
		b, err := backends.Open(ctx, uri, backends.Options{})
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		if b.Ordering() != backends.FirstSigns || b.Remote() || b.Kind() != "pem" {
			t.Fatalf("%s: wrong backend properties", uri)
		}
		vs, err := b.Versions(ctx)
		if err != nil || len(vs) != 2 {
			t.Fatalf("%s: versions %v %v", uri, vs, err)
		}
		if !vs[0].PublicKey.Equal(&k1.PublicKey) || !vs[1].PublicKey.Equal(&k2.PublicKey) || vs[0].State != backends.StateEnabled {
			t.Fatalf("%s: versions not in file order or not enabled", uri)
		}
		digest := sha256.Sum256([]byte("hello"))
		for _, v := range vs {
			sig, err := b.Sign(ctx, v.ID, digest[:])
			if err != nil {
				t.Fatal(err)
			}
			if !backends.VerifyJOSE(v.PublicKey, digest[:], sig) {
				t.Fatalf("%s: signature with %s does not verify", uri, v.ID)
			}
		}
		if _, err := b.Sign(ctx, "sha256:0000", digest[:]); !errors.Is(err, backends.ErrNotFound) {
			t.Fatalf("unknown version: %v", err)
		}
		if _, err := b.Sign(ctx, vs[0].ID, digest[:5]); err == nil {
			t.Fatal("short digest accepted")
		}
	}
	// A rotated file is picked up by the next Versions call.
	if err := os.WriteFile(path, []byte(sec1(t, k2)), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := backends.Open(ctx, "file://"+path, backends.Options{})
	vs, err := b.Versions(ctx)
	if err != nil || len(vs) != 1 || !vs[0].PublicKey.Equal(&k2.PublicKey) {
		t.Fatalf("after rotation: %v %v", vs, err)
	}
}

func TestOpenRefuses(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	bad := filepath.Join(dir, "rsa.pem")
	_ = os.WriteFile(bad, []byte(pkcs8(t, rsaKey)), 0o600)
	os.Unsetenv("KMSGATE_TEST_UNSET")
	for uri, want := range map[string]string{
		"file://" + bad:                  "pem: file://" + bad + ": key 1: wrong key type: RSA key",
		"file://" + dir + "/missing.pem": "no such file",
		"file://host/etc/keys.pem":       "absolute path",
		"env://KMSGATE_TEST_UNSET":       "environment variable KMSGATE_TEST_UNSET is not set",
		"env://":                         "no variable name",
	} {
		_, err := backends.Open(ctx, uri, backends.Options{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to say %q", uri, err, want)
		}
	}
}

func TestGenerate(t *testing.T) {
	p, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := Parse(p)
	if err != nil || len(keys) != 1 || !strings.HasPrefix(string(p), "-----BEGIN EC PRIVATE KEY-----") {
		t.Fatalf("generated key does not parse as one SEC1 key: %v", err)
	}
}

// TestKeyFileLimits: relative file: paths resolve against the working
// directory; files larger than MaxFileSize and anything but a regular file
// are refused before they are read.
func TestKeyFileLimits(t *testing.T) {
	dir := t.TempDir()
	key, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "k.pem"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	b, err := backends.Open(context.Background(), "file:k.pem", backends.Options{})
	if err != nil {
		t.Fatalf("relative file:k.pem: %v", err)
	}
	b.Close()
	if _, err := backends.Open(context.Background(), "file://k.pem", backends.Options{}); err == nil || !strings.Contains(err.Error(), "file:k.pem") {
		t.Errorf("file://k.pem: %v, want a hint at file:k.pem", err)
	}
	big := filepath.Join(dir, "big.pem")
	if err := os.WriteFile(big, append(key, make([]byte, MaxFileSize)...), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for uri, want := range map[string]string{
		"file://" + big:    "more than the 1048576 a key file may have",
		"file:///dev/zero": "/dev/zero is a character device, not a key file",
		"file://" + dir:    "is a directory, not a key file",
		"file://" + fifo:   "is a named pipe, not a key file", // refused without waiting for a writer
	} {
		if _, err := backends.Open(context.Background(), uri, backends.Options{}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", uri, err, want)
		}
	}
}
