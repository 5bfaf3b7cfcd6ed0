package vault_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/vault"
	"github.com/kmsgate/kmsgate/jwks"
)

// benchEnv is one Transit key on a Vault, a gateway keyring over the vault
// backend, and a bare vault/api client on the same server.
type benchEnv struct {
	be      *vault.Backend
	version backends.Version
	kr      *jwks.Keyring
	client  *api.Client
	path    string
	data    map[string]any
	digest  []byte
	claims  map[string]any
}

// newBenchEnv creates a key on the test Vault; addr, when not empty, is
// where both clients send their requests (a proxy in front of that Vault).
func newBenchEnv(b *testing.B, addr string) *benchEnv {
	e := newEnv(b)
	name := keyName(b)
	e.createKey("transit", name, "ecdsa-p256")
	if addr == "" {
		addr = e.addr
	}
	b.Setenv("VAULT_ADDR", addr)
	be := e.open("hashivault://" + name)
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: "hashivault://" + name, Backend: be}}, jwks.Config{Prepublish: 2 * time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	if err := kr.Refresh(context.Background()); err != nil {
		b.Fatal(err)
	}
	vs, err := be.Versions(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	cfg := api.DefaultConfig()
	cfg.Address = addr
	cfg.MaxRetries = 0
	c, err := api.NewClient(cfg)
	if err != nil {
		b.Fatal(err)
	}
	c.SetToken(e.admin.Token())
	d := sha256.Sum256([]byte("eyJhbGciOiJFUzI1NiIsImtpZCI6IngiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJhbGljZSJ9"))
	now := time.Now()
	return &benchEnv{
		be:      be,
		version: vs[0],
		kr:      kr,
		client:  c,
		path:    "transit/sign/" + name,
		data: map[string]any{"input": base64.StdEncoding.EncodeToString(d[:]), "prehashed": true,
			"hash_algorithm": "sha2-256", "marshaling_algorithm": "jws", "key_version": 1},
		digest: d[:],
		claims: map[string]any{"iss": "https://kmsgate.example", "sub": "alice", "aud": "app", "email": "alice@example.com",
			"groups": []string{"admins", "dev"}, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "jti": "0123456789abcdef0123456789abcdef"},
	}
}

// direct is the baseline: one transit/sign call with the bare vault/api
// client (digest already encoded, answer parsed by the library, no checks).
func (e *benchEnv) direct(ctx context.Context) error {
	_, err := e.client.Logical().WriteWithContext(ctx, e.path, e.data)
	return err
}

// backend is the vault backend's Sign alone: the same request, plus the
// vault:vN: and signature checks.
func (e *benchEnv) backend(ctx context.Context) error {
	_, err := e.be.Sign(ctx, e.version.ID, e.digest)
	return err
}

// gateway is a whole JWT through the keyring: claims encoding, digest, the
// backend's Sign, and the keyring's verification of the signature against
// the version's public key.
func (e *benchEnv) gateway(ctx context.Context) error {
	_, _, err := e.kr.SignJWT(ctx, e.claims)
	return err
}

// paired alternates direct and other in one loop, so that both see the same
// server state, and reports their times and the ratio other/direct.
func (e *benchEnv) paired(b *testing.B, name string, other func(context.Context) error) {
	ctx := context.Background()
	var direct, mine time.Duration
	for b.Loop() {
		t0 := time.Now()
		if err := e.direct(ctx); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := other(ctx); err != nil {
			b.Fatal(err)
		}
		direct += t1.Sub(t0)
		mine += time.Since(t1)
	}
	b.ReportMetric(float64(direct.Nanoseconds())/float64(b.N), "direct-ns/op")
	b.ReportMetric(float64(mine.Nanoseconds())/float64(b.N), name+"-ns/op")
	b.ReportMetric(float64(mine)/float64(direct), name+"/direct")
}

func loop(b *testing.B, f func(context.Context) error) {
	ctx := context.Background()
	for b.Loop() {
		if err := f(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSign compares, against the same test Vault in the same run, a
// bare vault/api transit/sign call ("direct") with the vault backend's Sign
// ("backend") and a whole JWT signed through the keyring ("gateway").
// "paired-*" alternate each with direct in one loop and report the ratio;
// paired-gateway's gateway/direct is what the "at most 10% overhead"
// bounds. "verify" is the ECDSA P-256 verification the keyring makes for
// every remote signature, alone.
func BenchmarkSign(b *testing.B) {
	e := newBenchEnv(b, "")
	b.Run("direct", func(b *testing.B) { loop(b, e.direct) })
	b.Run("backend", func(b *testing.B) { loop(b, e.backend) })
	b.Run("gateway", func(b *testing.B) { loop(b, e.gateway) })
	b.Run("paired-backend", func(b *testing.B) { e.paired(b, "backend", e.backend) })
	b.Run("paired-gateway", func(b *testing.B) { e.paired(b, "gateway", e.gateway) })
	b.Run("verify", func(b *testing.B) {
		sig, err := e.be.Sign(context.Background(), e.version.ID, e.digest)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if !backends.VerifyJOSE(e.version.PublicKey, e.digest, sig) {
				b.Fatal("does not verify")
			}
		}
	})
}

// BenchmarkSignLatency is paired-gateway with a proxy on 127.0.0.1 that adds
// network latency in front of the same Vault, for both clients: the
// gateway's overhead is a constant per signature, so its share falls as the
// round trip to Vault grows.
func BenchmarkSignLatency(b *testing.B) {
	for _, latency := range []time.Duration{time.Millisecond, 5 * time.Millisecond} {
		b.Run("latency="+latency.String(), func(b *testing.B) {
			proxy := newFaultProxy(b, newEnv(b).addr)
			proxy.set(&fault{path: "/transit/sign/", delay: latency, count: -1})
			e := newBenchEnv(b, proxy.srv.URL)
			e.paired(b, "gateway", e.gateway)
		})
	}
}

// BenchmarkConcurrentSign signs from 8 × GOMAXPROCS goroutines at once,
// direct and through the gateway, and reports signatures per second.
func BenchmarkConcurrentSign(b *testing.B) {
	e := newBenchEnv(b, "")
	run := func(b *testing.B, sign func(context.Context) error) {
		var failed atomic.Int64
		b.SetParallelism(8)
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := sign(context.Background()); err != nil {
					failed.Add(1)
				}
			}
		})
		if n := failed.Load(); n > 0 {
			b.Fatalf("%d of %d signatures failed", n, b.N)
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "sig/s")
	}
	b.Run("direct", func(b *testing.B) { run(b, e.direct) })
	b.Run("gateway", func(b *testing.B) { run(b, e.gateway) })
}
