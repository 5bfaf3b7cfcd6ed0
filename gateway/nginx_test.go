package gateway_test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/gateway"
)

// TestNginxAuthRequest runs deploy/forward-auth/nginx.conf in a real nginx
// (Debian package; scripts/test.d/10-nginx.sh installs it and sets
// KMSGATE_TEST_NGINX) in front of an app, with kmsgate's /v1/auth verifying
// OIDC bearer tokens from a local issuer, and judging them by the policy of
// the route the original request matches.
func TestNginxAuthRequest(t *testing.T) {
	nginx := backendtest.Require(t, "KMSGATE_TEST_NGINX")
	iss := newOIDCIssuer(t)
	app := newUpstream(t, nil)
	e := newProxyEnv(t, gateway.ProxyConfig{Identity: gateway.SourceOIDC, OIDCIssuer: iss.URL, OIDCAudience: "kmsgate-app", Policy: anyone,
		Routes: []gateway.Route{{Host: "app.example", Path: "/admin/", Upstream: "http://unused.invalid", Policy: gateway.MustParsePolicy("allow: {groups: {has: admins}}"),
			ClaimHeaders: map[string]string{"email": "X-Kmsgate-Claim-Email"}}}})

	snippet, err := os.ReadFile("../deploy/forward-auth/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	port := backendtest.FreePort(t)
	conf := strings.NewReplacer(
		"kmsgate.internal:8080", e.addr,
		"app.internal:9000", strings.TrimPrefix(app.URL, "http://"),
		"listen 80;", fmt.Sprintf("listen 127.0.0.1:%d;", port),
	).Replace(string(snippet))
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	main := fmt.Sprintf(`pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
worker_processes 1;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path %[1]s/body; proxy_temp_path %[1]s/proxy; fastcgi_temp_path %[1]s/fcgi;
  uwsgi_temp_path %[1]s/uwsgi; scgi_temp_path %[1]s/scgi;
%[2]s
}
`, dir, conf)
	cfg := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nginx, "-c", cfg, "-p", dir, "-g", "daemon off;")
	out := &backendtest.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// SIGTERM lets the master stop its workers; SIGKILL would orphan them
	// with the output pipe open. WaitDelay bounds the wait regardless.
	cmd.WaitDelay = 5 * time.Second
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if i > 100 {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx did not start: %s %s", out.String(), log)
		}
		time.Sleep(50 * time.Millisecond)
	}

	now := time.Now()
	claims := map[string]any{"iss": iss.URL, "aud": "kmsgate-app", "sub": "u-1", "email": "dana@example.com", "groups": []string{"ops"},
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	good := iss.token(t, jose.RS256, iss.key, claims)

	// A good token passes; forged assertions in any spelling are replaced.
	status := raw(t, addr, "GET /page HTTP/1.1\r\nHost: app.example\r\nAuthorization: Bearer "+good+"\r\n"+
		"X-Kmsgate-Jwt-Assertion: forged-1\r\nx-kmsgate-jwt-assertion: forged-2\r\nX_Kmsgate_Jwt_Assertion: forged-3\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(status, "200") {
		log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		t.Fatalf("good token through nginx: %s\n%s", status, log)
	}
	r := app.last(t)
	for k, v := range r.Header {
		if strings.Contains(strings.Join(v, ","), "forged") {
			t.Fatalf("forged assertion reached the app in %s", k)
		}
	}
	if r.Header.Get("Authorization") != "" {
		t.Fatal("the user's token reached the app")
	}
	c := assertionOf(t, e, r, gateway.DefaultAssertionHeader)
	if c["sub"] != "u-1" || c["email"] != "dana@example.com" || c["aud"].([]string)[0] != "app.example" {
		t.Fatalf("claims %v", c)
	}

	// No token, or a bad one: nginx answers kmsgate's 401 and the app sees nothing.
	before := app.count()
	for name, hdr := range map[string]string{
		"no token":    "",
		"bad token":   "Authorization: Bearer garbage\r\n",
		"forged only": "X-Kmsgate-Jwt-Assertion: forged\r\n",
	} {
		if st := raw(t, addr, "GET / HTTP/1.1\r\nHost: app.example\r\n"+hdr+"Connection: close\r\n\r\n"); !strings.HasPrefix(st, "401") {
			t.Errorf("%s: %s", name, st)
		}
	}
	if app.count() != before {
		t.Fatal("an unauthenticated request reached the app")
	}
	// The admin route's policy: dana (ops) is refused there, before any
	// signature; erin (admins) passes with her email as a claim header,
	// whatever the client sent in its place.
	signs := e.fake.Signs.Load()
	if st := raw(t, addr, "GET /admin/x HTTP/1.1\r\nHost: app.example\r\nAuthorization: Bearer "+good+"\r\nConnection: close\r\n\r\n"); !strings.HasPrefix(st, "403") {
		t.Errorf("dana on the admin route: %s", st)
	}
	if app.count() != before || e.fake.Signs.Load() != signs {
		t.Fatal("a request the policy refused reached the app or was signed for")
	}
	claims["sub"], claims["email"], claims["groups"] = "u-2", "erin@example.com", []string{"admins"}
	admin := iss.token(t, jose.RS256, iss.key, claims)
	st := raw(t, addr, "GET /admin/x HTTP/1.1\r\nHost: app.example\r\nAuthorization: Bearer "+admin+"\r\nX-Kmsgate-Claim-Email: root@example.com\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(st, "200") || app.count() != before+1 {
		t.Fatalf("erin on the admin route: %s", st)
	}
	if got := app.last(t).Header.Values("X-Kmsgate-Claim-Email"); len(got) != 1 || got[0] != "erin@example.com" {
		t.Errorf("claim header through nginx %q", got)
	}
	if c := assertionOf(t, e, app.last(t), gateway.DefaultAssertionHeader); c["sub"] != "u-2" {
		t.Errorf("claims %v", c)
	}
	if _, err := http.Get("http://" + addr + "/_kmsgate_auth"); err != nil {
		t.Fatal(err)
	}
}
