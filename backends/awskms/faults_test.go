package awskms_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/awskms"
	"github.com/kmsgate/kmsgate/jwks"
)

// faultSetup is one P-256 key behind an alias, a fault-injecting proxy in
// front of local-kms, and the backend opened through the proxy with its
// versions loaded.
type faultSetup struct {
	p   *proxy
	b   backends.Backend
	arn string
	d   []byte
}

func newFaultSetup(t *testing.T, opts backends.Options) *faultSetup {
	t.Helper()
	ep := localKMS(t)
	a := newAdmin(t, ep)
	key := a.p256()
	alias := strings.TrimSuffix(aliasPrefix(t), "/")
	a.alias(alias, *key.KeyId)
	p := newProxy(t, ep)
	b := open(t, hostURI(t, p.URL, alias), opts)
	if _, err := b.Versions(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	p.resetCounts()
	d := sha256.Sum256([]byte(t.Name()))
	return &faultSetup{p: p, b: b, arn: *key.Arn, d: d[:]}
}

// TestRetriesOn5xx: 5xx answers (an HTML page from a load balancer, AWS's
// KMSInternalException, DependencyTimeoutException) are retried and the
// signature comes through; the counts prove that only this backend retries
// (the SDK's retryer is off: DefaultAttempts calls in all, not more).
func TestRetriesOn5xx(t *testing.T) {
	s := newFaultSetup(t, backends.Options{})
	s.p.inject(fault{op: "Sign", n: 1, status: 503, body: "<html><body>503 Service Unavailable</body></html>"})
	s.p.inject(fault{op: "Sign", n: 1, status: 500, body: awsError("KMSInternalException")})
	s.p.inject(fault{op: "Sign", n: 1, status: 503, body: awsError("DependencyTimeoutException")})
	sig, err := s.b.Sign(ctxT(t), s.arn, s.d)
	if err != nil {
		t.Fatalf("sign after three 5xx answers: %v", err)
	}
	if len(sig) != 64 {
		t.Fatalf("signature %d bytes", len(sig))
	}
	if n := s.p.count("Sign"); n != 4 {
		t.Fatalf("%d Sign calls, want 4 (3 failed + 1)", n)
	}

	// A failure that lasts: exactly DefaultAttempts calls, then
	// ErrUnavailable carrying AWS's code.
	s.p.resetCounts()
	s.p.inject(fault{op: "Sign", n: 100, status: 500, body: awsError("KMSInternalException")})
	_, err = s.b.Sign(ctxT(t), s.arn, s.d)
	if !errors.Is(err, backends.ErrUnavailable) || !strings.Contains(err.Error(), "KMSInternalException") {
		t.Fatalf("lasting 500: %v, want ErrUnavailable with KMSInternalException", err)
	}
	if n := s.p.count("Sign"); n != awskms.DefaultAttempts {
		t.Fatalf("%d Sign calls, want %d", n, awskms.DefaultAttempts)
	}
	s.p.clearFaults()

	// Refreshes are retried the same way.
	s.p.resetCounts()
	s.p.inject(fault{op: "DescribeKey", n: 2, status: 502, body: "bad gateway"})
	if _, err := s.b.Versions(ctxT(t)); err != nil {
		t.Fatalf("versions after two 502s: %v", err)
	}
	if n := s.p.count("DescribeKey"); n != 3 {
		t.Fatalf("%d DescribeKey calls, want 3", n)
	}
}

// TestThrottling: ThrottlingException is retried with backoff; when it
// lasts, the error is ErrThrottled (the gateway answers 429).
func TestThrottling(t *testing.T) {
	s := newFaultSetup(t, backends.Options{})
	s.p.inject(fault{op: "Sign", n: 2, status: 400, body: awsError("ThrottlingException")})
	if _, err := s.b.Sign(ctxT(t), s.arn, s.d); err != nil {
		t.Fatalf("sign after two throttles: %v", err)
	}
	if n := s.p.count("Sign"); n != 3 {
		t.Fatalf("%d Sign calls, want 3", n)
	}
	s.p.resetCounts()
	s.p.inject(fault{op: "Sign", n: 100, status: 400, body: awsError("ThrottlingException")})
	_, err := s.b.Sign(ctxT(t), s.arn, s.d)
	if !errors.Is(err, backends.ErrThrottled) || backends.Kind(err) != "throttled" || !strings.Contains(err.Error(), "ThrottlingException") {
		t.Fatalf("lasting throttling: %v (kind %q), want ErrThrottled", err, backends.Kind(err))
	}
	if n := s.p.count("Sign"); n != awskms.DefaultAttempts {
		t.Fatalf("%d Sign calls, want %d", n, awskms.DefaultAttempts)
	}
}

// TestNoRetryOnClientErrors: errors that another try cannot fix are
// returned after one call, mapped to their typed errors.
func TestNoRetryOnClientErrors(t *testing.T) {
	s := newFaultSetup(t, backends.Options{})
	for _, c := range []struct {
		status int
		code   string
		want   error
	}{
		{400, "AccessDeniedException", backends.ErrPermission},
		{400, "UnrecognizedClientException", backends.ErrPermission},
		{403, "InvalidSignatureException", backends.ErrPermission},
		{400, "DisabledException", backends.ErrDisabled},
		{400, "KMSInvalidStateException", backends.ErrDisabled},
		{400, "NotFoundException", backends.ErrNotFound},
		{400, "InvalidKeyUsageException", backends.ErrKeyType},
		{400, "ValidationException", nil},
	} {
		s.p.resetCounts()
		s.p.inject(fault{op: "Sign", n: 1, status: c.status, body: awsError(c.code)})
		_, err := s.b.Sign(ctxT(t), s.arn, s.d)
		if err == nil || !strings.Contains(err.Error(), c.code) || !strings.Contains(err.Error(), s.arn) {
			t.Errorf("%s: %v, want an error naming the code and the key", c.code, err)
		}
		if c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.code, err, c.want)
		}
		if c.want == nil && backends.Kind(err) != "unknown" {
			t.Errorf("%s: kind %q, want unknown", c.code, backends.Kind(err))
		}
		if n := s.p.count("Sign"); n != 1 {
			t.Errorf("%s: %d Sign calls, want 1", c.code, n)
		}
	}
	s.p.clearFaults()
	if _, err := s.b.Sign(ctxT(t), s.arn, s.d); err != nil {
		t.Fatalf("sign after the faults: %v", err)
	}
}

// TestTimeoutRetried: an attempt that hangs is abandoned after the attempt
// timeout and retried; a backend that keeps hanging fails with
// ErrUnavailable at the caller's deadline, not later.
func TestTimeoutRetried(t *testing.T) {
	s := newFaultSetup(t, backends.Options{})
	awskms.SetTiming(s.b, 150*time.Millisecond, backends.Retry{Attempts: 4, Base: 10 * time.Millisecond, Max: 50 * time.Millisecond})
	s.p.inject(fault{op: "Sign", n: 1, hang: true})
	start := time.Now()
	if _, err := s.b.Sign(ctxT(t), s.arn, s.d); err != nil {
		t.Fatalf("sign after one hung attempt: %v", err)
	}
	if took := time.Since(start); took < 150*time.Millisecond || took > 2*time.Second {
		t.Fatalf("took %s, want the attempt timeout plus one call", took)
	}
	if n := s.p.count("Sign"); n != 2 {
		t.Fatalf("%d Sign calls, want 2", n)
	}

	// Every attempt hangs: the call ends at the caller's deadline with
	// ErrUnavailable.
	awskms.SetTiming(s.b, time.Second, backends.Retry{Attempts: 4, Base: 10 * time.Millisecond, Max: 50 * time.Millisecond})
	s.p.inject(fault{op: "Sign", n: 100, hang: true})
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err := s.b.Sign(ctx, s.arn, s.d)
	took := time.Since(start)
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("hanging backend: %v, want ErrUnavailable", err)
	}
	if took > 600*time.Millisecond {
		t.Fatalf("returned after %s, past the 400ms deadline", took)
	}
}

// TestRetriesStayWithinDeadline: slow 5xx answers are retried only while the
// caller's deadline allows; the call returns by the deadline.
func TestRetriesStayWithinDeadline(t *testing.T) {
	s := newFaultSetup(t, backends.Options{})
	awskms.SetTiming(s.b, 2*time.Second, backends.Retry{Attempts: 10, Base: 100 * time.Millisecond, Max: time.Second})
	s.p.delay.Store(int64(80 * time.Millisecond))
	s.p.inject(fault{op: "Sign", n: 100, status: 503, body: awsError("ServiceUnavailableException")})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.b.Sign(ctx, s.arn, s.d)
	took := time.Since(start)
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("%v, want ErrUnavailable", err)
	}
	if took > 650*time.Millisecond {
		t.Fatalf("returned after %s, past the 500ms deadline", took)
	}
	if n := s.p.count("Sign"); n < 2 || n >= 10 {
		t.Fatalf("%d Sign calls, want a few retries bounded by the deadline", n)
	}
}

// TestIntegrityChecks: an answer naming another key, a signature that is not
// DER, or another algorithm are refused by the backend with ErrIntegrity; a
// well-formed signature that does not verify is refused by the keyring. None
// is ever returned.
func TestIntegrityChecks(t *testing.T) {
	s := newFaultSetup(t, backends.Options{})
	other := newAdmin(t, localKMS(t)).p256()
	for name, rw := range map[string]func(m map[string]any){
		"other key id": func(m map[string]any) { m["KeyId"] = *other.Arn },
		"bare key id": func(m map[string]any) {
			m["KeyId"] = s.arn[strings.LastIndex(s.arn, "/")+1:]
		},
		"not DER": func(m map[string]any) {
			m["Signature"] = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 64))
		},
		"other algorithm": func(m map[string]any) { m["SigningAlgorithm"] = "ECDSA_SHA_384" },
	} {
		s.p.setRewrite(func(op string, body []byte) []byte {
			if op != "Sign" {
				return body
			}
			m := map[string]any{}
			if err := json.Unmarshal(body, &m); err != nil {
				return body
			}
			rw(m)
			out, _ := json.Marshal(m)
			return out
		})
		sig, err := s.b.Sign(ctxT(t), s.arn, s.d)
		if !errors.Is(err, backends.ErrIntegrity) || sig != nil {
			t.Errorf("%s: sig %x, err %v; want ErrIntegrity", name, sig, err)
		}
	}
	// Still DER, but S changed: only the verification can tell.
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: "awskms:///" + s.arn, Backend: s.b}}, jwks.Config{})
	if err != nil {
		t.Fatal(err)
	}
	s.p.clearFaults()
	if err := kr.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	s.p.setRewrite(func(op string, body []byte) []byte {
		m := map[string]any{}
		if op != "Sign" || json.Unmarshal(body, &m) != nil {
			return body
		}
		sig, _ := base64.StdEncoding.DecodeString(m["Signature"].(string))
		sig[len(sig)-1] ^= 1
		m["Signature"] = base64.StdEncoding.EncodeToString(sig)
		out, _ := json.Marshal(m)
		return out
	})
	if tok, _, err := kr.SignJWT(ctxT(t), map[string]any{"sub": "x"}); !errors.Is(err, backends.ErrIntegrity) || tok != "" {
		t.Errorf("signature that does not verify: token %q, err %v; want ErrIntegrity", tok, err)
	}
	s.p.clearFaults()
	if _, err := s.b.Sign(ctxT(t), s.arn, s.d); err != nil {
		t.Fatal(err)
	}
}

// TestControlPlaneOnlyOnRefresh: signing makes exactly one call per
// signature, Sign; ListAliases, DescribeKey and GetPublicKey happen only in
// Versions, and GetPublicKey only the first time a key is seen.
func TestControlPlaneOnlyOnRefresh(t *testing.T) {
	ep := localKMS(t)
	a := newAdmin(t, ep)
	prefix := aliasPrefix(t)
	k1, k2 := a.p256(), a.p256()
	a.alias(prefix+"1", *k1.KeyId)
	a.alias(prefix+"2", *k2.KeyId)
	p := newProxy(t, ep)
	b := open(t, hostURI(t, p.URL, prefix), backends.Options{})
	if _, err := b.Versions(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	// ListAliases pages through every alias of the account (local-kms
	// holds the other tests' aliases too), so its count is compared with
	// the next refresh's.
	pages := p.count("ListAliases")
	if got := [2]int{p.count("DescribeKey"), p.count("GetPublicKey")}; pages < 1 || got != [2]int{2, 2} {
		t.Fatalf("first refresh: ListAliases %d, DescribeKey/GetPublicKey = %v, want >= 1 and [2 2]", pages, got)
	}
	p.resetCounts()
	d := sha256.Sum256([]byte("x"))
	for range 50 {
		if _, err := b.Sign(ctxT(t), *k1.Arn, d[:]); err != nil {
			t.Fatal(err)
		}
	}
	if got := [4]int{p.count("Sign"), p.count("ListAliases"), p.count("DescribeKey"), p.count("GetPublicKey")}; got != [4]int{50, 0, 0, 0} {
		t.Fatalf("50 signatures: Sign/ListAliases/DescribeKey/GetPublicKey = %v, want [50 0 0 0]", got)
	}
	if _, err := b.Versions(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if got := [3]int{p.count("ListAliases"), p.count("DescribeKey"), p.count("GetPublicKey")}; got != [3]int{pages, 2, 0} {
		t.Fatalf("second refresh: ListAliases/DescribeKey/GetPublicKey = %v, want [%d 2 0]", got, pages)
	}
}

// TestBackendQPS: --backend-qps limits the calls per second, and a call that
// could not get a slot before its deadline fails at once with ErrThrottled,
// without reaching AWS.
func TestBackendQPS(t *testing.T) {
	s := newFaultSetup(t, backends.Options{QPS: 10}) // burst 10; Versions used one
	time.Sleep(200 * time.Millisecond)               // the bucket refills
	start := time.Now()
	for range 20 {
		if _, err := s.b.Sign(ctxT(t), s.arn, s.d); err != nil {
			t.Fatal(err)
		}
	}
	// 10 from the burst, 10 more at 10/s: about a second.
	if took := time.Since(start); took < 850*time.Millisecond {
		t.Fatalf("20 signatures at 10 qps took %s, want about 1s", took)
	}
	s.p.resetCounts()
	// Drain the bucket, then one more call with a deadline shorter than
	// the next slot (100ms away).
	var err error
	for i := 0; i < 30 && err == nil; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, err = s.b.Sign(ctx, s.arn, s.d)
		cancel()
	}
	if !errors.Is(err, backends.ErrThrottled) || !strings.Contains(err.Error(), "backend-qps") {
		t.Fatalf("%v, want ErrThrottled from the client-side limit", err)
	}
}

// TestLimiterRefusal: a call that --backend-qps cannot fit before its
// deadline is treated as in every remote backend (backends.Caller): it is
// ErrThrottled, returned at once and never retried. Refused before the
// first attempt, nothing reaches AWS; refused before a retry, the one failed
// call is all that did.
func TestLimiterRefusal(t *testing.T) {
	s := newFaultSetup(t, backends.Options{QPS: 1}) // burst 1
	// This signature takes the token after Versions' calls: the next one
	// is a second away.
	if _, err := s.b.Sign(ctxT(t), s.arn, s.d); err != nil {
		t.Fatal(err)
	}
	s.p.resetCounts()
	before := awskms.CallStats(s.b)

	// Deadline 500ms, next slot in 1s: refused before the first attempt.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.b.Sign(ctx, s.arn, s.d)
	if took := time.Since(start); took > 250*time.Millisecond {
		t.Fatalf("refusal took %s, want it at once, not at the 500ms deadline", took)
	}
	checkRefusal(t, err)
	if n := s.p.count("Sign"); n != 0 {
		t.Fatalf("%d Sign calls, want none", n)
	}

	// Deadline 1.5s: the first attempt gets the slot at 1s and fails with
	// a retryable 503; the retry's slot (2s) is past the deadline, so the
	// call ends ErrThrottled with no retry.
	s.p.inject(fault{op: "Sign", n: 1, status: 503, body: awsError("ServiceUnavailableException")})
	ctx, cancel = context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err = s.b.Sign(ctx, s.arn, s.d)
	checkRefusal(t, err)
	if n := s.p.count("Sign"); n != 1 {
		t.Fatalf("%d Sign calls, want 1 (the failed attempt, no retry)", n)
	}
	after := awskms.CallStats(s.b)
	if got := [3]uint64{after.Attempts - before.Attempts, after.Retries - before.Retries, after.Refused - before.Refused}; got != [3]uint64{1, 0, 2} {
		t.Fatalf("attempts/retries/refusals %v, want [1 0 2]", got)
	}
}

// checkRefusal checks that err is the client-side limit's refusal.
func checkRefusal(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, backends.ErrThrottled) || backends.Kind(err) != "throttled" || !strings.Contains(err.Error(), "--backend-qps") {
		t.Fatalf("%v (kind %q), want ErrThrottled from the client-side limit", err, backends.Kind(err))
	}
}

// TestMissingCredentials: with no credentials anywhere in the default chain
// the error is ErrPermission and nothing is sent.
func TestMissingCredentials(t *testing.T) {
	ep := localKMS(t)
	p := newProxy(t, ep)
	awsTestEnv(t, false)
	b := open(t, hostURI(t, p.URL, "alias/kmsgate-test/none"), backends.Options{})
	_, err := b.Versions(ctxT(t))
	if !errors.Is(err, backends.ErrPermission) || !strings.Contains(err.Error(), "credentials") {
		t.Fatalf("%v, want ErrPermission about credentials", err)
	}
	if n := p.count("DescribeKey"); n != 0 {
		t.Fatalf("%d calls sent without credentials", n)
	}
}

// TestUnreachable: a closed port is ErrUnavailable, not retried as a timeout.
func TestUnreachable(t *testing.T) {
	localKMS(t)
	b := open(t, "awskms://127.0.0.1:1/alias/x", backends.Options{})
	start := time.Now()
	_, err := b.Versions(ctxT(t))
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("%v, want ErrUnavailable", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("took %s", took)
	}
}
