package chaos_test

import (
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// soakSample is one reading of the gateway during the soak.
type soakSample struct {
	at         time.Duration
	rssKiB     int
	heapMiB    float64 // live heap right after a GC (go_memstats_heap_alloc_bytes)
	goroutines int
	requests   int // answered so far
	signs      int // assertions signed so far (cache misses)
}

// TestSoak runs kmsgate (built without the race detector, as released) with
// a local PEM key for KMSGATE_SOAK (default 60 s) under a steady mixed
// load: proxied requests for 100,000 distinct users in turn (so that the
// assertion cache, 10,000 entries by default, is always full and churns),
// sign API requests and JWKS requests. Before the clock starts, a warm-up
// fills the assertion cache. Every KMSGATE_SOAK_SAMPLE (default 10 s) it
// reads the RSS (/proc/PID/status VmRSS), the live heap after a GC and the
// goroutine count, and prints them as a table. The load uses at most 64
// connections, so that the gateway's per-connection buffers do not follow
// the noise of a shared machine.
//
// The plateau rule: split the samples in thirds; the largest RSS of the
// last third must be within 10% of the largest of the middle third. The
// first third is left out as the settling of the GC's heap goal and the
// connection pools; a leak that grows with the requests adds in the last
// third about what it added in the middle one, while garbage collection
// noise stays within the margin. The live heap (after a GC) with the load
// stopped and idle connections closed must be the same, within 10% + 1 MiB,
// after the soak as after the warm-up (the assertion cache is full at both);
// under load it also holds the buffers of the requests in flight, so it is
// only reported. Goroutines stay under the bound the connection cap sets
// (at rest + 2 per connection + 50), and at rest after the soak are those
// at rest after the warm-up. A short soak only finds large leaks (at 400
// requests/s, 20 s thirds, about a KiB per request); `make soak` runs 10
// minutes.
func TestSoak(t *testing.T) {
	dur := envDuration(t, "KMSGATE_SOAK", time.Minute)
	if dur == 0 {
		t.Skip("KMSGATE_SOAK=0")
	}
	every := envDuration(t, "KMSGATE_SOAK_SAMPLE", 10*time.Second)
	if dur < 3*every {
		t.Fatalf("KMSGATE_SOAK=%s: want at least three samples of %s (KMSGATE_SOAK_SAMPLE)", dur, every)
	}
	rate := float64(envInt(t, "KMSGATE_SOAK_RATE", 400))
	const users, cacheSize, soakConns = 100_000, 10_000, 64

	bin := binary(t, "", ".", "./cmd/kmsgate")
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key.pem")
	if out, err := exec.Command(bin, "genkey", "--out", keyFile).CombinedOutput(); err != nil {
		t.Fatalf("kmsgate genkey: %v\n%s", err, out)
	}
	up := startUpstream(t, 100)
	g := startGateway(t, bin, cleanEnv("KMSGATE_LOG_LEVEL=warn"), "--key", "file://"+keyFile, "--upstream", up.srv.URL,
		"--identity", "headers", "--trusted-proxy", "127.0.0.1", "--allow", "any-authenticated", "--assertion-cache-size", fmt.Sprint(cacheSize), "--pprof")
	g.waitReady(30 * time.Second)
	st, jwksJSON, _ := g.get(g.url + "/.well-known/jwks.json")
	if st != http.StatusOK {
		t.Fatalf("JWKS: %d", st)
	}
	ver, err := newVerifier(jwksJSON, g.url)
	if err != nil {
		t.Fatal(err)
	}
	up.ver.Store(ver)
	rss0 := g.rssKiB()

	// Warm-up: as many clients as the soak has connections send proxied
	// requests for distinct users until the assertion cache is full, so that
	// the gateway's connection pools and buffers are the size the soak
	// makes them.
	l := newLoad(t, g, jwksJSON, ver, soakConns)
	l.users, l.verifyEvery = users, 100
	l.setPhase("warm-up")
	warm := time.Now()
	var wg sync.WaitGroup
	for range soakConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range cacheSize/soakConns + 1 {
				l.one(kProxy)
			}
		}()
	}
	wg.Wait()
	warmFor := time.Since(warm)
	if misses := g.metric("kmsgate_assertion_cache_misses_total"); misses < cacheSize {
		t.Fatalf("after the warm-up %0.f assertions were signed, want %d", misses, cacheSize)
	}
	// The load's idle connections are closed before each count; kmsgate's
	// kept-alive connections to the upstream stay (fasthttp's client holds
	// no goroutine for them).
	settle := func() (int, int, int) {
		return g.settled(l.client.CloseIdleConnections)
	}
	g0, _, fd0 := settle()
	heap0 := g.liveHeapMiB()

	l.rates = [nKinds]float64{rate * 0.2, rate * 0.2, rate * 0.6}
	l.setPhase("soak")
	start := time.Now()
	var samples []soakSample
	sample := func() {
		all, _ := g.goroutines()
		samples = append(samples, soakSample{at: time.Since(start), rssKiB: g.rssKiB(),
			heapMiB: g.liveHeapMiB(), goroutines: all,
			requests: int(g.metric("kmsgate_http_requests_total")), signs: int(g.metric("kmsgate_assertion_cache_misses_total"))})
	}
	l.start()
	tick := time.NewTicker(every)
	for time.Since(start) < dur-every/2 {
		<-tick.C
		sample()
	}
	tick.Stop()
	l.halt()
	g1, _, fd1 := settle()
	heap1 := g.liveHeapMiB()

	others, skipped := l.problems()
	soak := l.tallyOf("soak", kJWKS)
	soak.add(l.tallyOf("soak", kSign))
	soak.add(l.tallyOf("soak", kProxy))
	var b strings.Builder
	fmt.Fprintf(&b, "\nkmsgate soak: %s, local PEM key (file://), %.0f req/s (60%% proxied for %d distinct users in turn, 20%% sign API, 20%% JWKS), assertion cache %d; warm-up %s; RSS idle before the load %d MiB\n",
		dur, rate, users, cacheSize, warmFor.Round(time.Millisecond), rss0/1024)
	fmt.Fprintf(&b, "%8s %9s %12s %11s %10s %10s\n", "t", "RSS MiB", "live heap MiB", "goroutines", "requests", "signed")
	for _, s := range samples {
		fmt.Fprintf(&b, "%8s %9.1f %12.1f %11d %10d %10d\n", s.at.Round(time.Second), float64(s.rssKiB)/1024, s.heapMiB, s.goroutines, s.requests, s.signs)
	}
	third := len(samples) / 3
	mid, last := samples[third:2*third], samples[2*third:]
	peak := func(ss []soakSample, f func(soakSample) float64) float64 {
		m := 0.0
		for _, s := range ss {
			m = max(m, f(s))
		}
		return m
	}
	rss := func(s soakSample) float64 { return float64(s.rssKiB) / 1024 }
	heap := func(s soakSample) float64 { return s.heapMiB }
	gor := func(s soakSample) float64 { return float64(s.goroutines) }
	fmt.Fprintf(&b, "answers %d: %d 200, %d 503/429, %d other, max latency %s (at most %d connections; %d requests not sent while %d were in flight); peaks middle/last third: RSS %.1f/%.1f MiB, live heap %.1f/%.1f MiB, goroutines %.0f/%.0f; "+
		"with the load stopped and idle connections closed, after the warm-up and after the soak: live heap %.1f and %.1f MiB, goroutines %d and %d (less fasthttp's idle workers), open fds %d and %d\n",
		soak.n, soak.ok, soak.unavailable, soak.other, soak.max.Round(time.Millisecond), soakConns, skipped, maxInFlight,
		peak(mid, rss), peak(last, rss), peak(mid, heap), peak(last, heap), peak(mid, gor), peak(last, gor), heap0, heap1, g0, g1, fd0, fd1)
	writeFigures(t, "soak", b.String())

	if soak.ok != soak.n || len(others) > 0 {
		t.Errorf("with a local key every answer must be 200: %d of %d; first others:\n  %s\nkmsgate's log:\n%s", soak.ok, soak.n, strings.Join(others, "\n  "), g.log.String())
	}
	// The load must have been applied; a busy machine that stops both
	// processes for seconds costs some of it (counted as not sent).
	if soak.n < int(rate*dur.Seconds()/2) {
		t.Errorf("%d requests answered in %s, want about %.0f: the load generator fell behind", soak.n, dur, rate*dur.Seconds())
	}
	if n := up.bad.Load(); n > 0 {
		t.Errorf("the upstream received %d requests without a valid assertion", n)
	}
	if m, l := peak(mid, rss), peak(last, rss); l > m*1.10 {
		t.Errorf("RSS did not plateau: largest %.1f MiB in the last third, %.1f MiB in the middle one", l, m)
	}
	if heap1 > heap0*1.10+1 {
		t.Errorf("the live heap grew from %.1f MiB after the warm-up to %.1f MiB after the soak (load stopped, idle connections closed)", heap0, heap1)
	}
	if m := peak(samples, gor); m > float64(g0+2*soakConns+50) {
		t.Errorf("goroutines not bounded: %.0f under a load of at most %d connections (%d at rest)", m, soakConns, g0)
	}
	if g1 > g0+2 {
		t.Errorf("goroutines %d after the warm-up, %d after the soak (settled): a goroutine leak", g0, g1)
	}
	if err := g.stop(); err != nil {
		t.Errorf("kmsgate: %v", err)
	}
	if logs := g.log.String(); strings.Contains(logs, "panic:") {
		t.Errorf("kmsgate panicked:\n%s", logs)
	}
}
