// Package deploytest checks what is under deploy/: the Kubernetes manifests
// render and decode strictly into the k8s.io/api types with the properties a
// production deployment needs, the Dockerfile builds the release binary with
// the same command as `make build`, and the compose demo works end to end
// (nginx, kmsgate and the demo app, run as local processes).
//
// It is a separate Go module so that k8s.io/api stays out of kmsgate's
// go.mod; scripts/test.d/45-deploy.sh registers it.
package deploytest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// root is the repository root.
var root = func() string {
	abs, err := filepath.Abs("../..")
	if err != nil {
		panic(err)
	}
	return abs
}()

// binDir holds the binaries built once for all tests.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kmsgate-deploytest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTool returns the path of a tool the test needs: from env when that
// variable is set, else from PATH. Without it the test skips, unless
// KMSGATE_REQUIRE_SERVERS is set (scripts/test.sh), where it fails.
func requireTool(t *testing.T, name, env string) string {
	t.Helper()
	if env != "" {
		if p := os.Getenv(env); p != "" {
			return p
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("KMSGATE_REQUIRE_SERVERS") != "" {
			t.Fatalf("%s is not installed and KMSGATE_REQUIRE_SERVERS is set", name)
		}
		t.Skipf("%s is not installed", name)
	}
	return p
}

var (
	buildOnce sync.Once
	buildErr  error
	kmsgate   string // the release binary, built with the Dockerfile's command
	demoApp   string
)

// binaries builds kmsgate with the Dockerfile's release build command and
// the compose demo's app, once.
func binaries(t *testing.T) (string, string) {
	t.Helper()
	buildOnce.Do(func() {
		cmd, err := dockerfileBuildCommand(filepath.Join(root, "deploy", "Dockerfile"), "build")
		if err != nil {
			buildErr = err
			return
		}
		kmsgate = filepath.Join(binDir, "kmsgate")
		if buildErr = runBuild(cmd, kmsgate); buildErr != nil {
			return
		}
		demoApp = filepath.Join(binDir, "demo-app")
		c := exec.Command("go", "build", "-trimpath", "-o", demoApp, "./deploy/compose/app")
		c.Dir = root
		c.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := c.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./deploy/compose/app: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return kmsgate, demoApp
}

// freeAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// syncBuffer collects a process's output for failure messages.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// process is a started command that is stopped when the test ends.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// start runs a command until the test ends, then sends SIGTERM and waits
// (at most 10 s before SIGKILL).
func start(t *testing.T, name string, env []string, bin string, args ...string) *process {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(bin, args...), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, redact(p.out.String()))
		}
	})
	return p
}

// devToken matches the client token `kmsgate serve --dev` prints.
var devToken = regexp.MustCompile(`dev-[A-Za-z0-9_-]{16,}`)

// redact hides tokens in process output before it is logged.
func redact(s string) string { return devToken.ReplaceAllString(s, "dev-REDACTED") }

// waitHTTP polls url for up to 30 s until it answers with status want.
func (p *process) waitHTTP(t *testing.T, url string, want int) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-p.done:
			t.Fatalf("%s exited before %s answered %d:\n%s", p.name, url, want, redact(p.out.String()))
		default:
		}
		resp, err := client.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s did not answer %d within 30 s (last: %v)\n%s", p.name, url, want, err, redact(p.out.String()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// httpGet fetches url once (10 s timeout) and returns the status and up to
// 1 MiB of the body.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// genkey writes a new P-256 PEM key with `kmsgate genkey` and returns its
// file:// URI.
func genkey(t *testing.T, bin string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "genkey").Output()
	if err != nil {
		t.Fatalf("kmsgate genkey: %v", err)
	}
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return "file://" + path
}

// cleanEnv is the environment without KMSGATE_ variables, so that nothing
// from the caller's shell changes the gateway's configuration.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KMSGATE_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}
