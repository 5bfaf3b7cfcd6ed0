package gateway_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/gateway"
)

func listen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

var errUnavailable = backends.ErrUnavailable

// testClient speaks HTTP/1.1; TestParity sends every kind of request over
// HTTP/1.1, h2c and TLS h2 and checks the answers agree.
var testClient = &http.Client{Transport: &http.Transport{}}

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
