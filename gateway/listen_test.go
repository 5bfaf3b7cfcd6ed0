package gateway_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/gateway"
)

func listen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

var errUnavailable = backends.ErrUnavailable

// testClient speaks HTTP/1.1, which the fasthttp front answers, or with
// KMSGATE_TEST_HTTP2 set, cleartext HTTP/2, which net/http answers: the
// test script runs the package both ways.
var testClient = func() *http.Client {
	if os.Getenv("KMSGATE_TEST_HTTP2") == "" {
		return &http.Client{Transport: &http.Transport{}}
	}
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}}
}()

// serve runs srv.Serve (with TLS when tlsCfg is set) on a loopback port
// until the test ends and returns its address.
func serve(t *testing.T, srv *gateway.Server, tlsCfg *tls.Config) string {
	t.Helper()
	ln, err := listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln, tlsCfg, time.Second); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}
