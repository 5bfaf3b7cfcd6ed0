package deploytest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// composeFile is the part of deploy/compose/compose.yaml the tests read.
type composeFile struct {
	Services map[string]composeService `json:"services"`
	Networks map[string]struct {
		IPAM struct {
			Config []struct {
				Subnet string `json:"subnet"`
			} `json:"config"`
		} `json:"ipam"`
	} `json:"networks"`
}

type composeService struct {
	Image string `json:"image"`
	Build *struct {
		Context    string `json:"context"`
		Dockerfile string `json:"dockerfile"`
		Target     string `json:"target"`
	} `json:"build"`
	Command     []string          `json:"command"`
	Environment map[string]string `json:"environment"`
	Volumes     []string          `json:"volumes"`
	Networks    any               `json:"networks"`
	Ports       []any             `json:"ports"`
	Healthcheck *struct {
		Test any `json:"test"`
	} `json:"healthcheck"`
}

// demoConfig is the part of deploy/compose/config.yaml the tests read.
type demoConfig struct {
	Issuer       string   `json:"issuer"`
	Listen       string   `json:"listen"`
	AdminListen  string   `json:"admin-listen"`
	Upstream     string   `json:"upstream"`
	Identity     string   `json:"identity"`
	TrustedProxy []string `json:"trusted-proxy"`
}

func readYAML(t *testing.T, path string, v any) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return data
}

// TestComposeFilesAgree checks the wiring between the compose file, the
// gateway's config and the Dockerfile, which Docker would only reveal at run
// time: the proxy's fixed address is the one trusted, the app verifies
// against the gateway's issuer and JWKS with the audience the gateway signs
// for, and the build targets and mounted files exist.
func TestComposeFilesAgree(t *testing.T) {
	dir := filepath.Join(root, "deploy", "compose")
	var cf composeFile
	readYAML(t, filepath.Join(dir, "compose.yaml"), &cf)
	var cfg demoConfig
	readYAML(t, filepath.Join(dir, "config.yaml"), &cfg)

	proxy, gw, app := cf.Services["proxy"], cf.Services["kmsgate"], cf.Services["app"]
	if gw.Build == nil || app.Build == nil || proxy.Image == "" {
		t.Fatalf("services: want proxy (an image), kmsgate and app (built); got %v", cf.Services)
	}
	ins, err := parseDockerfile(filepath.Join(root, "deploy", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]composeService{"kmsgate": gw, "app": app} {
		if filepath.Join(dir, s.Build.Context, s.Build.Dockerfile) != filepath.Join(root, "deploy", "Dockerfile") {
			t.Errorf("%s builds %s in %s, want deploy/Dockerfile from the repository root", name, s.Build.Dockerfile, s.Build.Context)
		}
		var ok bool
		for _, in := range ins {
			ok = ok || (in.op == "FROM" && strings.HasSuffix(strings.ToLower(in.args), " as "+s.Build.Target))
		}
		if !ok {
			t.Errorf("%s builds target %q, which deploy/Dockerfile does not have", name, s.Build.Target)
		}
	}
	for name, s := range cf.Services {
		for _, v := range s.Volumes {
			src := strings.Split(v, ":")[0]
			if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
				t.Errorf("%s mounts %s: %v", name, src, err)
			}
		}
	}

	// The proxy's fixed address is in the demo network and trusted by kmsgate.
	nets, _ := proxy.Networks.(map[string]any)
	var proxyIP net.IP
	for _, n := range nets {
		if m, ok := n.(map[string]any); ok {
			proxyIP = net.ParseIP(fmt.Sprint(m["ipv4_address"]))
		}
	}
	if proxyIP == nil {
		t.Fatal("the proxy has no fixed ipv4_address, so kmsgate cannot trust it alone")
	}
	var inSubnet, trusted bool
	for _, n := range cf.Networks {
		for _, c := range n.IPAM.Config {
			if _, sub, err := net.ParseCIDR(c.Subnet); err == nil && sub.Contains(proxyIP) {
				inSubnet = true
			}
		}
	}
	for _, c := range cfg.TrustedProxy {
		_, sub, err := net.ParseCIDR(c)
		if err != nil {
			t.Fatalf("trusted-proxy %q: %v", c, err)
		}
		if ones, bits := sub.Mask.Size(); ones != bits {
			t.Errorf("trusted-proxy %s: trust the proxy's address alone (/32)", c)
		}
		trusted = trusted || sub.Contains(proxyIP)
	}
	if !inSubnet || !trusted || cfg.Identity != "headers" {
		t.Errorf("proxy %s: in the demo subnet %v, trusted %v, identity %q (want headers)", proxyIP, inSubnet, trusted, cfg.Identity)
	}

	// The app verifies what kmsgate signs.
	up, err := url.Parse(cfg.Upstream)
	if err != nil {
		t.Fatal(err)
	}
	if app.Environment["APP_AUDIENCE"] != up.Hostname() {
		t.Errorf("APP_AUDIENCE %q, but kmsgate signs aud = the upstream host name %q", app.Environment["APP_AUDIENCE"], up.Hostname())
	}
	if app.Environment["KMSGATE_ISSUER"] != cfg.Issuer {
		t.Errorf("KMSGATE_ISSUER %q, kmsgate's issuer %q", app.Environment["KMSGATE_ISSUER"], cfg.Issuer)
	}
	if !strings.HasSuffix(app.Environment["APP_LISTEN"], ":"+up.Port()) {
		t.Errorf("APP_LISTEN %q, but kmsgate forwards to port %s", app.Environment["APP_LISTEN"], up.Port())
	}
	jwksURL, err := url.Parse(app.Environment["KMSGATE_JWKS_URL"])
	if err != nil || jwksURL.Hostname() != "kmsgate" || jwksURL.Port() != strings.TrimPrefix(cfg.Listen, ":") || jwksURL.Path != "/.well-known/jwks.json" {
		t.Errorf("KMSGATE_JWKS_URL %q: want http://kmsgate:%s/.well-known/jwks.json", app.Environment["KMSGATE_JWKS_URL"], strings.TrimPrefix(cfg.Listen, ":"))
	}

	// The admin listener (metrics, health) stays inside the kmsgate
	// container: on its loopback, with no port published. (TestComposeDemo
	// moves it by rewriting this value, so config.yaml must set it.)
	adminHost, adminPort, err := net.SplitHostPort(cfg.AdminListen)
	if ip := net.ParseIP(adminHost); err != nil || (adminHost != "localhost" && (ip == nil || !ip.IsLoopback())) {
		t.Errorf("admin-listen %q: want a loopback address such as 127.0.0.1:9090; nothing outside the kmsgate container uses the admin endpoints", cfg.AdminListen)
	}
	if adminPort == strings.TrimPrefix(cfg.Listen, ":") {
		t.Errorf("admin-listen %q and listen %q share a port", cfg.AdminListen, cfg.Listen)
	}
	if len(gw.Ports) > 0 {
		t.Errorf("kmsgate publishes ports %v: only the proxy is user-facing", gw.Ports)
	}
	// A healthcheck runs inside its own container, so kmsgate's can reach
	// the admin listener on loopback; another container's cannot.
	for name, s := range cf.Services {
		if s.Healthcheck == nil {
			continue
		}
		test := fmt.Sprint(s.Healthcheck.Test)
		switch {
		case name == "kmsgate" && !regexp.MustCompile(`(127\.0\.0\.1|localhost):`+adminPort+`/(healthz|readyz)\b`).MatchString(test):
			t.Errorf("kmsgate's healthcheck %s: want /healthz or /readyz on the admin listener, 127.0.0.1:%s", test, adminPort)
		case name != "kmsgate" && strings.Contains(test, "kmsgate:"+adminPort):
			t.Errorf("%s's healthcheck %s probes kmsgate's admin port, which listens on kmsgate's loopback only", name, test)
		}
	}

	// nginx, the user-facing side, sends to kmsgate's traffic port only.
	conf, err := os.ReadFile(filepath.Join(dir, "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	passes := regexp.MustCompile(`proxy_pass\s+https?://kmsgate(?::(\d+))?`).FindAllStringSubmatch(string(conf), -1)
	if len(passes) == 0 {
		t.Error("nginx.conf does not proxy to kmsgate")
	}
	for _, m := range passes {
		if m[1] != strings.TrimPrefix(cfg.Listen, ":") {
			t.Errorf("nginx.conf: %s, want kmsgate's traffic port %s", m[0], strings.TrimPrefix(cfg.Listen, ":"))
		}
	}
}

// TestComposeDemo runs the demo's three programs with the demo's own files,
// as local processes on 127.0.0.1 instead of containers: nginx with
// nginx.conf and htpasswd, kmsgate with compose.yaml's command and
// config.yaml, the app with compose.yaml's environment. Only addresses are
// rewritten.
func TestComposeDemo(t *testing.T) {
	nginx := requireTool(t, "nginx", "KMSGATE_TEST_NGINX")
	bin, appBin := binaries(t)
	dir := filepath.Join(root, "deploy", "compose")
	var cf composeFile
	readYAML(t, filepath.Join(dir, "compose.yaml"), &cf)

	var cfg demoConfig
	readYAML(t, filepath.Join(dir, "config.yaml"), &cfg)
	if cfg.AdminListen == "" {
		t.Fatal("config.yaml sets no admin-listen for this test to move")
	}

	gwAddr, adminAddr, appAddr, proxyAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	rewrite := strings.NewReplacer(
		"kmsgate:8080", gwAddr,
		`":8080"`, `"`+gwAddr+`"`,
		`"`+cfg.AdminListen+`"`, `"`+adminAddr+`"`,
		"http://app:8000", "http://"+appAddr,
		":8000", appAddr,
		"172.28.0.10/32", "127.0.0.1/32",
		"listen 8080;", "listen "+proxyAddr+";",
		"/etc/nginx/htpasswd", filepath.Join(dir, "htpasswd"),
	)
	work := t.TempDir()
	cfgPath := filepath.Join(work, "config.yaml")
	cfgData, err := os.ReadFile(filepath.Join(dir, "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfgData = []byte(rewrite.Replace(string(cfgData)))
	if !strings.Contains(string(cfgData), `"`+adminAddr+`"`) {
		t.Fatalf("admin-listen %q was not rewritten (write it in double quotes):\n%s", cfg.AdminListen, cfgData)
	}
	if err := os.WriteFile(cfgPath, cfgData, 0o644); err != nil {
		t.Fatal(err)
	}

	// kmsgate, with exactly the compose command.
	args := append([]string(nil), cf.Services["kmsgate"].Command...)
	for i := range args {
		if args[i] == "/etc/kmsgate/config.yaml" {
			args[i] = cfgPath
		}
	}
	gw := start(t, "kmsgate", cleanEnv(), bin, args...)
	// Readiness and metrics on the admin listener.
	gw.waitHTTP(t, "http://"+adminAddr+"/readyz", 200)
	gw.waitHTTP(t, "http://"+adminAddr+"/healthz", 200)
	if status, body := httpGet(t, "http://"+adminAddr+"/metrics"); status != 200 || !strings.Contains(body, "\nkmsgate_keys_ready 1\n") {
		t.Errorf("admin GET /metrics: %d, want 200 with kmsgate_keys_ready 1:\n%.500s", status, body)
	}

	// The app, with the compose environment. kmsgate signs for the
	// upstream's host name, here 127.0.0.1 (TestComposeFilesAgree checks
	// that APP_AUDIENCE is the upstream's host name).
	var env []string
	for k, v := range cf.Services["app"].Environment {
		if k == "APP_AUDIENCE" {
			v = "127.0.0.1"
		}
		env = append(env, k+"="+rewrite.Replace(v))
	}
	app := start(t, "app", cleanEnv(env...), appBin)
	app.waitHTTP(t, "http://"+appAddr+"/", 401)

	// nginx, with the demo's nginx.conf; temporary files in the work dir.
	confData, err := os.ReadFile(filepath.Join(dir, "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := strings.Replace(rewrite.Replace(string(confData)), "http {", fmt.Sprintf(
		"http {\n    client_body_temp_path %[1]s/body; proxy_temp_path %[1]s/proxy; fastcgi_temp_path %[1]s/fcgi; uwsgi_temp_path %[1]s/uwsgi; scgi_temp_path %[1]s/scgi;", work), 1)
	confPath := filepath.Join(work, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	px := start(t, "nginx", cleanEnv(), nginx, "-c", confPath, "-p", work, "-g", fmt.Sprintf("daemon off; pid %[1]s/nginx.pid; error_log %[1]s/error.log;", work))
	px.waitHTTP(t, "http://"+proxyAddr+"/", 401)

	client := &http.Client{Timeout: 10 * time.Second}
	get := func(url, user, pass string, header map[string]string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp.StatusCode, string(b)
	}

	proxyURL := "http://" + proxyAddr + "/hello"
	for _, user := range []string{"alice", "bob"} {
		// A client's own identity headers and assertion are overwritten
		// on the way.
		status, body := get(proxyURL, user, "demo", map[string]string{
			"X-Forwarded-User": "mallory", "X-Forwarded-Preferred-Username": "mallory",
			"X-Kmsgate-Jwt-Assertion": "eyJhbGciOiJub25lIn0.eyJ1c2VyIjoibWFsbG9yeSJ9.",
		})
		if status != 200 {
			t.Fatalf("%s through the proxy: %d %s", user, status, body)
		}
		var got struct {
			Message string         `json:"message"`
			Path    string         `json:"path"`
			Claims  map[string]any `json:"claims"`
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("app answer %q: %v", body, err)
		}
		c := got.Claims
		if c["user"] != user || c["email"] != user+"@example.com" || fmt.Sprint(c["groups"]) != "[demo users]" || c["iss"] != "http://"+gwAddr || c["aud"] != "127.0.0.1" {
			t.Errorf("%s: verified claims %v", user, c)
		}
		// exp is the moment of signing plus the default 5 min; iat is set
		// 5 s before that moment for verifiers whose clock is behind.
		if exp, iat := c["exp"].(float64), c["iat"].(float64); exp-iat != 305 {
			t.Errorf("%s: exp - iat %v s, want kmsgate's default 300 plus its 5 s of clock skew", user, exp-iat)
		}
		if got.Path != "/hello" || !regexp.MustCompile(`^hello `+user+`\b`).MatchString(got.Message) || strings.Contains(body, "mallory") {
			t.Errorf("%s: app answered %s", user, body)
		}
	}

	// kmsgate's admin endpoints are not on its traffic port, so through
	// the proxy these paths are the app's like any other.
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		status, body := get("http://"+proxyAddr+path, "alice", "demo", nil)
		var got struct {
			Path   string         `json:"path"`
			Claims map[string]any `json:"claims"`
		}
		if err := json.Unmarshal([]byte(body), &got); status != 200 || err != nil || got.Path != path || got.Claims["user"] != "alice" || strings.Contains(body, "kmsgate_") {
			t.Errorf("GET %s through the proxy: %d %.300s, want the app's answer", path, status, body)
		}
	}

	// Without a login, or with a wrong password, nginx stops the request.
	if status, _ := get(proxyURL, "", "", nil); status != 401 {
		t.Errorf("no credentials: %d, want 401", status)
	}
	if status, _ := get(proxyURL, "alice", "wrong", nil); status != 401 {
		t.Errorf("wrong password: %d, want 401", status)
	}
	// The app refuses requests that did not come through kmsgate.
	appURL := "http://" + appAddr + "/hello"
	if status, body := get(appURL, "", "", nil); status != 401 || !strings.Contains(body, `"code"`) {
		t.Errorf("app without an assertion: %d %s, want 401 with a JSON error", status, body)
	}
	if status, body := get(appURL, "", "", map[string]string{"X-Kmsgate-Jwt-Assertion": "eyJhbGciOiJub25lIn0.eyJ1c2VyIjoibWFsbG9yeSJ9."}); status != 401 || strings.Contains(body, "mallory") {
		t.Errorf("app with a forged assertion: %d %s, want 401", status, body)
	}
}
