package pem

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
)

// fuzzKeys are fixed keys for the seed corpus: the two seed keys, a third
// P-256 key, and keys of other types (P-384, Ed25519) that must be refused.
func fuzzKeys(f *testing.F) (p256 []*ecdsa.PrivateKey, p384 *ecdsa.PrivateKey, ed ed25519.PrivateKey) {
	for _, s := range seedKeys {
		keys, err := Parse([]byte(s))
		if err != nil {
			f.Fatal(err)
		}
		p256 = append(p256, keys...)
	}
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), bytes.Repeat([]byte{0x5a}, 32))
	if err != nil {
		f.Fatal(err)
	}
	p256 = append(p256, k)
	if p384, err = ecdsa.ParseRawPrivateKey(elliptic.P384(), bytes.Repeat([]byte{0x3c}, 48)); err != nil {
		f.Fatal(err)
	}
	return p256, p384, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
}

func encodeBlock(typ string, der []byte, headers map[string]string) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Headers: headers, Bytes: der}))
}

// FuzzParse checks the parser of key files and env:// values (raw PEM or
// base64 of PEM): no input panics; a refused input gets an error that says
// why, names the env:// URI it came from, and never shows a line of the
// key material; every accepted key is P-256, and the keys re-encoded as
// SEC1 and as PKCS#8 PEM, raw or base64, parse to the same keys in the
// same order; and a backend over accepted keys signs with each of them
// signatures that verify.
func FuzzParse(f *testing.F) {
	keys, p384, ed := fuzzKeys(f)
	sec := make([]string, len(keys))
	p8 := make([]string, len(keys))
	for i, k := range keys {
		der, _ := x509.MarshalECPrivateKey(k)
		sec[i] = encodeBlock("EC PRIVATE KEY", der, nil)
		der, _ = x509.MarshalPKCS8PrivateKey(k)
		p8[i] = encodeBlock("PRIVATE KEY", der, nil)
	}
	der384, _ := x509.MarshalECPrivateKey(p384)
	derEd, _ := x509.MarshalPKCS8PrivateKey(ed)
	params, _ := pem.Decode([]byte("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"))
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, s := range []string{
		seedKeys[0], seedKeys[1], sec[2], p8[2], sec[0] + sec[1] + p8[2],
		string(pem.EncodeToMemory(params)) + sec[2],
		b64(sec[0] + p8[1]), base64.RawURLEncoding.EncodeToString([]byte(sec[2])),
		"  \n" + b64(sec[1])[:40] + "\n " + b64(sec[1])[40:] + "\n",
		encodeBlock("EC PRIVATE KEY", der384, nil),
		encodeBlock("PRIVATE KEY", derEd, nil),
		encodeBlock("RSA PRIVATE KEY", []byte{0x30, 0x03, 0x02, 0x01, 0x00}, nil),
		encodeBlock("ENCRYPTED PRIVATE KEY", []byte{0x30, 0x00}, nil),
		encodeBlock("EC PRIVATE KEY", []byte{0x30, 0x00}, map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00"}),
		encodeBlock("CERTIFICATE", []byte{0x30, 0x00}, nil),
		sec[0] + "trailing text that is no PEM\n",
		"-----BEGIN EC PRIVATE KEY-----\nnot base64\n-----END EC PRIVATE KEY-----\n",
		"", "   ", "bm90IHBlbQ==", "!!!", string(pem.EncodeToMemory(params)),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const name = "env://FUZZ_SIGNING_KEY"
		b := &Backend{name: name, read: func() ([]byte, error) { return data, nil }}
		loadErr := b.load()
		keys, err := Parse(data)
		if (err == nil) != (loadErr == nil) {
			t.Fatalf("Parse: %v, but the backend's load: %v", err, loadErr)
		}
		if err != nil {
			msg := loadErr.Error()
			if strings.TrimSpace(err.Error()) == "" || !strings.HasPrefix(msg, "pem: "+name+": ") {
				t.Fatalf("refused with %q (load: %q); want a reason after the URI", err, msg)
			}
			if line, ok := echoedLine(data, msg); ok {
				t.Fatalf("the error %q shows the line %q of the key data", msg, line)
			}
			return
		}
		if len(keys) == 0 {
			t.Fatal("accepted with no key")
		}
		var sec1, pkcs8 bytes.Buffer
		for i, k := range keys {
			if _, err := k.ECDH(); err != nil || k.Curve != elliptic.P256() {
				t.Fatalf("key %d is not a valid P-256 key (%v)", i+1, err)
			}
			der, err := x509.MarshalECPrivateKey(k)
			if err != nil {
				t.Fatalf("key %d: re-encode as SEC1: %v", i+1, err)
			}
			_ = pem.Encode(&sec1, &pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
			if der, err = x509.MarshalPKCS8PrivateKey(k); err != nil {
				t.Fatalf("key %d: re-encode as PKCS#8: %v", i+1, err)
			}
			_ = pem.Encode(&pkcs8, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
		}
		for form, re := range map[string]string{
			"SEC1": sec1.String(), "PKCS#8": pkcs8.String(),
			"base64 SEC1": base64.StdEncoding.EncodeToString(sec1.Bytes()), "base64url PKCS#8": base64.RawURLEncoding.EncodeToString(pkcs8.Bytes()),
		} {
			again, err := Parse([]byte(re))
			if err != nil || len(again) != len(keys) {
				t.Fatalf("%d keys re-encoded as %s: %d keys, %v", len(keys), form, len(again), err)
			}
			for i := range keys {
				if !again[i].Equal(keys[i]) {
					t.Fatalf("key %d re-encoded as %s parses to another key", i+1, form)
				}
			}
		}
		vs, err := b.Versions(context.Background())
		if err != nil || len(vs) != len(keys) {
			t.Fatalf("versions: %d, %v; want %d", len(vs), err, len(keys))
		}
		digest := sha256.Sum256(data)
		for i, v := range vs {
			if !v.PublicKey.Equal(&keys[i].PublicKey) {
				t.Fatalf("version %d is not key %d", i+1, i+1)
			}
			sig, err := b.Sign(context.Background(), v.ID, digest[:])
			if err != nil || !backends.VerifyJOSE(v.PublicKey, digest[:], sig) {
				t.Fatalf("version %d: signature does not verify (%v)", i+1, err)
			}
		}
	})
}

// echoedLine returns a line of key data (16 bytes or more, not a PEM
// boundary nor part of one) that msg shows.
func echoedLine(data []byte, msg string) (string, bool) {
	lines := strings.Split(string(data), "\n")
	var boundaries []string
	for _, l := range lines {
		if strings.Contains(l, "-----") {
			boundaries = append(boundaries, l)
		}
	}
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if len(l) < 16 || strings.Contains(l, "-----") || !strings.Contains(msg, l) {
			continue
		}
		inBoundary := false
		for _, b := range boundaries {
			inBoundary = inBoundary || strings.Contains(b, l)
		}
		if !inBoundary {
			return l, true
		}
	}
	return "", false
}

// posixName is an environment variable name as POSIX shells write them.
var posixName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// FuzzKeyURI checks the file:// and env:// URI parsers: no input panics; a
// refused URI gets ErrInvalidURI with a reason and never shows a
// credential planted in it; nothing of an accepted URI is ignored (no user
// info, query or fragment); a file URI names an absolute path that
// file://PATH, escaped, names again; an env URI names a variable, and
// env://NAME names the same one.
func FuzzKeyURI(f *testing.F) {
	for _, s := range []string{
		"file:///etc/kmsgate/keys.pem", "file://localhost/etc/keys.pem", "file:keys.pem", "file:./k/../keys.pem",
		"file://host/etc/keys.pem", "file://", "file:///keys%20one.pem", "file:///k.pem?x=1", "file:///k#1.pem",
		"file:///a%3Fb%23c.pem", "file://u:p@localhost/k.pem", "FILE:///K.PEM",
		"env://SIGNING_KEY", "env:SIGNING_KEY", "env://", "env://SIGNING_KEY/extra", "env://SIGNING_KEY?x",
		"env://u:p@SIGNING_KEY", "env://signing-key:80", "env:///SIGNING_KEY",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		for _, s := range append([]string{uri}, backendtest.WithSecret(uri)...) {
			u, err := url.Parse(s)
			if err != nil {
				continue // refused before the backend sees it (see backends.FuzzOpen)
			}
			var got string
			switch u.Scheme {
			case "file":
				got, err = filePath(u)
			case "env":
				got, err = envName(u)
			default:
				continue
			}
			if err != nil {
				backendtest.CheckRefusal(t, uri, s, err)
				continue
			}
			if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
				t.Fatalf("%q accepted as %q, ignoring part of it", s, got)
			}
			if got == "" {
				t.Fatalf("%q: accepted with no name", s)
			}
			var canon string
			switch {
			case u.Scheme == "file":
				if !filepath.IsAbs(got) {
					t.Fatalf("%q: path %q is not absolute", s, got)
				}
				canon = (&url.URL{Scheme: "file", Path: got}).String()
			case posixName.MatchString(got):
				canon = "env://" + got
			default:
				continue
			}
			cu, err := url.Parse(canon)
			if err != nil {
				t.Fatalf("%q: canonical form %q does not parse: %v", s, canon, err)
			}
			var again string
			if u.Scheme == "file" {
				again, err = filePath(cu)
			} else {
				again, err = envName(cu)
			}
			if err != nil || again != got {
				t.Fatalf("%q names %q, but its canonical form %q names %q, %v", s, got, canon, again, err)
			}
		}
	})
}
