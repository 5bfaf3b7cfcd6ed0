package front

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/gateway/core"
	"github.com/kmsgate/kmsgate/gateway/identity"
	"github.com/kmsgate/kmsgate/gateway/policy"
	"github.com/kmsgate/kmsgate/jwks"
)

// BenchmarkFastPrepare measures the proxy's own work per HTTP/1.x request
// with a warm assertion cache, without the network: the wire checks, the
// core's view of the request, admission (path rule, header names), route,
// identity, cache lookup, the plan, and rewriting the request by it. It is
// the successor of BenchmarkPrepareUpstream (1.5-1.65 us, 6 allocs, before
// the one core). The sub-benchmarks differ only in the route's policy:
// any-authenticated, or five rules (the policy's own cost is their
// difference).
func BenchmarkFastPrepare(b *testing.B) {
	b.Run("policy=any-authenticated", func(b *testing.B) { benchFastPrepare(b, "allow: any-authenticated") })
	b.Run("policy=five-rules", func(b *testing.B) {
		benchFastPrepare(b, `
allow:
  and:
    - domain: {is: example.com}
    - groups: {any-of: [admins, sre, dev]}
    - not: {email: {in: [mallory@example.com, eve@example.com]}}
    - client: {in: [127.0.0.0/8, 10.0.0.0/8]}
deny:
  user: {is: root}
`)
	})
}

func benchFastPrepare(b *testing.B, pol string) {
	f := &backendtest.Fake{}
	f.Add("v1", time.Now().Add(-time.Hour))
	kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{Logger: slog.New(slog.DiscardHandler)})
	if err := kr.Refresh(context.Background()); err != nil {
		b.Fatal(err)
	}
	c, err := core.New(context.Background(), core.Config{Issuer: "https://gw", Prepublish: time.Hour, Proxy: core.ProxyConfig{
		Policy: policy.MustParseSpec(pol), Upstream: "http://127.0.0.1:9", Identity: identity.SourceHeaders, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	}}, kr, nil)
	if err != nil {
		b.Fatal(err)
	}
	ff := newFastFront(c, nil)
	var tmpl fasthttp.Request
	// The same request as BenchmarkPrepareUpstream's before the one core.
	tmpl.Header.SetRequestURI("/")
	tmpl.Header.SetHost("127.0.0.1:8080")
	tmpl.Header.Set("X-Forwarded-User", "alice")
	tmpl.Header.Set("X-Forwarded-Email", "alice@example.com")
	tmpl.Header.Set("X-Forwarded-Groups", "staff,dev,oncall")
	var ctx fasthttp.RequestCtx
	ctx.Init(&tmpl, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}, nil)
	run := func() {
		tmpl.CopyTo(&ctx.Request)
		if checkWire(&ctx.Request.Header) != "" {
			b.Fatal("wire check refused")
		}
		h := &ctx.Request.Header
		h.DisableNormalizing()
		sc, done := ff.scratchFor(&ctx)
		ff.request(&ctx, &sc.r)
		c.Serve(&sc.r, &sc.a)
		if !sc.a.Forward {
			b.Fatalf("refused: %d %s", sc.a.Status, sc.a.Body)
		}
		var body clientBody
		ff.prepare(&ctx, &sc.a.Plan, &sc.up, &body)
		done()
		h.EnableNormalizing()
	}
	run() // warm the cache
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		run()
	}
}
