package browsertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/jwks/verify"
)

// requireServers is set by scripts/test.sh: every server and tool the tests
// need is provided, so a missing one is a failure, not a skip.
func requireServers() bool { return os.Getenv("KMSGATE_REQUIRE_SERVERS") == "1" }

// missing skips the test, or fails it under KMSGATE_REQUIRE_SERVERS=1.
func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	if requireServers() {
		t.Fatalf(format+" (KMSGATE_REQUIRE_SERVERS=1)", args...)
	}
	t.Skipf(format, args...)
}

// repoRoot is the main module's directory, three levels up.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.HasPrefix(b, []byte("module github.com/kmsgate/kmsgate\n")) {
		t.Fatalf("%s is not the kmsgate main module (go.mod: %v)", root, err)
	}
	return root
}

// workDir is a directory removed when the test ends (under
// $KMSGATE_TEST_WORK when scripts/test.sh runs the tests).
func workDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp(os.Getenv("KMSGATE_TEST_WORK"), "browsertest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// builds holds the binaries built by this test process, by module
// directory: each is built once, into a directory removed by TestMain.
var builds struct {
	mu   sync.Mutex
	dir  string
	bins map[string]string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builds.dir != "" {
		os.RemoveAll(builds.dir)
	}
	os.Exit(code)
}

// goBuild builds package pkg of the module in dir (once per test process)
// and returns the binary's path.
func goBuild(t *testing.T, dir, pkg, name string) string {
	t.Helper()
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if bin, ok := builds.bins[dir]; ok {
		return bin
	}
	if builds.dir == "" {
		d, err := os.MkdirTemp(os.Getenv("KMSGATE_TEST_WORK"), "browsertest-bin-")
		if err != nil {
			t.Fatal(err)
		}
		builds.dir, builds.bins = d, map[string]string{}
	}
	bin := filepath.Join(builds.dir, name)
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s in %s: %v\n%s", pkg, dir, err, b)
	}
	builds.bins[dir] = bin
	return bin
}

// freePort returns a free TCP port on 127.0.0.1.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// process is a server started by a test and stopped (SIGTERM, then kill
// after 10 s) when it ends.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

func start(t *testing.T, name string, env []string, bin string, args ...string) *process {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(bin, args...), out: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr, p.cmd.Env = p.out, p.out, env
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
			t.Errorf("%s did not stop within 10 s of SIGTERM", name)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	return p
}

// waitHTTP polls url until it answers 200, failing the test when the
// process exits or 30 s pass.
func (p *process) waitHTTP(t *testing.T, url string) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("%s exited before it answered (%v):\n%s", p.name, err, p.out.String())
		default:
		}
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %s did not answer 200 within 30 s:\n%s", p.name, url, p.out.String())
}

// cleanEnv is the environment without KMSGATE_ variables (each is a flag of
// kmsgate serve), plus extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KMSGATE_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// startProvider starts the test OpenID provider (gateway/signin/testop): the
// binary scripts/test.d/50-oidc.sh built ($KMSGATE_TEST_OP_BIN), or one
// built here. Each test gets its own provider, so its counters
// (/testop/stats) count only that test's sign-ins and logouts.
func startProvider(t *testing.T, dir string, args ...string) string {
	t.Helper()
	bin := os.Getenv("KMSGATE_TEST_OP_BIN")
	if bin == "" {
		bin = goBuild(t, filepath.Join(repoRoot(t), "gateway/signin/testop"), ".", "testop")
	}
	addr := filepath.Join(dir, "testop.addr")
	p := start(t, "testop", cleanEnv(), bin, append([]string{"-listen", "127.0.0.1:0", "-addr-file", addr}, args...)...)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(addr); err == nil && len(b) > 0 {
			issuer := strings.TrimSpace(string(b))
			p.waitHTTP(t, issuer+"/.well-known/openid-configuration")
			return issuer
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("testop exited (%v):\n%s", err, p.out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("testop wrote no address within 30 s:\n%s", p.out.String())
	return ""
}

// gateway is a kmsgate serve process in front of the app.
type gateway struct {
	*process
	// Base is the URL the browser uses: http://localhost:PORT.
	Base string
	// Direct is the same listener by address, for Go clients.
	Direct string
}

// startGateway builds kmsgate from the repository and starts it on a free
// 127.0.0.1 port with browser sign-in at issuer, the app as upstream, the
// config file text config and the extra args.
func startGateway(t *testing.T, dir, issuer, upstream, config string, extra ...string) *gateway {
	t.Helper()
	bin := goBuild(t, repoRoot(t), "./cmd/kmsgate", "kmsgate")
	key := filepath.Join(dir, "signing.pem")
	if out, err := exec.Command(bin, "genkey", "--out", key).CombinedOutput(); err != nil {
		t.Fatalf("kmsgate genkey: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "kmsgate.yaml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	port := freePort(t)
	g := &gateway{Base: fmt.Sprintf("http://localhost:%d", port), Direct: fmt.Sprintf("http://127.0.0.1:%d", port)}
	args := append([]string{"serve",
		"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--admin-listen", "",
		"--issuer", g.Base, "--key", "file://" + key, "--config", cfg,
		"--upstream", upstream,
		"--identity", "oidc-login", "--allow", "any-authenticated",
		"--oidc-issuer", issuer, "--oidc-client-id", "kmsgate",
		"--oidc-client-secret", "env://BROWSERTEST_CLIENT_SECRET",
		"--cookie-secret", "env://BROWSERTEST_COOKIE_SECRET",
	}, extra...)
	g.process = start(t, "kmsgate", cleanEnv(
		"BROWSERTEST_CLIENT_SECRET=kmsgate-test-secret",
		"BROWSERTEST_COOKIE_SECRET="+base64.StdEncoding.EncodeToString(secret),
	), bin, args...)
	g.waitHTTP(t, g.Direct+"/.well-known/jwks.json")
	return g
}

// app is the application behind the gateway: every request must carry a
// valid assertion (checked with jwks/verify); its page shows the verified
// claims. It records what reached it.
type app struct {
	URL string
	mu  sync.Mutex
	log []seen
	srv *http.Server
	ln  net.Listener
}

// seen is one request that reached the app.
type seen struct {
	Path    string
	Claims  *verify.Claims // nil when the assertion was refused
	Headers http.Header
}

func listenApp(t *testing.T) *app {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &app{URL: "http://" + ln.Addr().String(), ln: ln}
	t.Cleanup(func() { ln.Close() })
	return a
}

var appPage = template.Must(template.New("app").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>App</title></head>
<body>
<h1 id="title">Hello, {{.Name}}</h1>
<p>Path: <span id="path">{{.Path}}</span></p>
<dl id="claims">
<dt>sub</dt><dd id="sub">{{.Subject}}</dd>
<dt>email</dt><dd id="email">{{.Email}}</dd>
<dt>name</dt><dd id="name">{{.Name}}</dd>
<dt>groups</dt><dd id="groups">{{.Groups}}</dd>
<dt>iss</dt><dd id="iss">{{.Issuer}}</dd>
<dt>aud</dt><dd id="aud">{{.Audience}}</dd>
</dl>
</body></html>
`))

// serve starts the app with a verifier of the gateway at gatewayBase (its
// issuer and key set); the audience is the app's host name.
func (a *app) serve(t *testing.T, gatewayBase, jwksBase string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	v, err := verify.NewVerifier(ctx, verify.VerifierConfig{
		JWKSURL:  jwksBase + "/.well-known/jwks.json",
		Issuer:   gatewayBase,
		Audience: "127.0.0.1",
	})
	if err != nil {
		t.Fatalf("app verifier: %v", err)
	}
	t.Cleanup(func() { v.Close() })
	a.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, rej := v.CheckRequest(r)
		a.mu.Lock()
		a.log = append(a.log, seen{Path: r.URL.RequestURI(), Claims: c, Headers: r.Header.Clone()})
		a.mu.Unlock()
		if rej != nil {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, "app: assertion refused: %s (%s)\n", rej.Error, rej.Code)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_ = appPage.Execute(w, struct {
			*verify.Claims
			Path   string
			Groups string
		}{c, r.URL.RequestURI(), strings.Join(c.Groups, ",")})
	})}
	go func() { _ = a.srv.Serve(a.ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = a.srv.Shutdown(ctx)
	})
}

// requests returns what reached the app so far.
func (a *app) requests() []seen {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]seen(nil), a.log...)
}
