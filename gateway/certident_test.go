package gateway_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/gateway"
)

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate for alice.
type testPKI struct {
	pool           *x509.CertPool
	server, client tls.Certificate
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(tmpl *x509.Certificate) tls.Certificate {
		k := key()
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	p := testPKI{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.server = issue(&x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "gateway"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	p.client = issue(&x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "alice", OrganizationalUnit: []string{"eng"}},
		EmailAddresses: []string{"alice@example.com"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return p
}

// TestClientCertIdentity: the TLS client certificate is the identity over
// HTTP/1.1 (fasthttp), HTTP/2 (net/http) and a WebSocket upgrade, whose
// connection fasthttp hands to net/http with its TLS state; without a
// certificate the request gets 401.
func TestClientCertIdentity(t *testing.T) {
	pki := newTestPKI(t)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "websocket" {
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			return
		}
		io.WriteString(w, "ok")
	})
	e := newProxyEnvTLS(t, gateway.ProxyConfig{Upstream: up.URL, Identity: gateway.SourceClientCert}, &tls.Config{
		Certificates: []tls.Certificate{pki.server}, ClientCAs: pki.pool, ClientAuth: tls.VerifyClientCertIfGiven,
	})
	want := func(how string) {
		t.Helper()
		c := assertionOf(t, e, up.last(t), gateway.DefaultAssertionHeader)
		if c["sub"] != "CN=alice,OU=eng" || c["email"] != "alice@example.com" || c["user"] != "alice" {
			t.Errorf("%s: claims %v", how, c)
		}
	}
	clientTLS := &tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{pki.client}}
	get := func(tr *http.Transport) *http.Response {
		t.Helper()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + e.addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := get(&http.Transport{TLSClientConfig: clientTLS}); resp.StatusCode != 200 || resp.ProtoMajor != 1 {
		t.Fatalf("HTTP/1.1: %d %s", resp.StatusCode, resp.Proto)
	}
	want("HTTP/1.1")
	if resp := get(&http.Transport{TLSClientConfig: clientTLS.Clone(), ForceAttemptHTTP2: true}); resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("HTTP/2: %d %s", resp.StatusCode, resp.Proto)
	}
	want("HTTP/2")
	if resp := get(&http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool}}); resp.StatusCode != 401 {
		t.Fatalf("without a client certificate: %d", resp.StatusCode)
	}

	before := up.count()
	c, err := tls.Dial("tcp", e.addr, clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("WebSocket over TLS: %v %v", resp, err)
	}
	if up.count() != before+1 {
		t.Fatal("the upgrade did not reach the upstream")
	}
	want("WebSocket over TLS")
}
