package backendtest

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
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
)

// BuildTags are the build tags Binary builds ./cmd/kmsgate with. A test
// package whose backend is compiled only with a tag (pkcs11) sets them in
// its TestMain, before the first Binary call.
var BuildTags []string

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds ./cmd/kmsgate (with BuildTags) once per test process and
// returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		// The main module's directory, also from a nested test module that
		// replaces it with this repository.
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/kmsgate/kmsgate").Output()
		if err != nil {
			buildErr = fmt.Errorf("go list -m github.com/kmsgate/kmsgate: %w", err)
			return
		}
		root := strings.TrimSpace(string(out))
		// Under scripts/test.sh the binary goes into its work directory,
		// which is removed at the end of the run.
		dir, err := os.MkdirTemp(os.Getenv("KMSGATE_TEST_WORK"), "kmsgate-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "kmsgate")
		args := []string{"build", "-o", binPath}
		if len(BuildTags) > 0 {
			args = append(args, "-tags", strings.Join(BuildTags, ","))
		}
		cmd := exec.Command("go", append(args, "./cmd/kmsgate")...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/kmsgate: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Gateway is a `kmsgate serve` process started by a test.
type Gateway struct {
	// URL is the base URL, http://127.0.0.1:PORT (https with TLS).
	URL string
	// AdminURL is the admin port's base URL (/metrics, /healthz, /readyz).
	AdminURL string
	// Token is the bearer token of the client "e2e" (any audience and
	// subject, max-ttl 1h) that StartGateway puts in the config.
	Token string
	// Client talks to the gateway (with TLS settings when given).
	Client *http.Client
	cmd    *exec.Cmd
	stderr *SyncBuffer
	done   chan error
}

type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *SyncBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *SyncBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// StartGateway runs `kmsgate serve` on a free 127.0.0.1 port (and its admin
// port on another) with the given
// extra arguments (--key …) and a config file holding one sign API client,
// waits until /readyz answers 200 (at most 30 s), and stops it with SIGTERM
// when the test ends. Extra config YAML may be appended with extraConfig.
func StartGateway(t testing.TB, extraConfig string, args ...string) *Gateway {
	t.Helper()
	g := StartGatewayNoWait(t, extraConfig, args...)
	g.WaitReady(t, 30*time.Second)
	return g
}

// StartGatewayNoWait is StartGateway without waiting for readiness.
func StartGatewayNoWait(t testing.TB, extraConfig string, args ...string) *Gateway {
	t.Helper()
	port := FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	token := fmt.Sprintf("e2e-token-%d-%d", port, time.Now().UnixNano())
	sum := sha256.Sum256([]byte(token))
	cfg := filepath.Join(t.TempDir(), "kmsgate.yaml")
	conf := fmt.Sprintf("clients:\n  - name: e2e\n    token-sha256: %s\n    audiences: [\"*\"]\n    subjects: [\"*\"]\n    max-ttl: 1h\n    claims: [\"*\"]\n%s", hex.EncodeToString(sum[:]), extraConfig)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	admin := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	full := append([]string{"serve", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--admin-listen", admin, "--issuer", base, "--config", cfg}, args...)
	g := &Gateway{URL: base, AdminURL: "http://" + admin, Token: token, Client: &http.Client{Timeout: 30 * time.Second}, stderr: &SyncBuffer{}, done: make(chan error, 1)}
	for _, a := range args {
		if a == "--tls-cert" {
			g.URL = strings.Replace(base, "http://", "https://", 1)
		}
	}
	g.cmd = exec.Command(Binary(t), full...)
	g.cmd.Stderr = g.stderr
	g.cmd.Stdout = g.stderr
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.done <- g.cmd.Wait() }()
	t.Cleanup(func() { g.Stop(t) })
	return g
}

// WaitReady polls the admin port's /readyz until 200; it fails the test if the process exits
// or the time runs out.
func (g *Gateway) WaitReady(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		select {
		case err := <-g.done:
			g.done <- err
			t.Fatalf("kmsgate serve exited before it was ready (%v):\n%s", err, g.stderr.String())
		default:
		}
		resp, err := g.Client.Get(g.AdminURL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("kmsgate serve not ready after %s:\n%s", within, g.stderr.String())
}

// Logs returns what the process wrote so far.
func (g *Gateway) Logs() string { return g.stderr.String() }

// Stop sends SIGTERM and waits up to 10 s for the process to exit; it
// returns the exit error (nil for a clean exit).
func (g *Gateway) Stop(t testing.TB) error {
	if g.cmd.ProcessState != nil {
		return nil
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-g.done:
		g.done <- err
		return err
	case <-time.After(10 * time.Second):
		_ = g.cmd.Process.Kill()
		t.Errorf("kmsgate serve did not exit within 10 s of SIGTERM")
		return fmt.Errorf("killed")
	}
}

// Sign posts claims (a JSON object) to /v1/sign with the e2e client's token
// and returns the status and the decoded answer.
func (g *Gateway) Sign(t testing.TB, claimsJSON string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest("POST", g.URL+"/v1/sign", strings.NewReader(`{"claims":`+claimsJSON+`}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+g.Token)
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]any{}
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("sign answer %d is not JSON: %q", resp.StatusCode, body)
	}
	return resp.StatusCode, out
}

// JWKS fetches the served key set.
func (g *Gateway) JWKS(t testing.TB) []byte {
	t.Helper()
	resp, err := g.Client.Get(g.URL + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("JWKS: %d %s", resp.StatusCode, b)
	}
	return b
}

// UseTLS makes the gateway's client trust roots and present cert.
func (g *Gateway) UseTLS(cfg *tls.Config) {
	g.Client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}
