package gcpkms_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/gcpkms"
	"github.com/kmsgate/kmsgate/backends/gcpkms/fakekms"
)

const (
	keyName  = "projects/test-project/locations/europe-west1/keyRings/kmsgate/cryptoKeys/jwt"
	p256     = kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256
	p384     = kmspb.CryptoKeyVersion_EC_SIGN_P384_SHA384
	signKey  = kmspb.CryptoKey_ASYMMETRIC_SIGN
	enabled  = kmspb.CryptoKeyVersion_ENABLED
	disabled = kmspb.CryptoKeyVersion_DISABLED
	pending  = kmspb.CryptoKeyVersion_PENDING_GENERATION
)

// logBuffer collects a backend's log lines so tests can check warnings.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// env is one fake Cloud KMS on 127.0.0.1 with the key keyName.
type env struct {
	t    testing.TB
	fake *fakekms.Server
	addr string
	logs *logBuffer
}

func newEnv(t testing.TB) *env {
	t.Helper()
	f := fakekms.New()
	addr, err := f.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)
	if err := f.CreateKey(keyName, signKey, p256); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, fake: f, addr: addr, logs: &logBuffer{}}
}

// addVersion adds a version of keyName and returns its name.
func (e *env) addVersion(spec fakekms.VersionSpec) string {
	e.t.Helper()
	name, err := e.fake.AddVersion(keyName, spec)
	if err != nil {
		e.t.Fatal(err)
	}
	return name
}

func (e *env) setState(name string, s kmspb.CryptoKeyVersion_CryptoKeyVersionState) {
	e.t.Helper()
	if err := e.fake.SetState(name, s); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) uri(resource string) string {
	return "gcpkms://" + resource + "?endpoint=" + e.addr
}

// open opens resource (a key or version name) through the backends registry
// and fast test timing.
func (e *env) open(resource string, opts backends.Options) *gcpkms.Backend {
	e.t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	b, err := backends.Open(context.Background(), e.uri(resource), opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = b.Close() })
	g := b.(*gcpkms.Backend)
	gcpkms.SetTiming(g, 5*time.Second, 2*time.Second, 20*time.Millisecond)
	return g
}

func (e *env) publicKey(name string) *ecdsa.PublicKey {
	e.t.Helper()
	pub, err := e.fake.PublicKey(name)
	if err != nil {
		e.t.Fatal(err)
	}
	return pub.(*ecdsa.PublicKey)
}

func digest(s string) []byte {
	d := sha256.Sum256([]byte(s))
	return d[:]
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond every 5 ms for at most 5 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
