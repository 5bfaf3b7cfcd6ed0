package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends/backendtest"
)

// TestServeEndToEnd starts the built binary, signs through POST /v1/sign and
// verifies the token against the served JWKS with an independent library.
func TestServeEndToEnd(t *testing.T) {
	keys := writeFile(t, "keys.pem", genkey(t)+genkey(t))
	g := backendtest.StartGateway(t, "", "--key", "file://"+keys, "--jwks-path", "/.well-known/pomerium/jwks.json")
	status, out := g.Sign(t, `{"sub":"alice","aud":"app","email":"alice@example.com"}`)
	if status != 200 {
		t.Fatalf("sign: %d %v", status, out)
	}
	claims := backendtest.VerifyIndependently(t, out["token"].(string), g.JWKS(t))
	if claims["sub"] != "alice" || claims["iss"] != g.URL || claims["email"] != "alice@example.com" {
		t.Fatalf("claims %v", claims)
	}
	resp, err := http.Get(g.URL + "/.well-known/pomerium/jwks.json")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("alias path: %v %v", resp, err)
	}
	resp.Body.Close()
	// Metrics and health are on the admin port only.
	for url, want := range map[string]int{
		g.AdminURL + "/metrics": 200, g.AdminURL + "/healthz": 200, g.AdminURL + "/readyz": 200, g.AdminURL + "/debug/pprof/": 404,
		g.URL + "/metrics": 404, g.URL + "/healthz": 404, g.URL + "/readyz": 404,
	} {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", url, resp.StatusCode, want)
		}
		if strings.HasSuffix(url, "/metrics") && want == 200 && (!strings.Contains(string(body), "kmsgate_keys_ready 1") || !strings.Contains(string(body), "kmsgate_build_info{")) {
			t.Errorf("admin metrics lack kmsgate_keys_ready 1 or kmsgate_build_info")
		}
	}
	// SIGTERM: a clean exit, and no token or key in the logs.
	if err := g.Stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, g.Logs())
	}
	logs := g.Logs()
	if strings.Contains(logs, out["token"].(string)[:40]) || strings.Contains(logs, g.Token) || strings.Contains(logs, "PRIVATE") {
		t.Fatalf("a secret reached the logs:\n%s", logs)
	}
	if !strings.Contains(logs, `"msg":"listening"`) {
		t.Fatalf("logs are not JSON lines from slog:\n%s", logs)
	}
}

func TestServeRefusesAtStart(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	bad := writeFile(t, "rsa.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	good := writeFile(t, "good.pem", genkey(t))
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"serve", "--key", "file://" + bad, "--issuer", "http://x.example", "--listen", "127.0.0.1:0"}, 1, "key 1: wrong key type: RSA key"},
		{[]string{"serve", "--key", "file://" + good, "--listen", "127.0.0.1:0"}, 2, "--issuer (KMSGATE_ISSUER, config issuer) is required"},
		{[]string{"serve", "--key", "file://" + good, "--issuer", "x.example", "--listen", "127.0.0.1:0"}, 2, "http:// or https://"},
		{[]string{"serve", "--key", "file://" + good, "--issuer", "http://x.example", "--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent"}, 2, "--tls-cert and --tls-key go together"},
		{[]string{"serve", "--key", "file://" + good, "--issuer", "http://x.example", "--listen", "127.0.0.1:0", "--escaped-slashes", "decode"}, 2, `--escaped-slashes "decode": want reject or keep`},
		{[]string{"serve", "--key", "file://" + good, "--issuer", "http://x.example", "--listen", "127.0.0.1:0", "--admin-listen", "", "--pprof"}, 2, "--pprof needs the admin port"},
		{[]string{"serve", "--key", "file://" + good, "--issuer", "http://x.example", "--listen", "127.0.0.1:0", "--gateway-prefix", "kmsgate/"}, 2, "--gateway-prefix"},
	} {
		_, errOut, code := run(t, nil, c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, code, errOut, c.code, c.want)
		}
	}
	// Every problem at once, in the user's words, with the hint at --dev
	// and the subcommand's help.
	_, errOut, code := run(t, nil, "serve", "--listen", "127.0.0.1:0", "--identity", "client-cert", "--escaped-slashes", "x", "--trusted-proxy", "nonsense")
	for _, want := range []string{"5 problems with the configuration", "--issuer (KMSGATE_ISSUER, config issuer) is required", "--key (KMSGATE_KEY, config key) is required",
		`--escaped-slashes "x"`, `--trusted-proxy "nonsense"`, "identity client-cert (--identity) needs TLS that asks for client certificates", "kmsgate serve --dev", "Run 'kmsgate serve --help'"} {
		if code != 2 || !strings.Contains(errOut, want) {
			t.Errorf("several problems: exit %d, stderr lacks %q:\n%s", code, want, errOut)
		}
	}
}

// testPKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate with subject CN=batch,O=Example.
type testPKI struct {
	caFile, certFile, keyFile string
	roots                     *x509.CertPool
	client                    tls.Certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kmsgate test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(tmpl *x509.Certificate) ([]byte, *ecdsa.PrivateKey) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	srvDER, srvKey := issue(&x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	cliDER, cliKey := issue(&x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "batch", Organization: []string{"Example"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	p := &testPKI{caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "srv.pem"), keyFile: filepath.Join(dir, "srv.key"), roots: x509.NewCertPool()}
	p.roots.AddCert(ca)
	write := func(path, typ string, der []byte) {
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(p.caFile, "CERTIFICATE", caDER)
	write(p.certFile, "CERTIFICATE", srvDER)
	kd, _ := x509.MarshalECPrivateKey(srvKey)
	write(p.keyFile, "EC PRIVATE KEY", kd)
	ckd, _ := x509.MarshalECPrivateKey(cliKey)
	p.client, err = tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cliDER}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ckd}))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestServeTLSAndClientCertificates(t *testing.T) {
	pki := newTestPKI(t)
	keys := writeFile(t, "keys.pem", genkey(t))
	extra := "  - name: batch\n    cert-subject: CN=batch,O=Example\n    audiences: [reports]\n    subjects: [batch]\n    max-ttl: 5m\n"
	g := backendtest.StartGatewayNoWait(t, extra, "--key", "file://"+keys, "--tls-cert", pki.certFile, "--tls-key", pki.keyFile, "--tls-client-ca", pki.caFile)
	g.UseTLS(&tls.Config{RootCAs: pki.roots})
	g.WaitReady(t, 30*time.Second)

	// A bearer-token client works over TLS without a certificate.
	if status, out := g.Sign(t, `{"sub":"x","aud":"y"}`); status != 200 {
		t.Fatalf("bearer over TLS: %d %v", status, out)
	}
	// The certificate client: no token, its policy applies.
	certClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.roots, Certificates: []tls.Certificate{pki.client}}}}
	post := func(c *http.Client, body string) int {
		resp, err := c.Post(g.URL+"/v1/sign", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := post(certClient, `{"claims":{"sub":"batch","aud":"reports"}}`); s != 200 {
		t.Fatalf("client certificate: %d", s)
	}
	if s := post(certClient, `{"claims":{"sub":"batch","aud":"billing"}}`); s != 403 {
		t.Fatalf("client certificate outside its policy: %d", s)
	}
	noCert := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.roots}}}
	if s := post(noCert, `{"claims":{"sub":"batch","aud":"reports"}}`); s != 401 {
		t.Fatalf("no certificate, no token: %d", s)
	}
}

// TestServeDevIssuer: --dev without --issuer names the address it actually
// listens on, so the printed curl and verify lines work with port 0 too.
func TestServeDevIssuer(t *testing.T) {
	cmd := exec.Command(kmsgateBinary(t), "serve", "--dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var jwksURL string
	for jwksURL == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("kmsgate serve --dev exited before printing its JWKS URL")
			}
			if f := strings.Fields(l); len(f) == 2 && f[0] == "JWKS:" {
				jwksURL = f[1]
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no JWKS URL printed within 30 s")
		}
	}
	go func() {
		for range lines {
		}
	}()
	base := strings.TrimSuffix(jwksURL, "/.well-known/jwks.json")
	if strings.HasSuffix(base, ":0") || !strings.HasPrefix(base, "http://127.0.0.1:") {
		t.Fatalf("printed JWKS URL %q does not name the port listened on", jwksURL)
	}
	resp, err := http.Get(base + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&raw)
	resp.Body.Close()
	if raw["issuer"] != base || raw["jwks_uri"] != jwksURL {
		t.Fatalf("discovery %v, want issuer %s", raw, base)
	}
}

// TestServeAuditLogFile: --audit-log FILE gets one JSON line per token
// signed, owner-readable only, matched to the token by jti.
func TestServeAuditLogFile(t *testing.T) {
	keys := writeFile(t, "keys.pem", genkey(t))
	trail := filepath.Join(t.TempDir(), "audit.log")
	g := backendtest.StartGateway(t, "", "--key", "file://"+keys, "--audit-log", trail)
	status, out := g.Sign(t, `{"sub":"alice","aud":"app"}`)
	if status != 200 {
		t.Fatalf("sign: %d %v", status, out)
	}
	claims := backendtest.VerifyIndependently(t, out["token"].(string), g.JWKS(t))
	if err := g.Stop(t); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(trail)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("audit log mode %v, want 0600", st.Mode().Perm())
	}
	b, _ := os.ReadFile(trail)
	var rec map[string]any
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("audit log %q: %v", b, err)
	}
	if rec["jti"] != claims["jti"] || rec["client"] != "e2e" || rec["kind"] != "sign" || strings.Contains(string(b), "eyJ") {
		t.Errorf("audit record %s for token claims %v", b, claims)
	}
	if _, errOut, code := run(t, nil, "serve", "--key", "file://"+keys, "--issuer", "http://x.example", "--listen", "127.0.0.1:0",
		"--audit-log", trail, "--audit-log-max-size", "0"); code != 2 || !strings.Contains(errOut, "--audit-log") {
		t.Errorf("--audit-log-max-size 0: exit %d, %s", code, errOut)
	}
}

// TestServeLogs: at info, a two-URI serve logs each URI loaded, readiness,
// the signing key and why it changes, one start-up summary, and one line
// per request with the client address and who it was for, never a token.
func TestServeLogs(t *testing.T) {
	first := writeFile(t, "first.pem", genkey(t))
	second := writeFile(t, "second.pem", genkey(t))
	g := backendtest.StartGateway(t, "", "--key", "file://"+first, "--key", "file://"+second, "--refresh", "100ms")
	status, out := g.Sign(t, `{"sub":"alice","aud":"app"}`)
	if status != 200 {
		t.Fatalf("sign: %d %v", status, out)
	}
	oldKID := out["kid"].(string)
	// A new key replaces the first URI's: the signing key changes at the
	// next refresh, and says why.
	if err := os.WriteFile(first, []byte(genkey(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(g.Logs(), `"msg":"signing key changed","old_kid":"`+oldKID) {
		if time.Now().After(deadline) {
			t.Fatalf("no signing key change logged:\n%s", g.Logs())
		}
		time.Sleep(50 * time.Millisecond) // polling the process's output, bounded by the deadline
	}
	logs := g.Logs()
	for _, want := range []string{
		`"msg":"key URI loaded","uri":"file://` + first + `","backend":"pem","versions":1,"usable":1`,
		`"msg":"key URI loaded","uri":"file://` + second + `"`,
		`"msg":"ready: every key URI has loaded","uris":2,"published":2`,
		`"msg":"signing key changed","old_kid":"","new_kid":"` + oldKID + `","reason":"keys loaded"`,
		`"msg":"listening"`, `"key_uris":["file://` + first + `","file://` + second + `"]`, `"active_kid":"` + oldKID + `"`,
		`"msg":"request","method":"POST","endpoint":"/v1/sign","status":200`, `"remote":"127.0.0.1","client":"e2e"`,
		`"reason":"the signing version is no longer usable (disabled, destroyed or removed)"`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s", want)
		}
	}
	if strings.Contains(logs, out["token"].(string)[:40]) || strings.Contains(logs, g.Token) {
		t.Error("a token reached the logs")
	}
}

// TestServePolicyConfig: a mistake in a policy stops the start with the
// route and the rule it is in; --allow takes only any-authenticated, and
// not beside a config-file policy; a route without any policy is refused.
func TestServePolicyConfig(t *testing.T) {
	key := writeFile(t, "k.pem", genkey(t))
	base := "issuer: http://gw.example\nkey: [\"file://" + key + "\"]\nlisten: 127.0.0.1:0\nadmin-listen: \"\"\nidentity: headers\ntrusted-proxy: [127.0.0.1]\n"
	for name, c := range map[string]struct {
		yaml string
		args []string
		want string
	}{
		"typo in a rule": {base + "routes:\n  - name: wiki\n    upstream: http://127.0.0.1:1\n    policy:\n      allow:\n        or:\n          - domain: {is: example.com}\n          - grups: {has: admins}\n", nil,
			`route "wiki": policy: allow.or[2].grups (line 14): unknown rule "grups"`},
		"no policy": {base + "routes:\n  - path: /api/\n    upstream: http://127.0.0.1:1\n", nil,
			`route 1 (host "", path "/api/"): no policy`},
		"bad default": {base + "upstream: http://127.0.0.1:1\npolicy:\n  allow: {email: {is: nobody}}\n", nil,
			`default policy: allow.email.is (line 9): "nobody" is not an email address`},
		"bad claim header": {base + "allow: any-authenticated\nroutes:\n  - upstream: http://127.0.0.1:1\n    claim-headers: {email: X-Forwarded-Email}\n", nil,
			"X-Forwarded-Email is a header the proxy already governs"},
		"unknown claim": {base + "allow: any-authenticated\nroutes:\n  - upstream: http://127.0.0.1:1\n    claim-headers: {phone: X-Phone}\n", nil,
			`unknown claim "phone"`},
		"bad groups filter": {base + "allow: any-authenticated\nroutes:\n  - upstream: http://127.0.0.1:1\n    groups-filter: \"team-(\"\n", nil,
			`groups-filter "team-("`},
		"bad --allow": {base + "upstream: http://127.0.0.1:1\n", []string{"--allow", "everyone"},
			`--allow "everyone": want any-authenticated`},
		"both defaults": {base + "upstream: http://127.0.0.1:1\npolicy: {allow: any-authenticated}\n", []string{"--allow", "any-authenticated"},
			"--allow and the config file's policy: both set the default policy"},
	} {
		path := writeFile(t, "policy.yaml", c.yaml)
		_, errOut, code := run(t, nil, append([]string{"serve", "--config", path}, c.args...)...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want 2 and %q", name, code, errOut, c.want)
		}
	}
}
