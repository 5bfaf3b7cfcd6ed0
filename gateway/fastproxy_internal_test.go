package gateway

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/jwks"
)

// BenchmarkPrepareUpstream measures the proxy's own work per request with a
// warm assertion cache: route, identity, cache lookup and header rewriting,
// without the network.
func BenchmarkPrepareUpstream(b *testing.B) {
	f := &backendtest.Fake{}
	f.Add("v1", time.Now().Add(-time.Hour))
	kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{})
	if err := kr.Refresh(context.Background()); err != nil {
		b.Fatal(err)
	}
	srv, err := New(context.Background(), Config{Issuer: "https://gw", Prepublish: time.Hour, Proxy: ProxyConfig{
		Upstream: "http://127.0.0.1:9", Identity: SourceHeaders, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	}}, kr, nil)
	if err != nil {
		b.Fatal(err)
	}
	var tmpl fasthttp.Request
	tmpl.Header.SetRequestURI("/")
	tmpl.Header.SetHost("127.0.0.1:8080")
	tmpl.Header.Set("X-Forwarded-User", "alice")
	var ctx fasthttp.RequestCtx
	ctx.Init(&tmpl, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}, nil)
	run := func() {
		tmpl.CopyTo(&ctx.Request)
		if _, _, ok := srv.prepareUpstream(&ctx, "/"); !ok {
			b.Fatalf("refused: %s", ctx.Response.Body())
		}
	}
	run() // warm the cache
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		run()
	}
}
