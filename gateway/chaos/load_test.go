package chaos_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// kind is a kind of request the load generator sends.
type kind int

const (
	kJWKS  kind = iota // GET /.well-known/jwks.json
	kSign              // POST /v1/sign with the client's bearer token
	kProxy             // a proxied request with a trusted X-Forwarded-User
	nKinds
)

var kindNames = [nKinds]string{"jwks", "sign", "proxy"}

// class sorts answers: 200 with a valid body, 503 (or 429) with
// Retry-After, and everything else (a failure of the run).
type class int

const (
	cOK class = iota
	cUnavailable
	cOther
)

// assertionHeader is kmsgate's default assertion header.
const assertionHeader = "X-Kmsgate-Jwt-Assertion"

// verifier checks tokens with go-jose (not kmsgate's code) against a JWKS.
type verifier struct {
	set    jose.JSONWebKeySet
	issuer string
}

func newVerifier(jwksJSON []byte, issuer string) (*verifier, error) {
	v := &verifier{issuer: issuer}
	if err := json.Unmarshal(jwksJSON, &v.set); err != nil {
		return nil, fmt.Errorf("parse JWKS: %w", err)
	}
	if len(v.set.Keys) == 0 {
		return nil, errors.New("the JWKS has no key")
	}
	return v, nil
}

// verify checks an ES256 token's signature with the key its kid names in
// the set, its issuer, subject and time claims.
func (v *verifier) verify(token, sub string) error {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return err
	}
	if len(tok.Headers) != 1 {
		return fmt.Errorf("%d signatures", len(tok.Headers))
	}
	keys := v.set.Key(tok.Headers[0].KeyID)
	if len(keys) != 1 {
		return fmt.Errorf("kid %q is not in the served JWKS", tok.Headers[0].KeyID)
	}
	var c jwt.Claims
	if err := tok.Claims(keys[0].Key, &c); err != nil {
		return err
	}
	return c.ValidateWithLeeway(jwt.Expected{Issuer: v.issuer, Subject: sub, Time: time.Now()}, 5*time.Second)
}

// upstream is the app behind kmsgate's proxy. It verifies the assertion of
// one request in verifyEvery (every one when 1) and answers 200 "verified",
// or 500 naming what was wrong, so that the load generator sees any request
// forwarded without a valid assertion.
type upstream struct {
	srv         *httptest.Server
	close       bool // answer with Connection: close, so that kmsgate keeps no idle connection to it
	ver         atomic.Pointer[verifier]
	verifyEvery int64
	n           atomic.Int64
	bad         atomic.Int64
}

func startUpstream(t testing.TB, verifyEvery int) *upstream {
	t.Helper()
	u := &upstream{verifyEvery: int64(verifyEvery)}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(u.serve))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.srv.Listener = ln
	u.srv.Start()
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	if u.close {
		w.Header().Set("Connection", "close")
	}
	tok := r.Header.Get(assertionHeader)
	fail := func(msg string) {
		u.bad.Add(1)
		http.Error(w, msg, http.StatusInternalServerError)
	}
	if tok == "" {
		fail("forwarded without an assertion")
		return
	}
	if u.n.Add(1)%u.verifyEvery == 0 {
		v := u.ver.Load()
		if v == nil {
			fail("no JWKS to verify with yet")
			return
		}
		if err := v.verify(tok, r.Header.Get("X-Chaos-User")); err != nil {
			fail("bad assertion: " + err.Error())
			return
		}
	}
	_, _ = io.WriteString(w, "verified")
}

// tally counts the answers of one kind of request in one phase.
type tally struct {
	n, ok, unavailable, other int
	fastUnavailable           int // 503s (429s) answered before load.deadline: the gateway gave up without waiting for the backend
	max                       time.Duration
	maxConnWait               time.Duration // of the slowest request: how long it waited for a connection to the gateway
}

func (a *tally) add(b tally) {
	a.n += b.n
	a.ok += b.ok
	a.unavailable += b.unavailable
	a.other += b.other
	a.fastUnavailable += b.fastUnavailable
	if b.max > a.max {
		a.max, a.maxConnWait = b.max, b.maxConnWait
	}
}

// outcome is when a request that was answered 200 started, and how long it
// took.
type outcome struct {
	start time.Time
	took  time.Duration
}

// load sends a steady, bounded load of the three kinds of requests to a
// gateway, each kind at its own rate, as an open loop (the rate does not
// fall when answers are slow) with at most maxInFlight requests in flight,
// and tallies the answers per phase.
type load struct {
	t        testing.TB
	g        *gateway
	rates    [nKinds]float64 // requests per second
	users    int             // distinct users cycled through; 0: a new user for every request
	keep     bool            // keep the 200s of sign and proxied requests (for recovery times)
	deadline time.Duration   // the gateway's request deadline, to tell fast 503s from timeouts

	jwks        []byte
	ver         *verifier
	verifyEvery int64
	client      *http.Client
	seq         atomic.Int64
	signed      atomic.Int64

	mu          sync.Mutex
	phase       string
	phases      []string
	tallies     map[string]*[nKinds]tally
	outcomes    []outcome
	others      []string
	unavailable map[string][]string // the first 503s and 429s of each phase, for diagnosis
	skipped     int

	gapMu sync.Mutex
	gaps  map[string]time.Duration // per phase, the longest this process went without running (see watch)

	stop    chan struct{}
	sched   sync.WaitGroup
	reqs    sync.WaitGroup
	sem     chan struct{}
	running bool
}

const maxInFlight = 512

// clientTimeout is how long the load generator waits for an answer: a
// request not answered by then fails the run.
const clientTimeout = 30 * time.Second

// newLoad returns a load on g that opens at most maxConns connections to it
// (0: one per request in flight); requests beyond wait in the client, which
// keeps the gateway's connection count, and so its buffers, independent of
// how slow a busy machine makes it.
func newLoad(t testing.TB, g *gateway, jwksJSON []byte, ver *verifier, maxConns int) *load {
	tr := &http.Transport{MaxIdleConns: maxInFlight, MaxIdleConnsPerHost: maxInFlight, MaxConnsPerHost: maxConns, IdleConnTimeout: 30 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	return &load{t: t, g: g, jwks: jwksJSON, ver: ver, verifyEvery: 1,
		client:  &http.Client{Transport: tr, Timeout: clientTimeout},
		tallies: map[string]*[nKinds]tally{}, unavailable: map[string][]string{}, gaps: map[string]time.Duration{}, sem: make(chan struct{}, maxInFlight)}
}

// setPhase names the phase that requests started from now on count in.
func (l *load) setPhase(p string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.phase = p
	if _, ok := l.tallies[p]; !ok {
		l.tallies[p] = &[nKinds]tally{}
		l.phases = append(l.phases, p)
	}
}

// start starts sending.
func (l *load) start() {
	if l.running {
		return
	}
	l.running = true
	l.stop = make(chan struct{})
	for k := range nKinds {
		if l.rates[k] <= 0 {
			continue
		}
		l.sched.Add(1)
		go l.schedule(k)
	}
	l.sched.Add(1)
	go l.watch()
}

// watch records, per phase, the longest gap between ticks of a 10 ms
// ticker: how long this process (the load generator, the upstream and the
// fault proxy) went without running on a busy machine.
func (l *load) watch() {
	defer l.sched.Done()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-l.stop:
			return
		case now := <-tick.C:
			gap := now.Sub(last) - 10*time.Millisecond
			last = now
			l.mu.Lock()
			phase := l.phase
			l.mu.Unlock()
			l.gapMu.Lock()
			l.gaps[phase] = max(l.gaps[phase], gap)
			l.gapMu.Unlock()
		}
	}
}

// gap returns the longest stall of this process seen in a phase.
func (l *load) gap(phase string) time.Duration {
	l.gapMu.Lock()
	defer l.gapMu.Unlock()
	return l.gaps[phase]
}

// halt stops sending and waits for every request in flight.
func (l *load) halt() {
	if !l.running {
		return
	}
	l.running = false
	close(l.stop)
	l.sched.Wait()
	l.reqs.Wait()
}

func (l *load) schedule(k kind) {
	defer l.sched.Done()
	// Requests are sent as they fall due since the start, so that a tick
	// the runtime delivered late (a busy machine) is made up for.
	tick := time.NewTicker(max(time.Duration(float64(time.Second)/l.rates[k]), 2*time.Millisecond))
	defer tick.Stop()
	start, sent := time.Now(), 0
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		for due := int(time.Since(start).Seconds() * l.rates[k]); sent < due; sent++ {
			select {
			case l.sem <- struct{}{}:
			default:
				l.mu.Lock()
				l.skipped++
				l.mu.Unlock()
				continue
			}
			l.reqs.Add(1)
			go func() {
				defer l.reqs.Done()
				defer func() { <-l.sem }()
				l.one(k)
			}()
		}
	}
}

// user returns the next user name.
func (l *load) user() string {
	n := l.seq.Add(1)
	if l.users > 0 {
		n %= int64(l.users)
	}
	return "u" + strconv.FormatInt(n, 10)
}

// one sends one request of kind k and records its outcome.
func (l *load) one(k kind) {
	l.mu.Lock()
	phase := l.phase
	l.mu.Unlock()
	var req *http.Request
	user := l.user()
	switch k {
	case kJWKS:
		req, _ = http.NewRequest(http.MethodGet, l.g.url+"/.well-known/jwks.json", nil)
	case kSign:
		body := `{"claims":{"sub":"` + user + `","aud":"chaos"},"ttl":"5m"}`
		req, _ = http.NewRequest(http.MethodPost, l.g.url+"/v1/sign", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+l.g.token)
		req.Header.Set("Content-Type", "application/json")
	case kProxy:
		req, _ = http.NewRequest(http.MethodGet, l.g.url+"/app/"+user, nil)
		req.Header.Set("X-Forwarded-User", user)
		req.Header.Set("X-Forwarded-Email", user+"@example.com")
		req.Header.Set("X-Chaos-User", user)
	}
	start := time.Now()
	var gotConn time.Time
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { gotConn = time.Now() }}))
	resp, err := l.client.Do(req)
	var body []byte
	if err == nil {
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	took := time.Since(start)
	c, why := cOther, ""
	switch {
	case err != nil:
		why = err.Error()
	case k == kJWKS:
		if resp.StatusCode == http.StatusOK && bytes.Equal(body, l.jwks) {
			c = cOK
		} else {
			why = fmt.Sprintf("JWKS %d, body %.80q", resp.StatusCode, body)
		}
	case resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests:
		if resp.Header.Get("Retry-After") != "" {
			c = cUnavailable
			why = fmt.Sprintf("%s %d: %.200s", kindNames[k], resp.StatusCode, body)
		} else {
			why = fmt.Sprintf("%s %d without Retry-After", kindNames[k], resp.StatusCode)
		}
	case resp.StatusCode != http.StatusOK:
		why = fmt.Sprintf("%s %d: %.200s", kindNames[k], resp.StatusCode, body)
	case k == kSign:
		var out struct{ Token string }
		if err := json.Unmarshal(body, &out); err != nil || out.Token == "" {
			why = fmt.Sprintf("sign 200 without a token: %.80q", body)
			break
		}
		if l.signed.Add(1)%l.verifyEvery != 0 {
			c = cOK
			break
		}
		if err := l.ver.verify(out.Token, user); err != nil {
			why = "sign 200 with a token that does not verify: " + err.Error()
		} else {
			c = cOK
		}
	case k == kProxy:
		if string(body) == "verified" {
			c = cOK
		} else {
			why = fmt.Sprintf("proxy 200 with body %.80q", body)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t := &l.tallies[phase][k]
	t.n++
	switch c {
	case cOK:
		t.ok++
	case cUnavailable:
		t.unavailable++
		if took < l.deadline {
			t.fastUnavailable++
		}
		if len(l.unavailable[phase]) < 5 {
			l.unavailable[phase] = append(l.unavailable[phase], fmt.Sprintf("%s after %s", why, took.Round(time.Millisecond)))
		}
	default:
		t.other++
		if len(l.others) < 20 {
			l.others = append(l.others, fmt.Sprintf("[%s] %s after %s", phase, why, took.Round(time.Millisecond)))
		}
	}
	if took > t.max {
		t.max, t.maxConnWait = took, gotConn.Sub(start)
	}
	if l.keep && c == cOK && k != kJWKS {
		l.outcomes = append(l.outcomes, outcome{start: start, took: took})
	}
}

// tallyOf returns the tally of one phase and kind.
func (l *load) tallyOf(phase string, k kind) tally {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ts, ok := l.tallies[phase]; ok {
		return ts[k]
	}
	return tally{}
}

// firstOK returns how long after since the first sign or proxied request
// that started at or after since was answered 200, and whether there was
// one (load.keep must be set). Outcomes are kept in the order they were
// answered, so the search stops at the first one answered before since.
func (l *load) firstOK(since time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	best, found := time.Duration(0), false
	for i := len(l.outcomes) - 1; i >= 0; i-- {
		o := l.outcomes[i]
		end := o.start.Add(o.took)
		if end.Before(since) {
			break
		}
		if d := end.Sub(since); !o.start.Before(since) && (!found || d < best) {
			best, found = d, true
		}
	}
	return best, found
}

// problems returns the first answers that were neither 200 nor 503/429
// with Retry-After, and the count of requests not sent because maxInFlight
// were in flight.
func (l *load) problems() ([]string, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.others...), l.skipped
}

// ms formats a duration in milliseconds.
func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

// unavailableIn returns the first 503 and 429 answers of a phase.
func (l *load) unavailableIn(phase string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.unavailable[phase])
}
