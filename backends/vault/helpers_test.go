package vault_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/backends/vault"
)

// logBuffer collects a backend's log lines so tests can check them.
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

// env is the Vault a test talks to, with an admin client holding the root
// token, and the log of the backends the test opens.
type env struct {
	t     testing.TB
	addr  string
	admin *api.Client
	logs  *logBuffer
}

// newEnv returns the shared test Vault started by scripts/test.d/30-vault.sh
// (VAULT_ADDR, VAULT_TOKEN); without it the test is skipped, or fails under
// KMSGATE_REQUIRE_SERVERS.
func newEnv(t testing.TB) *env {
	t.Helper()
	addr := backendtest.Require(t, "VAULT_ADDR")
	return envAt(t, addr, os.Getenv("VAULT_TOKEN"))
}

func envAt(t testing.TB, addr, token string) *env {
	t.Helper()
	if token == "" {
		t.Fatal("VAULT_TOKEN is unset: the tests need the test Vault's root token")
	}
	cfg := api.DefaultConfig()
	cfg.Address = addr
	cfg.MaxRetries = 0
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(token)
	return &env{t: t, addr: addr, admin: c, logs: &logBuffer{}}
}

var nonWord = regexp.MustCompile(`[^A-Za-z0-9]+`)

// keyName returns a Transit key name unique to this test and run.
func keyName(t testing.TB) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	n := strings.ToLower(nonWord.ReplaceAllString(t.Name(), "-"))
	if len(n) > 40 {
		n = n[:40]
	}
	return strings.Trim(n, "-") + "-" + hex.EncodeToString(b)
}

// write runs a Vault write as root and fails the test on error.
func (e *env) write(path string, data map[string]any) *api.Secret {
	e.t.Helper()
	s, err := e.admin.Logical().Write(path, data)
	if err != nil {
		e.t.Fatalf("vault write %s: %v", path, err)
	}
	return s
}

// createKey creates Transit key name of the given type on mount.
func (e *env) createKey(mount, name, typ string) {
	e.t.Helper()
	e.write(mount+"/keys/"+name, map[string]any{"type": typ})
}

// rotate adds a version to a Transit key.
func (e *env) rotate(mount, name string) {
	e.t.Helper()
	e.write(mount+"/keys/"+name+"/rotate", nil)
}

// configure sets a Transit key's configuration (min versions).
func (e *env) configure(mount, name string, data map[string]any) {
	e.t.Helper()
	e.write(mount+"/keys/"+name+"/config", data)
}

// vaultKey is one version as Vault itself reports it.
type vaultKey struct {
	pem     string
	pub     *ecdsa.PublicKey
	created time.Time
}

// keyVersions reads a Transit key's versions as root, independently of the
// backend.
func (e *env) keyVersions(mount, name string) map[int]vaultKey {
	e.t.Helper()
	s, err := e.admin.Logical().Read(mount + "/keys/" + name)
	if err != nil || s == nil {
		e.t.Fatalf("read key %s: %v", name, err)
	}
	keys, _ := s.Data["keys"].(map[string]any)
	out := map[int]vaultKey{}
	for v, raw := range keys {
		m := raw.(map[string]any)
		var n int
		fmt.Sscan(v, &n)
		block, _ := pem.Decode([]byte(m["public_key"].(string)))
		if block == nil {
			e.t.Fatalf("version %s: public_key is not PEM", v)
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			e.t.Fatal(err)
		}
		created, err := time.Parse(time.RFC3339Nano, m["creation_time"].(string))
		if err != nil {
			e.t.Fatal(err)
		}
		out[n] = vaultKey{pem: m["public_key"].(string), pub: pub.(*ecdsa.PublicKey), created: created}
	}
	return out
}

// open opens uri with backends.Open, the way the gateway does, and closes
// it when the test ends.
func (e *env) open(uri string) *vault.Backend {
	e.t.Helper()
	return e.openWith(uri, backends.Options{})
}

// openWith is open with options (the logger is set here).
func (e *env) openWith(uri string, opts backends.Options) *vault.Backend {
	e.t.Helper()
	opts.Logger = slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := backends.Open(context.Background(), uri, opts)
	if err != nil {
		e.t.Fatalf("open %s: %v", uri, err)
	}
	e.t.Cleanup(func() { _ = b.Close() })
	return b.(*vault.Backend)
}

// policy writes an ACL policy.
func (e *env) policy(name, hcl string) {
	e.t.Helper()
	if err := e.admin.Sys().PutPolicy(name, hcl); err != nil {
		e.t.Fatalf("put policy %s: %v", name, err)
	}
}

// token creates a token with the given policies (and no default policy
// unless listed) and returns it.
func (e *env) token(data map[string]any) string {
	e.t.Helper()
	s := e.write("auth/token/create", data)
	return s.Auth.ClientToken
}

// leastPolicy returns policy.hcl, the README's least-privilege policy, for
// key name on mount.
func leastPolicy(t testing.TB, mount, name string) string {
	t.Helper()
	b, err := os.ReadFile("policy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(string(b), "transit/", mount+"/")
	return strings.ReplaceAll(s, "/NAME", "/"+name)
}

// vaultVerify asks Vault to verify a JOSE signature of digest by version n,
// a check independent of kmsgate's own code.
func (e *env) vaultVerify(mount, name string, n int, digest, sig []byte) bool {
	e.t.Helper()
	s := e.write(mount+"/verify/"+name, map[string]any{
		"input":                base64.StdEncoding.EncodeToString(digest),
		"signature":            fmt.Sprintf("vault:v%d:%s", n, base64.RawURLEncoding.EncodeToString(sig)),
		"prehashed":            true,
		"hash_algorithm":       "sha2-256",
		"marshaling_algorithm": "jws",
	})
	ok, _ := s.Data["valid"].(bool)
	return ok
}

// signedToken signs a JWT through b with version id and returns it, with a
// JWKS document built by lestrrat-go/jwx from Vault's own PEM of that
// version (kid = id), so that VerifyIndependently checks it without any
// kmsgate code on the verifying side.
func signedToken(t testing.TB, b backends.Backend, id, pemKey, sub string) (token string, jwksJSON []byte) {
	t.Helper()
	header := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"alg":"ES256","kid":%q,"typ":"JWT"}`, id)))
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{"sub": sub, "iat": now.Unix(), "nbf": now.Add(-time.Second).Unix(), "exp": now.Add(5 * time.Minute).Unix()})
	signingInput := header + "." + base64.RawURLEncoding.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signingInput))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sig, err := b.Sign(ctx, id, digest[:])
	if err != nil {
		t.Fatalf("sign with %s: %v", id, err)
	}
	key, err := jwk.ParseKey([]byte(pemKey), jwk.WithPEM(true))
	if err != nil {
		t.Fatal(err)
	}
	_ = key.Set(jwk.KeyIDKey, id)
	_ = key.Set(jwk.AlgorithmKey, jwa.ES256)
	set := jwk.NewSet()
	_ = set.AddKey(key)
	doc, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return signingInput + "." + base64.RawURLEncoding.EncodeToString(sig), doc
}

// vaultProc is a test Vault started by the test itself, on a data directory
// that survives restarts, so that the test can stop it and bring it back.
type vaultProc struct {
	t      testing.TB
	bin    string
	dir    string
	listen string
	addr   string
	token  string
	cmd    *exec.Cmd
	done   chan struct{}
	log    *logBuffer
}

// startOwnVault starts $KMSGATE_TEST_VAULT_BIN with a persistent data
// directory on a free port, and kills it when the test ends.
func startOwnVault(t testing.TB) *vaultProc {
	t.Helper()
	bin := backendtest.Require(t, "KMSGATE_TEST_VAULT_BIN")
	p := &vaultProc{t: t, bin: bin, dir: t.TempDir(), listen: fmt.Sprintf("127.0.0.1:%d", backendtest.FreePort(t)), token: "own-vault-root", log: &logBuffer{}}
	p.start()
	t.Cleanup(p.kill)
	return p
}

func (p *vaultProc) start() {
	p.t.Helper()
	addrFile := filepath.Join(p.dir, "addr")
	_ = os.Remove(addrFile)
	p.cmd = exec.Command(p.bin, "-listen", p.listen, "-data", p.dir, "-root-token", p.token, "-addr-file", addrFile)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(p.cmd, p.done)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(addrFile); err == nil && len(b) > 0 {
			p.addr = strings.TrimSpace(string(b))
			return
		}
		select {
		case <-p.done:
			p.t.Fatalf("test Vault exited:\n%s", p.log.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.t.Fatalf("test Vault did not start within 30 s:\n%s", p.log.String())
}

// kill stops the process at once (SIGKILL), as a crash would, and waits
// for it.
func (p *vaultProc) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// unsealKeys returns the unseal keys the test Vault stored in its data
// directory.
func (p *vaultProc) unsealKeys() []string {
	p.t.Helper()
	b, err := os.ReadFile(filepath.Join(p.dir, "unseal-keys.json"))
	if err != nil {
		p.t.Fatal(err)
	}
	var stored struct {
		Keys []string `json:"keys_base64"`
	}
	if err := json.Unmarshal(b, &stored); err != nil {
		p.t.Fatal(err)
	}
	return stored.Keys
}

// lines returns the non-empty lines of s.
func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
