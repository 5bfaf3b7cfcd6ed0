package gateway_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/gateway"
)

// rawUpstream is an upstream that records the raw bytes of each request's
// header and answers 200, or 101 to an upgrade (then echoes lines).
type rawUpstream struct {
	ln    net.Listener
	mu    sync.Mutex
	heads []string
}

func newRawUpstream(t *testing.T) *rawUpstream {
	ln, err := listen()
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go u.serve(c)
		}
	}()
	return u
}

func (u *rawUpstream) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		var head bytes.Buffer
		_ = req.Header.Write(&head)
		u.mu.Lock()
		u.heads = append(u.heads, req.Method+" "+req.RequestURI+"\n"+head.String())
		u.mu.Unlock()
		_, _ = io.Copy(io.Discard, req.Body)
		if req.Header.Get("Upgrade") != "" {
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+req.Header.Get("Upgrade")+"\r\n\r\n")
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				io.WriteString(c, "echo: "+line)
			}
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

func (u *rawUpstream) take() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	h := u.heads
	u.heads = nil
	return h
}

func (u *rawUpstream) url() string { return "http://" + u.ln.Addr().String() }

func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	return c
}

// TestUpgradeOnlyWebSocket: an Upgrade other than websocket (h2c, any
// token) is dropped, the request served as a plain one, and the connection
// stays an HTTP connection: a pipelined second request without identity
// gets 401 instead of reaching the app through a tunnel.
func TestUpgradeOnlyWebSocket(t *testing.T) {
	up := newRawUpstream(t)
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.url(), Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	for _, token := range []string{"h2c", "foo", "websocket, h2c", "WebSocket/13"} {
		c := dialRaw(t, e.addr)
		io.WriteString(c, "GET /a HTTP/1.1\r\nHost: app\r\nX-Forwarded-User: alice\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: "+token+
			"\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\nGET /b HTTP/1.1\r\nHost: app\r\n\r\n")
		br := bufio.NewReader(c)
		first, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", token, err)
		}
		io.Copy(io.Discard, first.Body)
		second, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: second request: %v", token, err)
		}
		if first.StatusCode != 200 || second.StatusCode != 401 {
			t.Errorf("Upgrade %q: %d then %d, want 200 then 401", token, first.StatusCode, second.StatusCode)
		}
		heads := up.take()
		if len(heads) != 1 || !strings.HasPrefix(heads[0], "GET /a\n") {
			t.Fatalf("Upgrade %q: upstream saw %q", token, heads)
		}
		for _, bad := range []string{"Upgrade:", "Http2-Settings:", "Connection:"} {
			if strings.Contains(heads[0], bad) {
				t.Errorf("Upgrade %q: upstream saw %s\n%s", token, bad, heads[0])
			}
		}
	}
}

// TestWebSocketPipelinedBytes: bytes the client sends right behind its
// upgrade request, in the same packet, reach the upstream whole.
func TestWebSocketPipelinedBytes(t *testing.T) {
	up := newRawUpstream(t)
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.url(), Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	c := dialRaw(t, e.addr)
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: app\r\nX-Forwarded-User: alice\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nhello\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	line, err := br.ReadString('\n')
	if err != nil || line != "echo: hello\n" {
		t.Fatalf("pipelined bytes: %q %v", line, err)
	}
	heads := up.take()
	if len(heads) != 1 || !strings.Contains(heads[0], "X-Kmsgate-Jwt-Assertion: eyJ") || !strings.Contains(heads[0], "Upgrade: websocket") {
		t.Errorf("upstream saw %q", heads)
	}
}

// TestRefusedWebSocketCloses: a WebSocket upgrade the upstream refuses
// (no 101) is answered, and the connection, which the HTTP/1.x server
// handed to net/http for the upgrade, is closed rather than kept for more
// requests on the other server.
func TestRefusedWebSocketCloses(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusForbidden) })
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	for name, req := range map[string]string{
		"refused by the upstream": "GET /ws HTTP/1.1\r\nHost: app\r\nX-Forwarded-User: alice\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"refused by the gateway":  "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
	} {
		c := dialRaw(t, e.addr)
		io.WriteString(c, req+"GET /next HTTP/1.1\r\nHost: app\r\nX-Forwarded-User: alice\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 403 && resp.StatusCode != 401 {
			t.Errorf("%s: %d", name, resp.StatusCode)
		}
		if _, err := http.ReadResponse(br, nil); err == nil {
			t.Errorf("%s: a second request was served on the handed-off connection", name)
		}
	}
}

// TestEarlyAnswerCloses: a request answered before its body was read (401
// here) gets its answer at once and the connection closed, instead of the
// gateway draining a body that may never come; a small body that never
// comes (which the HTTP/1.x server waits for before any handler runs) is
// given up within the header timeout.
func TestEarlyAnswerCloses(t *testing.T) {
	up := newRawUpstream(t)
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.url(), Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	closedWithin := func(t *testing.T, br *bufio.Reader, c net.Conn, limit time.Duration) {
		t.Helper()
		start := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(limit + 2*time.Second))
		for {
			if _, err := br.ReadByte(); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Errorf("connection not closed: %v", err)
				} else if took := time.Since(start); took > limit {
					t.Errorf("closed only after %s", took)
				}
				return
			}
		}
	}
	for _, path := range []string{"/app", "/v1/sign", "/v1/auth"} {
		t.Run("body not read"+path, func(t *testing.T) {
			t.Parallel()
			c := dialRaw(t, e.addr)
			io.WriteString(c, "POST "+path+" HTTP/1.1\r\nHost: app\r\nContent-Length: 1000000\r\n\r\n"+strings.Repeat("x", 9000))
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != 401 {
				t.Errorf("%d, want 401", resp.StatusCode)
			}
			closedWithin(t, br, c, time.Second)
		})
		t.Run("body never sent"+path, func(t *testing.T) {
			t.Parallel()
			c := dialRaw(t, e.addr)
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			io.WriteString(c, "POST "+path+" HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n")
			closedWithin(t, bufio.NewReader(c), c, 11*time.Second) // the 10 s header timeout
		})
	}
	t.Cleanup(func() {
		if heads := up.take(); len(heads) != 0 {
			t.Errorf("upstream saw %q", heads)
		}
	})
}

// TestStrictHTTP1Parsing: what only HTTP/1.x framing can carry is refused
// with 400 and never forwarded: header names that are not tokens, obs-fold
// continuation lines, and a Transfer-Encoding other than exactly chunked.
// The smuggling shapes that held before keep holding.
func TestStrictHTTP1Parsing(t *testing.T) {
	up := newRawUpstream(t)
	e := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.url(), Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	id := "X-Forwarded-User: alice\r\n"
	for name, req := range map[string]string{
		"space in name":           "GET / HTTP/1.1\r\nHost: app\r\n" + id + "X-Kmsgate-Jwt Assertion: forged\r\n\r\n",
		"space before colon":      "GET / HTTP/1.1\r\nHost: app\r\n" + id + "X-Kmsgate-Jwt-Assertion : forged\r\n\r\n",
		"TE with a space":         "POST / HTTP/1.1\r\nHost: app\r\n" + id + "Transfer Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"obs-fold":                "GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-User: alice\r\n  admin\r\n\r\n",
		"obs-fold tab":            "GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-User: alice\r\n\tadmin\r\n\r\n",
		"TE identity":             "POST / HTTP/1.1\r\nHost: app\r\n" + id + "Transfer-Encoding: identity\r\n\r\nabc",
		"TE gzip, chunked":        "POST / HTTP/1.1\r\nHost: app\r\n" + id + "Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"TE twice":                "POST / HTTP/1.1\r\nHost: app\r\n" + id + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"CL and TE":               "POST / HTTP/1.1\r\nHost: app\r\n" + id + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"two lengths":             "POST / HTTP/1.1\r\nHost: app\r\n" + id + "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
		"bad chunk size":          "POST / HTTP/1.1\r\nHost: app\r\n" + id + "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
		"NUL in value":            "GET / HTTP/1.1\r\nHost: app\r\n" + id + "X-A: a\x00b\r\n\r\n",
		"bare CR in value":        "GET / HTTP/1.1\r\nHost: app\r\n" + id + "X-A: a\rb\r\n\r\n",
		"two hosts":               "GET / HTTP/1.1\r\nHost: app\r\nHost: evil\r\n" + id + "\r\n",
		"encoded slash":           "GET /a%2Fb HTTP/1.1\r\nHost: app\r\n" + id + "\r\n",
		"fragment":                "GET /a#b HTTP/1.1\r\nHost: app\r\n" + id + "\r\n",
		"absolute-form other URI": "GET ftp://app/ HTTP/1.1\r\nHost: app\r\n" + id + "\r\n",
	} {
		c := dialRaw(t, e.addr)
		io.WriteString(c, req)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		switch {
		case err != nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
			// closed without an answer: refused too
		case err != nil:
			t.Errorf("%s: %v", name, err)
		case resp.StatusCode != 400:
			t.Errorf("%s: %d, want 400", name, resp.StatusCode)
		}
		if heads := up.take(); len(heads) != 0 {
			t.Errorf("%s reached the upstream: %q", name, heads)
		}
	}
	// absolute-form names the host (RFC 9112 3.2.2) and is routed like the
	// origin-form.
	c := dialRaw(t, e.addr)
	io.WriteString(c, "GET http://app/x/../y?q HTTP/1.1\r\nHost: other\r\n"+id+"\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("absolute-form: %v %v", resp, err)
	}
	if heads := up.take(); len(heads) != 1 || !strings.HasPrefix(heads[0], "GET /y?q\n") || !strings.Contains(heads[0], "X-Forwarded-Host: app\r\n") {
		t.Errorf("absolute-form reached the upstream as %q", heads)
	}
}

// TestGatewayPrefix: --gateway-prefix moves the gateway's own /v1/ paths,
// leaving /v1/ to the upstream.
func TestGatewayPrefix(t *testing.T) {
	up := newRawUpstream(t)
	e := newEnv(t, func(c *gateway.Config) {
		c.Prefix = "/.kmsgate"
		c.Proxy = gateway.ProxyConfig{Policy: anyone, Upstream: up.url(), Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")}
	})
	e.refresh(t)
	r := e.do(t, "GET", "/v1/sign", "", map[string]string{"X-Forwarded-User": "alice"})
	if r.StatusCode != 200 {
		t.Errorf("/v1/sign with a prefix: %d, want the upstream's 200", r.StatusCode)
	}
	if heads := up.take(); len(heads) != 1 || !strings.HasPrefix(heads[0], "GET /v1/sign\n") {
		t.Errorf("upstream saw %q", heads)
	}
	r = e.do(t, "POST", "/.kmsgate/v1/sign", `{"claims":{"sub":"svc-1","aud":"billing"}}`, map[string]string{"Authorization": "Bearer " + clientToken})
	if r.StatusCode != 200 {
		t.Errorf("prefixed sign: %d", r.StatusCode)
	}
	if r := e.do(t, "GET", "/.kmsgate/v1/auth", "", map[string]string{"X-Forwarded-User": "alice"}); r.StatusCode != 200 || r.Header.Get(gateway.DefaultAssertionHeader) == "" {
		t.Errorf("prefixed forward-auth: %d", r.StatusCode)
	}
}

// TestPublicHealth: /healthz and /readyz answer on the public port only
// when the operator asks; /metrics never does.
func TestPublicHealth(t *testing.T) {
	e := newEnv(t, func(c *gateway.Config) { c.PublicHealth = true })
	e.refresh(t)
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 404} {
		if r := e.do(t, "GET", path, "", nil); r.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, r.StatusCode, want)
		}
	}
}
