package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/gateway"
)

// rawResponse sends a request written byte for byte and reads the answer.
func rawResponse(t *testing.T, addr, req string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: strings.Fields(req)[0]})
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// TestFrontBodiesAndHeaders covers what the HTTP/1.x front decides before
// any handler runs: bounded gateway bodies (also chunked), oversized
// headers, upgrades with a body, and HEAD on the key set.
func TestFrontBodiesAndHeaders(t *testing.T) {
	e := newEnv(t, nil)
	e.refresh(t)
	addr := strings.TrimPrefix(e.url, "http://")
	chunked := func(body string) string {
		return "POST /v1/sign HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + clientToken +
			"\r\nTransfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body)
	}
	small := `{"claims":{"sub":"svc-1","aud":"billing"}}`
	if resp, body := rawResponse(t, addr, chunked(small)); resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"token":"`)) {
		t.Errorf("chunked sign within the limit: %d %s", resp.StatusCode, body)
	}
	big := `{"claims":{"sub":"svc-1","aud":"billing","scope":"` + strings.Repeat("x", 5000) + `"}}`
	if resp, body := rawResponse(t, addr, chunked(big)); resp.StatusCode != 413 || !bytes.Contains(body, []byte(`"code":"too_large"`)) {
		t.Errorf("chunked sign over the limit: %d %s", resp.StatusCode, body)
	}
	huge := "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 40<<10) + "\r\n\r\n"
	if resp, body := rawResponse(t, addr, huge); resp.StatusCode != 431 || !bytes.Contains(body, []byte(`"code":"header_too_large"`)) {
		t.Errorf("40 KiB header: %d %s", resp.StatusCode, body)
	}
	if resp, body := rawResponse(t, addr, "GET /anything HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 3\r\n\r\nabc"); resp.StatusCode != 400 {
		t.Errorf("upgrade with a body: %d %s", resp.StatusCode, body)
	}
	get, getBody := rawResponse(t, addr, "GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n")
	head, headBody := rawResponse(t, addr, "HEAD /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n")
	if get.StatusCode != 200 || head.StatusCode != 200 || len(headBody) != 0 ||
		head.Header.Get("Content-Length") != fmt.Sprint(len(getBody)) || head.Header.Get("Etag") != get.Header.Get("Etag") {
		t.Errorf("HEAD: %d %q, Content-Length %q (GET body %d bytes), ETag %q vs %q", head.StatusCode, headBody,
			head.Header.Get("Content-Length"), len(getBody), head.Header.Get("Etag"), get.Header.Get("Etag"))
	}
}

// TestProxyStreamsLargeUpload sends 8 MiB through the fasthttp proxy path,
// chunked and with a length, and checks every byte reached the upstream.
func TestProxyStreamsLargeUpload(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	})
	p := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	body := bytes.Repeat([]byte("0123456789abcdef"), 512<<10)
	sum := sha256.Sum256(body)
	want := fmt.Sprintf("%d %s", len(body), hex.EncodeToString(sum[:]))
	for _, length := range []int64{int64(len(body)), -1} {
		req, _ := http.NewRequest("POST", "http://"+p.addr+"/upload", io.NopCloser(bytes.NewReader(body)))
		req.ContentLength = length
		req.Header.Set("X-Forwarded-User", "alice")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(got) != want {
			t.Errorf("upload with length %d: %d %q, want %q", length, resp.StatusCode, got, want)
		}
	}
}

// TestProxyTruncatedSmallBody: an upstream that promises 10 bytes and sends
// 3 gets the client a 502, not a short body under a 200.
func TestProxyTruncatedSmallBody(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
		brw.Flush()
	})
	p := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32")})
	resp, body := rawResponse(t, p.addr, "GET /short HTTP/1.1\r\nHost: app\r\nX-Forwarded-User: alice\r\n\r\n")
	if resp.StatusCode != 502 || !bytes.Contains(body, []byte(`"code":"bad_gateway"`)) {
		t.Errorf("truncated upstream body: %d %q", resp.StatusCode, body)
	}
}

// TestProxyUpstreamStalls: an upstream that takes the request and never
// answers gets the client a 502 once --upstream-timeout (300 ms here) has
// passed, and one that stops in the middle of its body gets the client's
// response cut short; one that stays slow but keeps sending is not cut.
func TestProxyUpstreamStalls(t *testing.T) {
	stop := make(chan struct{})
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/silent":
			<-stop
		case "/halfway":
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: first\n\n")
			http.NewResponseController(w).Flush()
			<-stop
		case "/slow":
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 6 {
				fmt.Fprintf(w, "data: %d\n\n", i)
				http.NewResponseController(w).Flush()
				time.Sleep(100 * time.Millisecond)
			}
		}
	})
	t.Cleanup(func() { close(stop) }) // before the upstream's Close, which waits for its handlers
	p := newProxyEnv(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceHeaders, TrustedProxies: prefixes("127.0.0.1/32"), UpstreamTimeout: 300 * time.Millisecond})
	get := func(path string) (*http.Response, []byte, time.Duration, error) {
		req, _ := http.NewRequest("GET", "http://"+p.addr+path, nil)
		req.Header.Set("X-Forwarded-User", "alice")
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second) // a regression fails, not hangs
		defer cancel()
		start := time.Now()
		resp, err := testClient.Do(req.WithContext(ctx))
		if err != nil {
			return nil, nil, time.Since(start), err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp, body, time.Since(start), err
	}

	resp, body, took, err := get("/silent")
	if err != nil || resp.StatusCode != 502 || !bytes.Contains(body, []byte(`"code":"bad_gateway"`)) {
		t.Errorf("silent upstream: %v %v %q", resp, err, body)
	}
	if took < 250*time.Millisecond || took > 5*time.Second {
		t.Errorf("silent upstream answered after %s, want about 300ms", took)
	}

	resp, body, took, err = get("/halfway")
	if err == nil || resp.StatusCode != 200 || string(body) != "data: first\n\n" {
		t.Errorf("upstream stalled halfway: %v %v %q, want the first event then a broken body", resp, err, body)
	}
	if took > 5*time.Second {
		t.Errorf("upstream stalled halfway: cut after %s", took)
	}

	resp, body, _, err = get("/slow")
	if err != nil || resp.StatusCode != 200 || !strings.HasSuffix(string(body), "data: 5\n\n") {
		t.Errorf("slow upstream that keeps sending: %v %v %q", resp, err, body)
	}
}
