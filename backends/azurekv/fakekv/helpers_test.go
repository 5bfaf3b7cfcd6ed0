package fakekv_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/azurekv"
	"github.com/kmsgate/kmsgate/backends/azurekv/fakekv"
)

// vaultHost is the vault the test URIs name; requests go to the fake
// through ?endpoint=.
const vaultHost = "kmsgate-test.vault.azure.net"

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

// env is one fake vault on 127.0.0.1, trusted through
// KMSGATE_AZUREKV_CACERT, with its token in KMSGATE_AZUREKV_TOKEN.
type env struct {
	t     testing.TB
	fake  *fakekv.Server
	token string
	ca    string
	logs  *logBuffer
}

func newEnv(t testing.TB) *env {
	t.Helper()
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	e := &env{t: t, token: "fake-token-" + hex.EncodeToString(tok), logs: &logBuffer{}}
	e.fake = fakekv.New(e.token)
	t.Cleanup(e.fake.Close)
	ca, err := e.fake.WriteCACert(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e.ca = ca
	t.Setenv(azurekv.CACertEnv, ca)
	t.Setenv(azurekv.TokenEnv, e.token)
	t.Setenv(azurekv.EndpointEnv, "")
	return e
}

// uri is the key URI of key name (and version, if given) on the fake.
func (e *env) uri(name string, version ...string) string {
	u := "azurekv://" + vaultHost + "/keys/" + name
	if len(version) > 0 {
		u += "/" + version[0]
	}
	return u + "?endpoint=" + url.QueryEscape(e.fake.URL())
}

// id is the backend id of a version of key name.
func (e *env) id(name, version string) string {
	return e.fake.URL() + "/keys/" + name + "/" + version
}

func (e *env) add(name string, spec fakekv.Version) string {
	e.t.Helper()
	v, err := e.fake.AddVersion(name, spec)
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

func (e *env) open(uri string, opts backends.Options) backends.Backend {
	e.t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	b, err := backends.Open(context.Background(), uri, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { b.Close() })
	return b
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func byID(vs []backends.Version) map[string]backends.Version {
	m := map[string]backends.Version{}
	for _, v := range vs {
		m[v.ID] = v
	}
	return m
}
