package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kmsgate/kmsgate/backends/backendtest"
)

var (
	buildOnce sync.Once
	buildDir  string
	binary    string
	buildErr  error
)

// kmsgateBinary builds the command once per test process, when a test first
// needs it (fuzz targets and their workers do not), and returns its path.
func kmsgateBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "kmsgate-cli"); buildErr != nil {
			return
		}
		binary = filepath.Join(buildDir, "kmsgate")
		if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// run runs the binary with a clean KMSGATE_ environment plus env, and returns
// stdout, stderr and the exit code.
func run(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	return runWith(t, env, nil, args...)
}

// runIn is run with stdin.
func runIn(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	return runWith(t, nil, strings.NewReader(stdin), args...)
}

func runWith(t *testing.T, env []string, stdin io.Reader, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(kmsgateBinary(t), args...)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "KMSGATE_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func writeFile(t *testing.T, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func genkey(t *testing.T) string {
	out, errOut, code := run(t, nil, "genkey")
	if code != 0 {
		t.Fatalf("genkey: %d %s", code, errOut)
	}
	return out
}

func TestSignThenVerifyIndependently(t *testing.T) {
	keys := writeFile(t, "keys.pem", genkey(t)+genkey(t))
	uri := "file://" + keys
	tok, errOut, code := run(t, nil, "sign", "--key", uri, "--issuer", "https://gw.example", "--ttl", "2m", "--claims", `{"sub":"alice","aud":"app","groups":["a"]}`)
	if code != 0 {
		t.Fatalf("sign: %d %s", code, errOut)
	}
	doc, errOut, code := run(t, nil, "jwks", "--key", uri)
	if code != 0 {
		t.Fatalf("jwks: %d %s", code, errOut)
	}
	claims := backendtest.VerifyIndependently(t, strings.TrimSpace(tok), []byte(doc))
	if claims["sub"] != "alice" || claims["iss"] != "https://gw.example" {
		t.Fatalf("claims %v", claims)
	}
	if strings.Count(doc, `"kid"`) != 2 {
		t.Fatalf("both PEM keys must be published: %s", doc)
	}
	// kmsgate verify agrees, and refuses a wrong audience.
	jwksFile := writeFile(t, "jwks.json", doc)
	if out, errOut, code := run(t, nil, "verify", "--jwks", jwksFile, "--audience", "app", strings.TrimSpace(tok)); code != 0 || !strings.Contains(out, `"alice"`) {
		t.Fatalf("verify: %d %s %s", code, out, errOut)
	}
	if _, errOut, code := run(t, nil, "verify", "--jwks", jwksFile, "--audience", "nope", strings.TrimSpace(tok)); code != 1 || !strings.Contains(errOut, `aud is ["app"], want "nope"`) {
		t.Fatalf("verify with wrong audience: %d %s", code, errOut)
	}
	if _, errOut, code := run(t, nil, "verify", "--jwks", jwksFile, "--issuer", "https://other.example", strings.TrimSpace(tok)); code != 1 || !strings.Contains(errOut, `iss is "https://gw.example", want "https://other.example"`) {
		t.Fatalf("verify with wrong issuer: %d %s", code, errOut)
	}
	// The token from stdin: "-", or no argument with a pipe.
	for _, args := range [][]string{{"verify", "--jwks", jwksFile, "-"}, {"verify", "--jwks", jwksFile}} {
		if out, errOut, code := runIn(t, tok, args...); code != 0 || !strings.Contains(out, `"alice"`) {
			t.Fatalf("%v with the token on stdin: %d %s %s", args, code, out, errOut)
		}
	}
	if _, errOut, code := runIn(t, "\n", "verify", "--jwks", jwksFile); code != 2 || !strings.Contains(errOut, "no token on stdin") {
		t.Fatalf("verify with nothing on stdin: %d %s", code, errOut)
	}
	// Reserved claims are refused.
	if _, errOut, code := run(t, nil, "sign", "--key", uri, "--claims", `{"sub":"a","aud":"b","exp":1}`); code != 2 || !strings.Contains(errOut, `"exp"`) {
		t.Fatalf("reserved claim: %d %s", code, errOut)
	}
	// sub and aud are required unless asked for.
	if _, errOut, code := run(t, nil, "sign", "--key", uri, "--claims", `{"sub":"a"}`); code != 2 || !strings.Contains(errOut, "--claims has no aud") {
		t.Fatalf("sign without aud: %d %s", code, errOut)
	}
	if _, errOut, code := run(t, nil, "sign", "--key", uri); code != 2 || !strings.Contains(errOut, "--claims has no sub and no aud") {
		t.Fatalf("sign without claims: %d %s", code, errOut)
	}
	if out, errOut, code := run(t, nil, "sign", "--key", uri, "--allow-missing-claims"); code != 0 || !strings.HasPrefix(out, "eyJ") {
		t.Fatalf("sign --allow-missing-claims: %d %s", code, errOut)
	}
}

func TestKeysHexKIDAndEnv(t *testing.T) {
	keys := writeFile(t, "keys.pem", genkey(t))
	out, errOut, code := run(t, []string{"KMSGATE_KEY=file://" + keys, "KMSGATE_KID_FORMAT=hex"}, "keys", "--json")
	if code != 0 {
		t.Fatalf("keys: %d %s", code, errOut)
	}
	if !strings.Contains(out, `"role": "active"`) || !strings.Contains(out, `"backend_id": "sha256:`) {
		t.Fatalf("keys output: %s", out)
	}
	var kid string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, `"kid"`) {
			kid = strings.Trim(strings.SplitN(l, ":", 2)[1], ` ",`)
		}
	}
	if len(kid) != 64 {
		t.Fatalf("KMSGATE_KID_FORMAT=hex gave kid %q", kid)
	}
}

func TestConfigFileAndPrecedence(t *testing.T) {
	k1 := writeFile(t, "k1.pem", genkey(t))
	k2 := writeFile(t, "k2.pem", genkey(t))
	cfg := writeFile(t, "config.yaml", "key:\n  - file://"+k1+"\n  - file://"+k2+"\nkid-format: hex\n")
	out, errOut, code := run(t, nil, "jwks", "--config", cfg)
	if code != 0 || strings.Count(out, `"kid"`) != 2 {
		t.Fatalf("config file: %d %s %s", code, out, errOut)
	}
	// The environment beats the file, the command line beats both.
	out, _, _ = run(t, []string{"KMSGATE_KEY=file://" + k1}, "jwks", "--config", cfg)
	if strings.Count(out, `"kid"`) != 1 {
		t.Fatalf("env did not override the file: %s", out)
	}
	out, _, _ = run(t, []string{"KMSGATE_KID_FORMAT=thumbprint"}, "jwks", "--config", cfg, "--kid-format", "hex")
	if !strings.Contains(out, `"kid":"`) || len(strings.SplitN(strings.SplitN(out, `"kid":"`, 2)[1], `"`, 2)[0]) != 64 {
		t.Fatalf("flag did not override env: %s", out)
	}
	// KMSGATE_CONFIG names the file too.
	if _, errOut, code := run(t, []string{"KMSGATE_CONFIG=" + cfg}, "jwks"); code != 0 {
		t.Fatalf("KMSGATE_CONFIG: %d %s", code, errOut)
	}
	// A typo in the file is an error naming the key, never ignored.
	bad := writeFile(t, "bad.yaml", "kee: file:///x\n")
	if _, errOut, code := run(t, nil, "jwks", "--config", bad); code != 2 || !strings.Contains(errOut, "kee") {
		t.Fatalf("unknown config key: %d %s", code, errOut)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"nosuchcommand"},
		{"keys", "--nosuchflag"},
		{"keys"}, // no --key
		{"keys", "--key", "nosuch://x"},
		{"keys", "--key", "file:///x", "--prepublish", "soon"},
		{"keys", "--key", "file:///x", "--kid-format", "md5"},
		{"verify", "token"}, // no --jwks
		{"version", "extra"},
	} {
		_, errOut, code := run(t, nil, args...)
		if code != 2 || !strings.HasPrefix(errOut, "kmsgate: ") {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, errOut)
		}
	}
	if _, errOut, code := run(t, []string{"KMSGATE_PREPUBLISH=later"}, "keys", "--key", "file:///x"); code != 2 || !strings.Contains(errOut, "KMSGATE_PREPUBLISH") {
		t.Errorf("bad env value: %d %s", code, errOut)
	}
}

func TestBadKeysRefused(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	p384der, _ := x509.MarshalECPrivateKey(p384)
	rsader, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	good := genkey(t)
	gooddec, _ := pem.Decode([]byte(good))
	//lint:ignore SA1019 legacy encrypted PEM is exactly what must be refused
	enc, _ := x509.EncryptPEMBlock(rand.Reader, "EC PRIVATE KEY", gooddec.Bytes, []byte("pw"), x509.PEMCipherAES128) //nolint:staticcheck
	for name, c := range map[string]struct{ data, want string }{
		"RSA":        {string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsader})), "key 1: wrong key type: RSA key, want EC P-256"},
		"P-384":      {string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: p384der})), "key 1: wrong key type: EC curve P-384, want P-256"},
		"encrypted":  {string(pem.EncodeToMemory(enc)), "key 1: EC PRIVATE KEY is encrypted"},
		"empty":      {"", "the input is empty"},
		"garbage":    {"definitely not a key", "not PEM, and not base64 of PEM"},
		"second bad": {good + string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsader})), "key 2: wrong key type: RSA key"},
	} {
		path := writeFile(t, "bad.pem", c.data)
		for _, args := range [][]string{{"keys", "--key", "file://" + path}, {"sign", "--key", "env://BAD_KEY", "--allow-missing-claims"}} {
			_, errOut, code := run(t, []string{"BAD_KEY=" + c.data}, args...)
			if code != 1 || !strings.Contains(errOut, c.want) {
				t.Errorf("%s via %v: exit %d, stderr %q; want 1 and %q", name, args[2], code, errOut, c.want)
			}
			if strings.Contains(errOut, "PRIVATE KEY-----") {
				t.Errorf("%s: key material in the error", name)
			}
		}
	}
}

func TestVersionAndGenkey(t *testing.T) {
	out, _, code := run(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "kmsgate ") {
		t.Fatalf("version: %d %q", code, out)
	}
	if flag, _, code := run(t, nil, "--version"); code != 0 || flag != out {
		t.Errorf("--version: %d %q, want %q", code, flag, out)
	}
	out, _, code = run(t, nil, "genkey", "--base64")
	dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(out))
	if code != 0 || err != nil || !strings.HasPrefix(string(dec), "-----BEGIN EC PRIVATE KEY-----") {
		t.Fatalf("genkey --base64: %d %v", code, err)
	}
}
