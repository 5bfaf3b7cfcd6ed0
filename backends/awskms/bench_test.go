package awskms_test

import (
	"context"
	"crypto/sha256"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/jwks"
)

// The benchmarks run against the local-kms process of scripts/test.d, e.g.
//
//	KMSGATE_TEST_LOCALKMS=http://127.0.0.1:PORT go test -run '^$' -bench . ./backends/awskms/
//
// BenchmarkSignOverhead compares, in one run against the same key, a bare
// AWS SDK Sign call with the backend's Sign (rate limiter, retry wrapper,
// ARN check, DER to R||S, verification) and with the keyring's SignJWT (the
// whole token: claims, header, backend Sign, verification).
// BenchmarkConcurrentSign adds 20 ms of latency in a proxy in front of
// local-kms and signs from 64 goroutines: with nothing serialising
// signatures the rate approaches 64 / 20 ms = 3,200 signatures per second.

type benchKey struct {
	ep, alias, arn string
}

func newBenchKey(b *testing.B) benchKey {
	b.Helper()
	ep := localKMS(b)
	a := newAdmin(b, ep)
	key := a.p256()
	alias := strings.TrimSuffix(aliasPrefix(b), "/")
	a.alias(alias, *key.KeyId)
	return benchKey{ep: ep, alias: alias, arn: *key.Arn}
}

// keyring opens the backend for uri and a keyring over it, loaded.
func benchKeyring(b *testing.B, uri string, opts backends.Options) (backends.Backend, *jwks.Keyring) {
	b.Helper()
	be := open(b, uri, opts)
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: uri, Backend: be}}, jwks.Config{Prepublish: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	if err := kr.Refresh(ctxT(b)); err != nil {
		b.Fatal(err)
	}
	return be, kr
}

func BenchmarkSignOverhead(b *testing.B) {
	k := newBenchKey(b)
	be, kr := benchKeyring(b, hostURI(b, k.ep, k.alias), backends.Options{})
	digest := sha256.Sum256([]byte("benchmark"))
	sdk := sdkClient(k.ep)
	in := &kms.SignInput{KeyId: aws.String(k.arn), Message: digest[:], MessageType: types.MessageTypeDigest, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}
	claims := map[string]any{"sub": "alice", "aud": "app", "iat": 1700000000, "exp": 1700000300}
	ctx := context.Background()
	sig, err := be.Sign(ctx, k.arn, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	pub := kr.State().Plan.Keys[0].Version.PublicKey

	// Interleaved rounds, so that drift in local-kms (its database and log
	// grow) weighs on every variant alike.
	for round := range 3 {
		b.Run("round="+string(rune('1'+round)), func(b *testing.B) {
			b.Run("direct-sdk", func(b *testing.B) {
				for b.Loop() {
					if _, err := sdk.Sign(ctx, in); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("backend", func(b *testing.B) {
				for b.Loop() {
					if _, err := be.Sign(ctx, k.arn, digest[:]); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("keyring-jwt", func(b *testing.B) {
				for b.Loop() {
					if _, _, err := kr.SignJWT(ctx, claims); err != nil {
						b.Fatal(err)
					}
				}
			})
			// The one verification of a signature against the public
			// key, which Sign must do and a bare SDK call does not.
			b.Run("verify-only", func(b *testing.B) {
				for b.Loop() {
					if !backends.VerifyJOSE(pub, digest[:], sig) {
						b.Fatal("does not verify")
					}
				}
			})
		})
	}
}

func BenchmarkConcurrentSign(b *testing.B) {
	k := newBenchKey(b)
	p := newDelayProxy(b, k.ep, 20*time.Millisecond)
	be, kr := benchKeyring(b, "awskms://"+p.Addr+"/"+k.alias, backends.Options{})
	digest := sha256.Sum256([]byte("benchmark"))
	claims := map[string]any{"sub": "alice", "aud": "app", "iat": 1700000000, "exp": 1700000300}
	ctx := context.Background()
	const workers = 64

	run := func(b *testing.B, sign func() error) {
		var next atomic.Int64
		errs := make(chan error, workers)
		b.ResetTimer()
		start := time.Now()
		for range workers {
			go func() {
				for next.Add(1) <= int64(b.N) {
					if err := sign(); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
		for range workers {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		took := time.Since(start)
		rate := float64(b.N) / took.Seconds()
		b.ReportMetric(rate, "sigs/s")
		b.ReportMetric(100*rate/3200, "%of3200")
	}
	sdk := sdkClient("http://" + p.Addr)
	in := &kms.SignInput{KeyId: aws.String(k.arn), Message: digest[:], MessageType: types.MessageTypeDigest, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}
	b.Run("direct-sdk", func(b *testing.B) {
		run(b, func() error {
			_, err := sdk.Sign(ctx, in)
			return err
		})
	})
	b.Run("backend", func(b *testing.B) {
		run(b, func() error {
			_, err := be.Sign(ctx, k.arn, digest[:])
			return err
		})
	})
	b.Run("keyring-jwt", func(b *testing.B) {
		run(b, func() error {
			_, _, err := kr.SignJWT(ctx, claims)
			return err
		})
	})
}
