package chaos_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	vaultapi "github.com/hashicorp/vault/api"
	"github.com/rs/zerolog"
)

// Timing of the fault-injection run. The gateway refreshes its keys every
// refresh and gives each request requestTimeout. A sign or proxied request
// answered later than requestTimeout+hang+stall is a hang, and recovery must
// come within refresh+slack+stall of the fault's end, where stall is the
// machine's own delay in that phase: the slowest JWKS answer, which never
// touches a backend. On a shared 2-core box, busy with other work, where
// the gateway runs with the race detector, whole seconds pass in which
// neither process runs; a hang that waits for the backend to come back
// still shows (the fault lasts longer than requestTimeout+hang in `make
// chaos`). The gateway's own histogram (kmsgate_http_request_duration_seconds)
// is reported: how many requests passed its 2.5 s and 5 s buckets.
const (
	refresh        = 2 * time.Second
	requestTimeout = 2 * time.Second
	hang           = 3 * time.Second
	slack          = time.Second
	nearBucket     = "2.5"
	farBucket      = "5"
)

// backendUnderTest is a backend's test server, running as a process of its
// own on a fixed 127.0.0.1 port, with one P-256 key in it.
type backendUnderTest struct {
	proc   *proc
	listen string                          // HOST:PORT the test server listens on
	keyURI func(proxyAddr string) string   // kmsgate's --key, through the fault proxy
	envFor func(proxyAddr string) []string // what kmsgate needs in its environment
}

// backendKinds are the remote backends the run takes down, in order.
var backendKinds = []struct {
	name  string
	setup func(t *testing.T) *backendUnderTest
}{
	{"awskms", setupAWS},
	{"vault", setupVault},
	{"gcpkms", setupGCP},
}

// setupAWS starts local-kms (an implementation of the AWS KMS API) with a
// persistent key database, and creates an ECC_NIST_P256 key behind
// alias/chaos.
func setupAWS(t *testing.T) *backendUnderTest {
	bin := binary(t, "KMSGATE_TEST_LOCALKMS_BIN", "backends/awskms/localkms", ".")
	dir := t.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := newProc(t, "local-kms", bin, nil, "-listen", listen, "-data", filepath.Join(dir, "data"), "-addr-file", filepath.Join(dir, "addr"))
	p.addrFile = filepath.Join(dir, "addr")
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	p.start()
	creds := aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{AccessKeyID: "AKIDKMSGATECHAOS", SecretAccessKey: "kmsgate-chaos-secret", Source: "test"}, nil
	})
	c := kms.NewFromConfig(aws.Config{Region: "eu-west-2", Credentials: creds}, func(o *kms.Options) { o.BaseEndpoint = aws.String(p.addr) })
	key, err := c.CreateKey(ctxTimeout(t, 30*time.Second), &kms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	if err != nil {
		t.Fatalf("local-kms: create key: %v", err)
	}
	if _, err := c.CreateAlias(ctxTimeout(t, 30*time.Second), &kms.CreateAliasInput{AliasName: aws.String("alias/chaos"), TargetKeyId: key.KeyMetadata.KeyId}); err != nil {
		t.Fatalf("local-kms: create alias: %v", err)
	}
	return &backendUnderTest{proc: p, listen: listen,
		keyURI: func(proxy string) string { return "awskms://" + proxy + "/alias/chaos" },
		envFor: func(string) []string {
			return []string{"AWS_ACCESS_KEY_ID=AKIDKMSGATECHAOS", "AWS_SECRET_ACCESS_KEY=kmsgate-chaos-secret", "AWS_REGION=eu-west-2",
				"AWS_CONFIG_FILE=/nonexistent/kmsgate-chaos/config", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent/kmsgate-chaos/credentials", "AWS_EC2_METADATA_DISABLED=true"}
		}}
}

// setupVault starts the Vault test server with file storage (so that it
// comes back with its keys after a kill) and creates Transit key chaos.
func setupVault(t *testing.T) *backendUnderTest {
	bin := binary(t, "KMSGATE_TEST_VAULT_BIN", "backends/vault/testvault", ".")
	dir := t.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	const token = "kmsgate-chaos-root"
	p := newProc(t, "vault", bin, nil, "-listen", listen, "-data", dir, "-root-token", token, "-addr-file", filepath.Join(dir, "addr"))
	p.addrFile = filepath.Join(dir, "addr")
	p.start()
	cfg := vaultapi.DefaultConfig()
	cfg.Address = p.addr
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(token)
	if _, err := c.Logical().Write("transit/keys/chaos", map[string]any{"type": "ecdsa-p256"}); err != nil {
		t.Fatalf("vault: create key: %v", err)
	}
	return &backendUnderTest{proc: p, listen: listen,
		keyURI: func(string) string { return "hashivault://chaos" },
		envFor: func(proxy string) []string { return []string{"VAULT_ADDR=http://" + proxy, "VAULT_TOKEN=" + token} }}
}

// setupGCP starts the Cloud KMS fake as a process (fakekmsd) with one
// enabled P-256 version whose key is kept in a file, so that the fake comes
// back with the same version after a kill.
func setupGCP(t *testing.T) *backendUnderTest {
	bin := binary(t, "", "gateway/chaos", "./fakekmsd")
	dir := t.TempDir()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	const name = "projects/chaos/locations/global/keyRings/r/cryptoKeys/k"
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := newProc(t, "fakekmsd", bin, nil, "-key", name, "-key-file", keyFile, "-listen", listen, "-addr-file", filepath.Join(dir, "addr"))
	p.addrFile = filepath.Join(dir, "addr")
	p.start()
	return &backendUnderTest{proc: p, listen: listen,
		keyURI: func(proxy string) string { return "gcpkms://" + name + "?endpoint=" + proxy },
		envFor: func(string) []string { return nil }}
}

// faultProxy is a toxiproxy proxy between kmsgate and a backend.
type faultProxy struct {
	t    testing.TB
	p    *toxiproxy.Proxy
	addr string
}

func newFaultProxy(t testing.TB, name, upstream string) *faultProxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return &faultProxy{t: t, p: p, addr: p.Listen}
}

// toxic adds a toxic given as toxiproxy's JSON.
func (f *faultProxy) toxic(js string) {
	f.t.Helper()
	if _, err := f.p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		f.t.Fatalf("toxic %s: %v", js, err)
	}
}

// clear removes every toxic.
func (f *faultProxy) clear() { f.p.Toxics.ResetToxics(context.Background()) }

// down closes the listener and every connection through it; up listens
// again on the same address.
func (f *faultProxy) down() { f.p.Stop() }
func (f *faultProxy) up() {
	f.t.Helper()
	if err := f.p.Start(); err != nil {
		f.t.Fatalf("fault proxy: listen again on %s: %v", f.addr, err)
	}
}

// fault is one way of taking the backend away.
type fault struct {
	name       string
	begin, end func()
	bites      bool // signing must fail while it lasts (503 with Retry-After)
	// refreshFails: a refresh that runs while it lasts fails (a reset or a
	// refused connection); one that meets a frozen backend or a black hole
	// may instead wait and succeed once it is over.
	refreshFails bool
}

func faultsFor(fp *faultProxy, b *backendUnderTest) []fault {
	return []fault{
		{name: "latency", bites: false,
			begin: func() {
				fp.toxic(`{"name":"lat","type":"latency","stream":"downstream","attributes":{"latency":1200,"jitter":800}}`)
			},
			end: fp.clear},
		{name: "reset", bites: true, refreshFails: true,
			begin: func() { fp.toxic(`{"name":"rst","type":"reset_peer","stream":"upstream","attributes":{"timeout":0}}`) },
			end:   fp.clear},
		{name: "blackhole", bites: true,
			begin: func() { fp.toxic(`{"name":"hole","type":"timeout","stream":"upstream","attributes":{"timeout":0}}`) },
			end:   fp.clear},
		{name: "sigstop", bites: true, begin: b.proc.freeze, end: b.proc.thaw},
		{name: "kill", bites: true, refreshFails: true, begin: b.proc.kill, end: b.proc.start},
	}
}

// row is one line of the figure table.
type row struct {
	backend, fault              string
	bites, refreshFails         bool
	t                           tally // sign and proxy requests
	jwks                        tally
	signRecovery, refreshRecov  time.Duration
	recovered, refreshRecovered bool
	stall                       time.Duration // the slowest JWKS answer while the fault lasted and recovery was awaited
	gap                         time.Duration // the test process's longest stall meanwhile
	readyz                      int
	refreshErrors               int
}

// TestChaos runs kmsgate (built with the race detector) under a steady load
// of JWKS, sign API and proxied requests, each proxied request by a new
// user so that every one needs a signature, while its backend fails behind
// a toxiproxy fault proxy: latency spikes, connection resets, a black hole,
// the backend frozen (SIGSTOP), and killed and started again; for each of
// local-kms, Vault and the Cloud KMS fake. See assertRun for what it
// asserts.
func TestChaos(t *testing.T) {
	faultFor := envDuration(t, "KMSGATE_CHAOS_FAULT", 2500*time.Millisecond)
	if faultFor <= max(refresh, requestTimeout) {
		t.Fatalf("KMSGATE_CHAOS_FAULT=%s: want longer than one --refresh (%s) and the request deadline (%s), so that every fault is felt", faultFor, refresh, requestTimeout)
	}
	rate := float64(envInt(t, "KMSGATE_CHAOS_RATE", 20))
	only := os.Getenv("KMSGATE_CHAOS_BACKENDS")
	bin := binary(t, "", ".", "./cmd/kmsgate", "-race")
	started := time.Now()
	var mu sync.Mutex
	var rows []row
	var leaks []string
	for _, bk := range backendKinds {
		if only != "" && !slices.Contains(strings.Split(only, ","), bk.name) {
			continue
		}
		t.Run(bk.name, func(t *testing.T) {
			r, leak := runChaos(t, bk.name, bk.setup(t), bin, faultFor, rate)
			mu.Lock()
			rows, leaks = append(rows, r...), append(leaks, leak)
			mu.Unlock()
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nkmsgate fault-injection run: %s per fault, %.0f req/s each of JWKS, sign API and proxy (a new user per request), --refresh %s, --request-timeout %s, kmsgate built with -race; %s in all\n",
		faultFor, rate, refresh, requestTimeout, time.Since(started).Round(time.Second))
	fmt.Fprintf(&b, "%-7s %-10s %6s %6s %6s %6s %8s | %6s %6s %8s %7s | %9s %9s %7s %8s\n",
		"backend", "fault", "sign+p", "200", "503", "other", "max ms", "jwks", "200", "max ms", "gap ms", "recover", "refresh", "readyz", "refr.err")
	for _, r := range rows {
		rec, ref := "none", "none"
		if r.recovered {
			rec = ms(r.signRecovery) + " ms"
		}
		if r.refreshRecovered {
			ref = ms(r.refreshRecov) + " ms"
		}
		fmt.Fprintf(&b, "%-7s %-10s %6d %6d %6d %6d %8s | %6d %6d %8s %7s | %9s %9s %7d %8d\n",
			r.backend, r.fault, r.t.n, r.t.ok, r.t.unavailable, r.t.other, ms(r.t.max), r.jwks.n, r.jwks.ok, ms(r.jwks.max), ms(r.gap), rec, ref, r.readyz, r.refreshErrors)
	}
	b.WriteString("sign+p: sign API and proxied requests started while the fault lasted and until recovery was awaited (one --refresh + 1 s + stall); jwks max: the slowest JWKS answer, which touches no backend: the machine's stall; gap: the longest time the test process itself did not run; recover: from the end of the fault (kill: the restart) to the first 200 of a request started after it; refresh: to the first successful key refresh; readyz: /readyz in the middle of the fault; refr.err: failed refreshes meanwhile\n")
	for _, l := range leaks {
		b.WriteString(l + "\n")
	}

	writeFigures(t, "chaos", b.String())
}

// runChaos runs every fault against one backend and returns the table rows
// and a line on goroutines and open files before and after.
func runChaos(t *testing.T, name string, b *backendUnderTest, bin string, faultFor time.Duration, rate float64) ([]row, string) {
	fp := newFaultProxy(t, name, b.listen)
	up := startUpstream(t, 1)
	up.close = true

	// Readiness at start: with the backend unreachable (the fault proxy
	// refuses connections), kmsgate starts unready, serves no JWKS and
	// signs nothing; it becomes ready within one --refresh of the backend
	// coming back.
	fp.down()
	env := cleanEnv(append(b.envFor(fp.addr), "KMSGATE_LOG_LEVEL=warn")...)
	launched := time.Now()
	g := startGateway(t, bin, env, "--key", b.keyURI(fp.addr), "--refresh", refresh.String(), "--request-timeout", requestTimeout.String(),
		"--upstream", up.srv.URL, "--identity", "headers", "--trusted-proxy", "127.0.0.1", "--allow", "any-authenticated", "--prepublish", "1h", "--pprof")
	g.waitListening()
	startup := time.Since(launched)
	if st, body, _ := g.get(g.admin + "/readyz"); st != http.StatusServiceUnavailable || !strings.Contains(string(body), "not_loaded") {
		t.Errorf("/readyz with the backend down at start: %d %s, want 503 naming the key URI", st, body)
	}
	if st, _, h := g.get(g.url + "/.well-known/jwks.json"); st != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
		t.Errorf("JWKS before any key loaded: %d (Retry-After %q), want 503 with Retry-After", st, h.Get("Retry-After"))
	}
	fp.up()
	ready := g.waitReady(30 * time.Second)
	if ready > refresh+slack {
		t.Errorf("ready %s after the backend came back, want within one --refresh (%s) + %s", ready.Round(time.Millisecond), refresh, slack)
	}
	t.Logf("%s: kmsgate listening %s after launch (first refresh failed), ready %s after the backend came back", name, startup.Round(time.Millisecond), ready.Round(time.Millisecond))

	st, jwksJSON, _ := g.get(g.url + "/.well-known/jwks.json")
	if st != http.StatusOK {
		t.Fatalf("JWKS: %d", st)
	}
	ver, err := newVerifier(jwksJSON, g.url)
	if err != nil {
		t.Fatal(err)
	}
	up.ver.Store(ver)
	l := newLoad(t, g, jwksJSON, ver, 0)
	l.rates = [nKinds]float64{rate, rate, rate}
	l.keep, l.deadline = true, requestTimeout

	// Before: a baseline under load, then goroutines and open files with
	// every idle connection closed (the load's, the upstream's, and the
	// backend's through the fault proxy), settled.
	settle := func() (int, int, int) {
		return g.settled(func() {
			l.client.CloseIdleConnections()
			up.srv.CloseClientConnections()
			fp.down()
			fp.up()
		})
	}
	steady := max(500*time.Millisecond, faultFor/4)
	l.setPhase("baseline")
	l.start()
	time.Sleep(steady)
	l.halt()
	g0, idle0, fd0 := settle()

	var rows []row
	onlyFaults := os.Getenv("KMSGATE_CHAOS_FAULTS")
	for _, f := range faultsFor(fp, b) {
		if onlyFaults != "" && !slices.Contains(strings.Split(onlyFaults, ","), f.name) {
			continue
		}
		errs0 := g.metric("kmsgate_key_refreshes_total", `result="error"`)
		l.setPhase(f.name)
		l.start()
		f.begin()
		time.Sleep(faultFor / 2)
		readyz, _, _ := g.get(g.admin + "/readyz")
		time.Sleep(faultFor - faultFor/2)
		oks := g.metric("kmsgate_key_refreshes_total", `result="ok"`)
		f.end()
		ended := time.Now()
		r := row{backend: name, fault: f.name, bites: f.bites, refreshFails: f.refreshFails, readyz: readyz}
		// Recovery, within one --refresh (+ slack, + the machine's stall) of
		// the fault's end: the first 200 of a sign or proxied request started
		// after it, and the first successful refresh.
		for ; time.Since(ended) < refresh+slack+l.tallyOf(f.name, kJWKS).max; time.Sleep(50 * time.Millisecond) {
			if !r.recovered {
				r.signRecovery, r.recovered = l.firstOK(ended)
			}
			if !r.refreshRecovered && g.metric("kmsgate_key_refreshes_total", `result="ok"`) > oks {
				r.refreshRecov, r.refreshRecovered = time.Since(ended), true
			}
		}
		// From then on every answer must be 200. The load stops before the
		// next fault, so that no request of this phase meets it.
		l.setPhase("after " + f.name)
		time.Sleep(steady)
		l.halt()
		r.t = l.tallyOf(f.name, kSign)
		r.t.add(l.tallyOf(f.name, kProxy))
		r.jwks = l.tallyOf(f.name, kJWKS)
		r.stall, r.gap = r.jwks.max, l.gap(f.name)
		r.refreshErrors = int(g.metric("kmsgate_key_refreshes_total", `result="error"`) - errs0)
		rows = append(rows, r)
	}
	l.setPhase("final")
	l.start()
	time.Sleep(steady)
	l.halt()
	g1, idle1, fd1 := settle()

	assertRun(t, l, rows, faultFor)
	all := g.metric("kmsgate_http_request_duration_seconds_count")
	near := g.metric("kmsgate_http_request_duration_seconds_bucket", `le="`+nearBucket+`"`)
	far := g.metric("kmsgate_http_request_duration_seconds_bucket", `le="`+farBucket+`"`)
	if g1 > g0+2 {
		_, dump, _ := g.get(g.admin + "/debug/pprof/goroutine?debug=1")
		t.Errorf("goroutines %d before the faults, %d after (settled, less fasthttp's idle workers): a goroutine leak; goroutines now:\n%s", g0, g1, dump)
	}
	if fd1 > fd0+1 {
		t.Errorf("open files %d before the faults, %d after (settled): a connection leak; open now:\n%s", fd0, fd1, g.fdList())
	}
	if n := up.bad.Load(); n > 0 {
		t.Errorf("the upstream received %d requests without a valid assertion", n)
	}
	if err := g.stop(); err != nil {
		t.Errorf("kmsgate: %v", err)
	}
	logs := g.log.String()
	for _, bad := range []string{"DATA RACE", "panic:", "goroutine leak"} {
		if strings.Contains(logs, bad) {
			t.Errorf("kmsgate's output has %q:\n%s", bad, logs)
		}
	}
	var up200 tally
	l.mu.Lock()
	phases := slices.Clone(l.phases)
	l.mu.Unlock()
	for _, p := range phases {
		if healthy(p) {
			up200.add(l.tallyOf(p, kSign))
			up200.add(l.tallyOf(p, kProxy))
		}
	}
	return rows, fmt.Sprintf("%s: with the backend up (baseline, after each fault, final) %d sign and proxied requests, %d answered 200, %d 503 at the deadline; goroutines %d before, %d after (settled, idle connections closed; plus %d and %d idle fasthttp workers); open fds %d before, %d after; "+
		"inside kmsgate %.0f of %.0f requests took over %s s, %.0f over %s s; kmsgate listening %s after launch with the backend down, ready %s after it came back",
		name, up200.n, up200.ok, up200.unavailable, g0, g1, idle0, idle1, fd0, fd1, all-near, all, nearBucket, all-far, farBucket, startup.Round(time.Millisecond), ready.Round(time.Millisecond))
}

// healthy reports whether the backend is up during a phase of the run.
func healthy(phase string) bool {
	return phase == "baseline" || phase == "final" || strings.HasPrefix(phase, "after ")
}

// assertRun checks the tallies of one backend's run: JWKS always answered
// with the last good set; every other answer either 200 with a token that
// verifies against it, or 503 with Retry-After; no sign or proxied answer
// later than the request deadline + hang + the phase's stall; the faults
// that take signing away produce 503s; recovery (first 200, first good
// refresh) within one --refresh (+ slack + stall) of the fault's end;
// /readyz stays 200 once the keys have loaded (readiness means "every key
// URI has loaded"; the last good set keeps being served); and every answer
// after recovery is 200.
func assertRun(t *testing.T, l *load, rows []row, faultFor time.Duration) {
	t.Helper()
	others, skipped := l.problems()
	if len(others) > 0 {
		t.Errorf("answers neither 200 (valid) nor 503/429 with Retry-After:\n  %s", strings.Join(others, "\n  "))
	}
	if skipped > 0 {
		t.Errorf("%d requests not sent: %d were in flight", skipped, maxInFlight)
	}
	l.mu.Lock()
	phases := slices.Clone(l.phases)
	l.mu.Unlock()
	for _, p := range phases {
		for k := range nKinds {
			tl := l.tallyOf(p, k)
			stall := l.tallyOf(p, kJWKS).max
			if k != kJWKS && tl.max > requestTimeout+hang+stall {
				t.Errorf("%s %s: an answer after %s (%s of it waiting for a connection), later than the request deadline %s + %s + this phase's stall %s (its slowest JWKS answer)",
					p, kindNames[k], tl.max.Round(time.Millisecond), tl.maxConnWait.Round(time.Millisecond), requestTimeout, hang, stall.Round(time.Millisecond))
			}
			if k == kJWKS && tl.ok != tl.n {
				t.Errorf("%s: JWKS answered %d of %d times with the last good set", p, tl.ok, tl.n)
			}
			if healthy(p) && (tl.fastUnavailable > 0 || tl.ok == 0 && tl.n > 0) {
				t.Errorf("%s %s: %d of %d answered 200 with the backend healthy, %d answered 503 before the deadline; 503s seen:\n  %s",
					p, kindNames[k], tl.ok, tl.n, tl.fastUnavailable, strings.Join(l.unavailableIn(p), "\n  "))
			}
		}
	}
	for _, r := range rows {
		f, bites := r.fault, r.bites
		if bites && r.t.unavailable == 0 {
			t.Errorf("%s: no 503 while the backend was away for %s: was the fault injected?", f, faultFor)
		}
		if !r.recovered {
			t.Errorf("%s: no sign or proxied request answered 200 within one --refresh (%s) + %s + the stall %s of the fault's end", f, refresh, slack, r.stall)
		}
		if !r.refreshRecovered {
			t.Errorf("%s: no successful key refresh within one --refresh (%s) + %s + the stall %s of the fault's end", f, refresh, slack, r.stall)
		}
		if r.readyz != http.StatusOK {
			t.Errorf("%s: /readyz %d during the fault; once loaded, readiness stays (the last good set is served)", f, r.readyz)
		}
		if r.refreshFails && r.refreshErrors == 0 {
			t.Errorf("%s: no failed refresh counted (kmsgate_key_refreshes_total{result=\"error\"}) while the backend was away", f)
		}
	}
}
