package fakekv_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/azurekv/fakekv"
)

// TestVersionStates lists a key whose versions cover every state and key
// kind, over several pages: enabled EC and EC-HSM P-256 versions sign, one
// whose nbf is ahead is published but does not sign, disabled and expired
// ones are reported without a key, and versions of another type or curve,
// or without the sign operation, are skipped with a warning.
func TestVersionStates(t *testing.T) {
	e := newEnv(t)
	e.fake.SetPageSize(2)
	now := time.Now()
	hour := time.Hour
	ec := e.add("jwt", fakekv.Version{Created: now.Add(-5 * hour)})
	hsm := e.add("jwt", fakekv.Version{Kty: "EC-HSM", Created: now.Add(-4 * hour)})
	off := e.add("jwt", fakekv.Version{Disabled: true, Created: now.Add(-3 * hour)})
	expired := e.add("jwt", fakekv.Version{Expires: now.Add(-time.Minute), Created: now.Add(-6 * hour)})
	later := e.add("jwt", fakekv.Version{NotBefore: now.Add(hour), Created: now.Add(-2 * hour)})
	validNow := e.add("jwt", fakekv.Version{NotBefore: now.Add(-hour), Expires: now.Add(hour), Created: now.Add(-90 * time.Minute)})
	verifyOnly := e.add("jwt", fakekv.Version{KeyOps: []string{"verify"}, Created: now.Add(-hour)})
	p384 := e.add("jwt", fakekv.Version{Curve: "P-384", Created: now.Add(-hour)})
	rsa := e.add("jwt", fakekv.Version{Kty: "RSA", Created: now.Add(-hour)})

	b := e.open(e.uri("jwt"), backends.Options{})
	vs, err := b.Versions(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := byID(vs)
	want := map[string]backends.State{
		ec: backends.StateEnabled, hsm: backends.StateEnabled, validNow: backends.StateEnabled,
		later: backends.StateVerifyOnly, off: backends.StateDisabled, expired: backends.StateExpired,
	}
	if len(vs) != len(want) {
		t.Fatalf("%d versions %v, want %d", len(vs), vs, len(want))
	}
	for ver, st := range want {
		v, ok := got[e.id("jwt", ver)]
		if !ok || v.State != st {
			t.Fatalf("version %s: %+v, want state %s", ver, v, st)
		}
		if st.Published() != (v.PublicKey != nil) {
			t.Fatalf("version %s (%s): public key %v", ver, st, v.PublicKey)
		}
		if v.PublicKey != nil && !v.PublicKey.Equal(e.fake.PublicKey("jwt", ver)) {
			t.Fatalf("version %s: public key differs from the vault's", ver)
		}
	}
	if c := got[e.id("jwt", ec)].Created; c.Unix() != now.Add(-5*hour).Unix() {
		t.Fatalf("created %s, want attributes.created %s", c, now.Add(-5*hour))
	}
	for _, skipped := range []string{verifyOnly, p384, rsa} {
		if _, ok := got[e.id("jwt", skipped)]; ok {
			t.Fatalf("version %s should be skipped", skipped)
		}
	}
	logs := e.logs.String()
	for _, w := range []string{"do not include sign", `curve \"P-384\"`, `key type \"RSA\"`} {
		if !strings.Contains(logs, w) {
			t.Fatalf("no warning with %q in\n%s", w, logs)
		}
	}
	if n := e.fake.Calls(fakekv.OpList); n != 5 {
		t.Fatalf("%d list calls, want 5 pages of 2", n)
	}
	// Disabled and expired versions are not read; the others once.
	if n := e.fake.Calls(fakekv.OpGet); n != 7 {
		t.Fatalf("%d get calls, want 7", n)
	}
	if n, withBody := e.fake.Challenges(); n != 1 || withBody != 0 {
		t.Fatalf("%d challenges (%d with a body), want 1 without", n, withBody)
	}

	// A refresh reads the keys from the cache: only the listing is called.
	if _, err := b.Versions(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if n := e.fake.Calls(fakekv.OpGet); n != 7 {
		t.Fatalf("%d get calls after a refresh, want still 7", n)
	}
	// key_ops change (attributes.updated moves): the version is read again
	// and now skipped.
	if err := e.fake.Update("jwt", hsm, func(_ *bool, _, _ *time.Time, ops *[]string) { *ops = []string{"verify"} }); err != nil {
		t.Fatal(err)
	}
	vs, err = b.Versions(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := byID(vs)[e.id("jwt", hsm)]; ok || e.fake.Calls(fakekv.OpGet) != 8 {
		t.Fatalf("after removing sign from key_ops: %v, %d get calls", vs, e.fake.Calls(fakekv.OpGet))
	}
}

// TestPinnedVersion reads exactly the version a pinned URI names, and
// refuses every other version at Sign.
func TestPinnedVersion(t *testing.T) {
	e := newEnv(t)
	v1 := e.add("jwt", fakekv.Version{Created: time.Now().Add(-time.Hour)})
	v2 := e.add("jwt", fakekv.Version{})
	b := e.open(e.uri("jwt", v1), backends.Options{})
	vs, err := b.Versions(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || vs[0].ID != e.id("jwt", v1) || vs[0].State != backends.StateEnabled || !vs[0].PublicKey.Equal(e.fake.PublicKey("jwt", v1)) {
		t.Fatalf("pinned versions %+v", vs)
	}
	if e.fake.Calls(fakekv.OpList) != 0 {
		t.Fatal("a pinned URI listed the versions")
	}
	digest := sha256.Sum256([]byte("x"))
	if _, err := b.Sign(ctxTimeout(t, 5*time.Second), e.id("jwt", v2), digest[:]); !errors.Is(err, backends.ErrNotFound) || e.fake.Calls(fakekv.OpSign) != 0 {
		t.Fatalf("sign with another version of a pinned URI: %v", err)
	}
	sig, err := b.Sign(ctxTimeout(t, 5*time.Second), vs[0].ID, digest[:])
	if err != nil || !backends.VerifyJOSE(vs[0].PublicKey, digest[:], sig) {
		t.Fatalf("sign with the pinned version: %v", err)
	}

	// Disabled: reported as such (Key Vault refuses to read it).
	if err := e.fake.SetEnabled("jwt", v1, false); err != nil {
		t.Fatal(err)
	}
	vs, err = b.Versions(ctxTimeout(t, 5*time.Second))
	if err != nil || len(vs) != 1 || vs[0].State != backends.StateDisabled || vs[0].PublicKey != nil {
		t.Fatalf("disabled pinned version: %+v, %v", vs, err)
	}
	if _, err := b.Sign(ctxTimeout(t, 5*time.Second), e.id("jwt", v1), digest[:]); !errors.Is(err, backends.ErrDisabled) {
		t.Fatalf("sign with a disabled version: %v", err)
	}

	// A version that does not exist.
	missing := strings.Repeat("ab", 16)
	_, err = e.open(e.uri("jwt", missing), backends.Options{}).Versions(ctxTimeout(t, 5*time.Second))
	if !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("missing version: %v", err)
	}
}

// TestKeyTypeRefused refuses keys that cannot sign ES256, naming what they
// are: RSA, P-384, and a key without the sign operation, both pinned and as
// a whole key.
func TestKeyTypeRefused(t *testing.T) {
	e := newEnv(t)
	rsa := e.add("rsa", fakekv.Version{Kty: "RSA-HSM"})
	p384 := e.add("p384", fakekv.Version{Curve: "P-384"})
	noSign := e.add("nosign", fakekv.Version{KeyOps: []string{"verify"}})
	cases := []struct{ uri, want string }{
		{e.uri("rsa"), `key type "RSA-HSM"`},
		{e.uri("rsa", rsa), `key type "RSA-HSM"`},
		{e.uri("p384"), `curve "P-384"`},
		{e.uri("p384", p384), `curve "P-384"`},
		{e.uri("nosign", noSign), "do not include sign"},
	}
	for _, c := range cases {
		_, err := e.open(c.uri, backends.Options{}).Versions(ctxTimeout(t, 10*time.Second))
		if !errors.Is(err, backends.ErrKeyType) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrKeyType with %q", c.uri, err, c.want)
		}
	}
	// A key that does not exist at all.
	_, err := e.open(e.uri("nothere"), backends.Options{}).Versions(ctxTimeout(t, 5*time.Second))
	if !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("missing key: %v", err)
	}
}

// TestSign signs with explicit versions and checks the answers: a wrong kid
// or a short signature is ErrIntegrity, a digest of the wrong size and a
// version of another key are refused without a call.
func TestSign(t *testing.T) {
	e := newEnv(t)
	v1 := e.add("jwt", fakekv.Version{Created: time.Now().Add(-time.Hour)})
	e.add("jwt", fakekv.Version{})
	b := e.open(e.uri("jwt"), backends.Options{})
	vs, err := b.Versions(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	id := e.id("jwt", v1)
	pub := byID(vs)[id].PublicKey
	digest := sha256.Sum256([]byte("payload"))
	sig, err := b.Sign(ctxTimeout(t, 5*time.Second), id, digest[:])
	if err != nil || !backends.VerifyJOSE(pub, digest[:], sig) {
		t.Fatalf("sign: %v", err)
	}

	before := e.fake.Calls(fakekv.OpSign)
	for _, c := range []struct {
		id     string
		digest []byte
	}{
		{id, digest[:31]},
		{e.id("other", v1), digest[:]},
		{"https://elsewhere.vault.azure.net/keys/jwt/" + v1, digest[:]},
		{id + "x", digest[:]},
	} {
		if _, err := b.Sign(ctxTimeout(t, 5*time.Second), c.id, c.digest); err == nil {
			t.Fatalf("sign with %s (%d-byte digest) succeeded", c.id, len(c.digest))
		}
	}
	if e.fake.Calls(fakekv.OpSign) != before {
		t.Fatal("refused signatures reached the vault")
	}

	for _, f := range []struct {
		fault fakekv.Fault
		want  string
	}{
		{fakekv.Fault{Op: fakekv.OpSign, WrongKID: true, Times: 1}, "signed"},
		{fakekv.Fault{Op: fakekv.OpSign, ShortSignature: true, Times: 1}, "63 bytes"},
	} {
		e.fake.Inject(f.fault)
		n := e.fake.Calls(fakekv.OpSign)
		_, err := b.Sign(ctxTimeout(t, 5*time.Second), id, digest[:])
		if !errors.Is(err, backends.ErrIntegrity) || !strings.Contains(err.Error(), f.want) {
			t.Fatalf("fault %+v: %v", f.fault, err)
		}
		if e.fake.Calls(fakekv.OpSign) != n+1 {
			t.Fatalf("fault %+v: %d calls, want 1 (an integrity failure is not retried)", f.fault, e.fake.Calls(fakekv.OpSign)-n)
		}
	}
}

// TestFaults maps Key Vault's failures to the typed errors and retries only
// what is worth it, within the caller's deadline.
func TestFaults(t *testing.T) {
	e := newEnv(t)
	v1 := e.add("jwt", fakekv.Version{})
	b := e.open(e.uri("jwt"), backends.Options{})
	if _, err := b.Versions(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	id := e.id("jwt", v1)
	digest := sha256.Sum256([]byte("payload"))
	sign := func(d time.Duration) (error, int, time.Duration) {
		n := e.fake.Calls(fakekv.OpSign)
		start := time.Now()
		_, err := b.Sign(ctxTimeout(t, d), id, digest[:])
		return err, e.fake.Calls(fakekv.OpSign) - n, time.Since(start)
	}
	cases := []struct {
		name     string
		fault    fakekv.Fault
		deadline time.Duration
		want     error // nil: succeeds after retries
		calls    int
		maxTook  time.Duration
	}{
		{"429 once, Retry-After 1 fits the deadline", fakekv.Fault{Status: 429, RetryAfter: "1", Times: 1}, 5 * time.Second, nil, 2, 4 * time.Second},
		{"429 with Retry-After past the deadline", fakekv.Fault{Status: 429, RetryAfter: "30"}, 2 * time.Second, backends.ErrThrottled, 1, time.Second},
		{"429 without Retry-After, every time", fakekv.Fault{Status: 429}, 10 * time.Second, backends.ErrThrottled, 4, 5 * time.Second},
		{"503 twice", fakekv.Fault{Status: 503, Times: 2}, 5 * time.Second, nil, 3, 4 * time.Second},
		{"500 every time", fakekv.Fault{Status: 500}, 10 * time.Second, backends.ErrUnavailable, 4, 5 * time.Second},
		{"connection dropped once", fakekv.Fault{Drop: true, Times: 1}, 5 * time.Second, nil, 2, 4 * time.Second},
		{"403 (no role)", fakekv.Fault{Status: 403}, 5 * time.Second, backends.ErrPermission, 1, time.Second},
		{"hangs past the deadline", fakekv.Fault{Delay: time.Minute}, 300 * time.Millisecond, backends.ErrUnavailable, 1, 1500 * time.Millisecond},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.fake.ClearFaults()
			e.fake.Inject(c.fault)
			defer e.fake.ClearFaults()
			err, calls, took := sign(c.deadline)
			if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("err %v, want %v", err, c.want)
			}
			if calls != c.calls {
				t.Fatalf("%d sign calls, want %d (err %v)", calls, c.calls, err)
			}
			if took > c.maxTook {
				t.Fatalf("took %s, more than %s", took, c.maxTook)
			}
			if c.fault.RetryAfter == "1" && took < time.Second {
				t.Fatalf("retried after %s, before the service's Retry-After of 1 s", took)
			}
		})
	}

	// Access refused by role, and a token the vault does not accept.
	e.fake.Deny("jwt", true)
	if err, calls, _ := sign(5 * time.Second); !errors.Is(err, backends.ErrPermission) || calls != 1 {
		t.Fatalf("denied: %v after %d calls", err, calls)
	}
	e.fake.Deny("jwt", false)
	t.Setenv("KMSGATE_AZUREKV_TOKEN", "not-the-token")
	other := e.open(e.uri("jwt"), backends.Options{})
	if _, err := other.Versions(ctxTimeout(t, 5*time.Second)); !errors.Is(err, backends.ErrPermission) {
		t.Fatalf("wrong token: %v", err)
	}

	// The client-side rate limit (--backend-qps) refuses at once when the
	// deadline comes before the next slot.
	t.Setenv("KMSGATE_AZUREKV_TOKEN", e.token)
	limited := e.open(e.uri("jwt"), backends.Options{QPS: 1})
	if _, err := limited.Sign(ctxTimeout(t, 5*time.Second), id, digest[:]); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := limited.Sign(ctxTimeout(t, 200*time.Millisecond), id, digest[:]); !errors.Is(err, backends.ErrThrottled) || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("over the rate limit: %v after %s", err, time.Since(start))
	}
}

// TestDeadlineError shows that a call which runs out of time is
// ErrUnavailable and says so.
func TestDeadlineError(t *testing.T) {
	e := newEnv(t)
	e.add("jwt", fakekv.Version{})
	e.fake.SetLatency(time.Second)
	b := e.open(e.uri("jwt"), backends.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := b.Versions(ctx); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("Versions past the deadline: %v", err)
	}
}
