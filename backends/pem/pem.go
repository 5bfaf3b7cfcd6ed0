// Package pem is the local key backend: EC P-256 private keys in PEM, read
// from a file (file:///path) or an environment variable (env://NAME), raw or
// base64 encoded as Pomerium's SIGNING_KEY. The first key signs and every key
// is published. It is meant for development and for migrating to a KMS.
package pem

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/kmsgate/kmsgate/backends"
)

func init() {
	backends.Register("file", openFile)
	backends.Register("env", openEnv)
}

// Backend holds the PEM keys of one URI. Keys are re-read on every Versions
// call, so a rotated file or Kubernetes secret is picked up on refresh.
type Backend struct {
	name string
	read func() ([]byte, error)

	mu   sync.RWMutex
	keys map[string]*ecdsa.PrivateKey
}

// MaxFileSize is the largest key file read; a larger one is refused before
// it is read.
const MaxFileSize = 1 << 20

func openFile(_ context.Context, u *url.URL, _ backends.Options) (backends.Backend, error) {
	path, err := filePath(u)
	if err != nil {
		return nil, err
	}
	b := &Backend{name: "file://" + path, read: func() ([]byte, error) { return readKeyFile(path) }}
	return b, b.load()
}

// filePath returns the absolute path a file URI names: file:///path,
// file://localhost/path, or file:path relative to the working directory.
// Nothing of the URI may be left unused: user info, a query or a fragment
// (an unescaped "?" or "#" in the path) is refused.
func filePath(u *url.URL) (string, error) {
	if err := onlyName(u, "a key file path", " (write ? as %3F and # as %23 in a path)"); err != nil {
		return "", err
	}
	path := u.Path
	switch {
	case u.Opaque != "":
		// file:keys.pem, relative to the working directory at start.
		abs, err := filepath.Abs(u.Opaque)
		if err != nil {
			return "", fmt.Errorf("pem: %s: %w: %v", backends.Redact(u.String()), backends.ErrInvalidURI, err)
		}
		path = abs
	case u.Host != "" && u.Host != "localhost":
		return "", fmt.Errorf("pem: %s: %w: %q would be a host; write an absolute path as file:///path/keys.pem, or file:%s%s for a path relative to the working directory", backends.Redact(u.String()), backends.ErrInvalidURI, u.Host, u.Host, u.Path)
	case path == "":
		return "", fmt.Errorf("pem: %s: %w: no path", backends.Redact(u.String()), backends.ErrInvalidURI)
	}
	return path, nil
}

// readKeyFile reads a key file of at most MaxFileSize bytes; anything but a
// regular file (a device, a FIFO, a directory) is refused unread. It is
// checked before the file is opened, as opening a FIFO waits for a writer.
func readKeyFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := regularFile(path, st); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err = f.Stat(); err != nil {
		return nil, err
	}
	if err := regularFile(path, st); err != nil {
		return nil, err // replaced since the first check
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("%s grew past %d bytes while read", path, MaxFileSize)
	}
	return b, nil
}

// regularFile refuses a key file that is not a regular file or is larger
// than MaxFileSize.
func regularFile(path string, st os.FileInfo) error {
	if m := st.Mode(); !m.IsRegular() {
		what := "not a regular file"
		switch {
		case m.IsDir():
			what = "a directory"
		case m&os.ModeCharDevice != 0:
			what = "a character device"
		case m&os.ModeDevice != 0:
			what = "a device"
		case m&os.ModeNamedPipe != 0:
			what = "a named pipe"
		case m&os.ModeSocket != 0:
			what = "a socket"
		}
		return fmt.Errorf("%s is %s, not a key file", path, what)
	}
	if st.Size() > MaxFileSize {
		return fmt.Errorf("%s is %d bytes, more than the %d a key file may have", path, st.Size(), MaxFileSize)
	}
	return nil
}

func openEnv(_ context.Context, u *url.URL, _ backends.Options) (backends.Backend, error) {
	name, err := envName(u)
	if err != nil {
		return nil, err
	}
	b := &Backend{name: "env://" + name, read: func() ([]byte, error) {
		v, ok := os.LookupEnv(name)
		if !ok {
			return nil, fmt.Errorf("environment variable %s is not set", name)
		}
		return []byte(v), nil
	}}
	return b, b.load()
}

// envName returns the name of the environment variable an env URI names:
// env://NAME or env:NAME.
func envName(u *url.URL) (string, error) {
	if err := onlyName(u, "a variable name", ""); err != nil {
		return "", err
	}
	name := u.Host + u.Path
	if u.Opaque != "" {
		name = u.Opaque
	}
	if name == "" {
		return "", fmt.Errorf("pem: %s: %w: no variable name (env://SIGNING_KEY)", backends.Redact(u.String()), backends.ErrInvalidURI)
	}
	return name, nil
}

// onlyName refuses the parts of a file or env URI that would otherwise be
// ignored: user info, a query and a fragment. what names what the URI
// holds; hint, if any, is added to the error.
func onlyName(u *url.URL, what, hint string) error {
	var bad string
	switch {
	case u.User != nil:
		bad, hint = "user info", ""
	case u.RawQuery != "" || u.ForceQuery:
		bad = "a query"
	case u.Fragment != "":
		bad = "a fragment"
	default:
		return nil
	}
	return fmt.Errorf("pem: %s: %w: %s is not part of %s%s", backends.Redact(u.String()), backends.ErrInvalidURI, bad, what, hint)
}

// New returns a backend over keys held in memory (the --dev key, tests). The
// first key signs.
func New(name string, keys ...*ecdsa.PrivateKey) (*Backend, error) {
	var buf bytes.Buffer
	for i, k := range keys {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("pem: %s: key %d: %w", name, i+1, err)
		}
		_ = pem.Encode(&buf, &pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}
	data := buf.Bytes()
	b := &Backend{name: name, read: func() ([]byte, error) { return data, nil }}
	return b, b.load()
}

// load reads and parses the keys, replacing the previous ones on success.
func (b *Backend) load() error {
	data, err := b.read()
	if err != nil {
		return fmt.Errorf("pem: %s: %w", b.name, err)
	}
	keys, err := Parse(data)
	if err != nil {
		return fmt.Errorf("pem: %s: %w", b.name, err)
	}
	m := make(map[string]*ecdsa.PrivateKey, len(keys))
	for _, k := range keys {
		m[versionID(&k.PublicKey)] = k
	}
	b.mu.Lock()
	b.keys = m
	b.mu.Unlock()
	return nil
}

// versionID names a PEM key by the first 16 hex digits of the SHA-256 of
// its public key, so an id keeps naming the same key when the file changes.
func versionID(pub *ecdsa.PublicKey) string {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:8])
}

// Kind implements backends.Backend.
func (b *Backend) Kind() string { return "pem" }

// Ordering implements backends.Backend: the first key signs.
func (b *Backend) Ordering() backends.Ordering { return backends.FirstSigns }

// Remote implements backends.Backend: signatures are made in process.
func (b *Backend) Remote() bool { return false }

// Close implements backends.Backend.
func (b *Backend) Close() error { return nil }

// Versions re-reads the keys and lists them in file order, all enabled.
func (b *Backend) Versions(context.Context) ([]backends.Version, error) {
	data, err := b.read()
	if err != nil {
		return nil, fmt.Errorf("pem: %s: %w", b.name, err)
	}
	keys, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("pem: %s: %w", b.name, err)
	}
	m := make(map[string]*ecdsa.PrivateKey, len(keys))
	vs := make([]backends.Version, len(keys))
	for i, k := range keys {
		id := versionID(&k.PublicKey)
		m[id] = k
		vs[i] = backends.Version{ID: id, PublicKey: &k.PublicKey, State: backends.StateEnabled}
	}
	b.mu.Lock()
	b.keys = m
	b.mu.Unlock()
	return vs, nil
}

// Sign signs digest with the key named by versionID.
func (b *Backend) Sign(_ context.Context, versionID string, digest []byte) ([]byte, error) {
	b.mu.RLock()
	k := b.keys[versionID]
	b.mu.RUnlock()
	if k == nil {
		return nil, fmt.Errorf("pem: %s: sign with %s: %w", b.name, versionID, backends.ErrNotFound)
	}
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("pem: %s: sign with %s: digest is %d bytes, want %d", b.name, versionID, len(digest), sha256.Size)
	}
	r, s, err := ecdsa.Sign(rand.Reader, k, digest)
	if err != nil {
		return nil, fmt.Errorf("pem: %s: sign with %s: %w", b.name, versionID, err)
	}
	sig := make([]byte, backends.SignatureSize)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return sig, nil
}

// Parse reads one or more EC P-256 private keys from PEM data, raw or base64
// encoded. SEC1 ("EC PRIVATE KEY") and PKCS#8 ("PRIVATE KEY") blocks are
// accepted and "EC PARAMETERS" blocks skipped; anything else is an error that
// names the key by its position.
func Parse(data []byte) ([]*ecdsa.PrivateKey, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil, errors.New("no key: the input is empty")
	}
	if !bytes.HasPrefix(data, []byte("-----BEGIN")) {
		dec, err := decodeBase64(data)
		if err != nil {
			return nil, fmt.Errorf("not PEM, and not base64 of PEM: %w", err)
		}
		data = bytes.TrimSpace(dec)
		if !bytes.HasPrefix(data, []byte("-----BEGIN")) {
			return nil, errors.New("base64 input does not decode to PEM")
		}
	}
	var keys []*ecdsa.PrivateKey
	rest := data
	for n := 1; ; {
		block, r := pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) != 0 {
				return nil, fmt.Errorf("key %d: data that is not a PEM block", n)
			}
			break
		}
		rest = r
		if block.Type == "EC PARAMETERS" {
			continue
		}
		k, err := parseBlock(block)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", n, err)
		}
		keys = append(keys, k)
		n++
	}
	if len(keys) == 0 {
		return nil, errors.New("no private key in the PEM data")
	}
	return keys, nil
}

func parseBlock(block *pem.Block) (*ecdsa.PrivateKey, error) {
	if _, ok := block.Headers["DEK-Info"]; ok || strings.Contains(block.Headers["Proc-Type"], "ENCRYPTED") {
		return nil, fmt.Errorf("%s is encrypted: %w; give an unencrypted key", block.Type, backends.ErrKeyType)
	}
	var key any
	switch block.Type {
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("EC PRIVATE KEY: %w", err)
		}
		key = k
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PRIVATE KEY (PKCS#8): %w", err)
		}
		key = k
	case "ENCRYPTED PRIVATE KEY":
		return nil, fmt.Errorf("ENCRYPTED PRIVATE KEY: %w: encrypted PKCS#8 is not supported; give an unencrypted key", backends.ErrKeyType)
	case "RSA PRIVATE KEY":
		return nil, fmt.Errorf("RSA PRIVATE KEY: %w: RSA key, want EC P-256", backends.ErrKeyType)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key: %w", block.Type, backends.ErrKeyType)
	}
	k, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: %s key, want EC P-256", backends.ErrKeyType, keyTypeName(key))
	}
	if k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: EC curve %s, want P-256", backends.ErrKeyType, k.Curve.Params().Name)
	}
	return k, nil
}

func keyTypeName(k any) string {
	switch fmt.Sprintf("%T", k) {
	case "*rsa.PrivateKey":
		return "RSA"
	case "ed25519.PrivateKey":
		return "Ed25519"
	case "*ecdh.PrivateKey":
		return "X25519"
	default:
		return fmt.Sprintf("%T", k)
	}
}

// decodeBase64 accepts standard or URL base64, padded or not, with white
// space anywhere.
func decodeBase64(data []byte) ([]byte, error) {
	s := strings.Join(strings.Fields(string(data)), "")
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("invalid base64")
}

// Generate returns a new P-256 key as SEC1 PEM, the form `kmsgate genkey`
// prints.
func Generate() ([]byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pem: generate key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("pem: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}
