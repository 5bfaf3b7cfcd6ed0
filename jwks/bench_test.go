package jwks_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends/pem"
	"github.com/kmsgate/kmsgate/jwks"
)

// BenchmarkSign compares signing a whole JWT through the keyring and a PEM
// key with a bare ecdsa.Sign of a digest of the same size, in one run. The
// issue's target: JWT/bare at most 1.15.
func BenchmarkSign(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	claims := map[string]any{"iss": "https://kmsgate.example", "sub": "alice", "aud": "app", "email": "alice@example.com",
		"groups": []string{"admins", "dev"}, "iat": time.Now().Unix(), "exp": time.Now().Add(5 * time.Minute).Unix(), "jti": "0123456789abcdef0123456789abcdef"}
	b.Run("bare-ecdsa", func(b *testing.B) {
		digest := sha256.Sum256([]byte("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9"))
		for b.Loop() {
			if _, _, err := ecdsa.Sign(rand.Reader, key, digest[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("jwt-pem", func(b *testing.B) {
		be, err := pem.New("bench", key)
		if err != nil {
			b.Fatal(err)
		}
		kr, err := jwks.NewKeyring([]jwks.Source{{URI: "mem://bench", Backend: be}}, jwks.Config{})
		if err != nil {
			b.Fatal(err)
		}
		if err := kr.Refresh(context.Background()); err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		for b.Loop() {
			if _, _, err := kr.SignJWT(ctx, claims); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkBareECDSAParallel is the sign API benchmark's yardstick: bare
// ecdsa.Sign of a SHA-256 digest on every core (scripts/bench.sh).
func BenchmarkBareECDSAParallel(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9"))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := ecdsa.Sign(rand.Reader, key, digest[:]); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
