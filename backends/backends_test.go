package backends

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// encodeDER is the reference encoder the fuzz test compares against.
func encodeDER(r, s *big.Int) ([]byte, error) {
	var b cryptobyte.Builder
	b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(r)
		b.AddASN1BigInt(s)
	})
	return b.Bytes()
}

func TestOpenUnknownScheme(t *testing.T) {
	Register("testscheme", func(context.Context, *url.URL, Options) (Backend, error) { return nil, errors.New("opened") })
	t.Cleanup(func() { // so that the test can run again (go test -count=2)
		registryMu.Lock()
		delete(registry, "testscheme")
		registryMu.Unlock()
	})
	_, err := Open(context.Background(), "nosuch://x", Options{})
	if !errors.Is(err, ErrInvalidURI) || !strings.Contains(err.Error(), `unknown scheme "nosuch"`) || !strings.Contains(err.Error(), "testscheme") {
		t.Fatalf("unknown scheme: %v", err)
	}
	if _, err := Open(context.Background(), "no-scheme-at-all", Options{}); !errors.Is(err, ErrInvalidURI) {
		t.Fatalf("no scheme: %v", err)
	}
	if _, err := Open(context.Background(), "testscheme://x", Options{}); err == nil || err.Error() != "opened" {
		t.Fatalf("registered opener not called: %v", err)
	}
}

func TestRedact(t *testing.T) {
	got := Redact("hashivault://u:p@key?mount=transit&token=s3cret")
	if strings.Contains(got, "s3cret") || strings.Contains(got, "u:p") || !strings.Contains(got, "mount=transit") {
		t.Fatalf("Redact = %s", got)
	}
	got = Redact("pkcs11:token=T;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234&pin-source=file:/run/pin")
	if want := "pkcs11:token=T;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=REDACTED&pin-source=file:/run/pin"; got != want {
		t.Fatalf("Redact = %s, want %s", got, want)
	}
}

func TestKind(t *testing.T) {
	for err, want := range map[error]string{
		nil: "",
		fmt.Errorf("x: %w: %w", ErrThrottled, errors.New("429")): "throttled",
		fmt.Errorf("x: %w", ErrIntegrity):                        "integrity",
		errors.New("other"):                                      "unknown",
		Deadline(context.DeadlineExceeded):                       "unavailable",
	} {
		if got := Kind(err); got != want {
			t.Errorf("Kind(%v) = %q, want %q", err, got, want)
		}
	}
}

func TestLimiter(t *testing.T) {
	l := NewLimiter(1)
	ctx := context.Background()
	if err := l.Wait(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := l.Wait(short, "test"); !errors.Is(err, ErrThrottled) {
		t.Fatalf("second call within a second at 1 qps: %v", err)
	}
	if err := NewLimiter(0).Wait(ctx, "test"); err != nil {
		t.Fatal(err)
	}
}
