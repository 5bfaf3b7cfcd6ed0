//go:build pkcs11 && cgo

package pkcs11_test

import (
	"crypto/sha256"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/pkcs11"
)

// The benchmarks compare, on the same SoftHSM token and key, a direct
// C_SignInit + C_Sign through github.com/miekg/pkcs11 with what the gateway
// does per signature: Backend.Sign (pool, handle, limiter) and
// Keyring.SignJWT (claims, header, digest, Sign, and the verification of
// the signature against the version's public key). BenchmarkP256Verify
// prices that verification alone. The Parallel64 variants run 64
// goroutines (the direct one with a session each). Besides ns/op (wall
// time), each reports cpu-ns/op, the CPU time of the whole process (every
// thread, the library's included) per operation, which other work on a
// shared machine disturbs much less. scripts/bench-pkcs11.sh runs them
// interleaved and prints the overhead and the parallel speed-up.

// cpuTime returns the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process CPU time since start per operation.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// benchSetup opens the script's key and returns the backend and its one
// version.
func benchSetup(b *testing.B) (*pkcs11.Backend, backends.Version) {
	h := newHSM(b)
	be := open(b, h.uri(h.key))
	vs, err := be.Versions(ctx(b))
	if err != nil {
		b.Fatal(err)
	}
	return be, vs[0]
}

var benchDigest = sha256.Sum256([]byte("kmsgate benchmark"))

func BenchmarkDirectCSign(b *testing.B) {
	be, v := benchSetup(b)
	d, err := be.NewDirect(ctx(b), v.ID)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	start := cpuTime()
	for b.Loop() {
		if _, err := d.Sign(benchDigest[:]); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, start)
}

func BenchmarkBackendSign(b *testing.B) {
	be, v := benchSetup(b)
	c := ctx(b)
	start := cpuTime()
	for b.Loop() {
		if _, err := be.Sign(c, v.ID, benchDigest[:]); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, start)
}

func BenchmarkKeyringSignJWT(b *testing.B) {
	be, _ := benchSetup(b)
	kr := keyring(b, be)
	c := ctx(b)
	claims := map[string]any{"sub": "alice", "aud": "app", "iat": 1700000000, "exp": 1700000300}
	start := cpuTime()
	for b.Loop() {
		if _, _, err := kr.SignJWT(c, claims); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, start)
}

func BenchmarkP256Verify(b *testing.B) {
	be, v := benchSetup(b)
	sig, err := be.Sign(ctx(b), v.ID, benchDigest[:])
	if err != nil {
		b.Fatal(err)
	}
	start := cpuTime()
	for b.Loop() {
		if !backends.VerifyJOSE(v.PublicKey, benchDigest[:], sig) {
			b.Fatal("does not verify")
		}
	}
	reportCPU(b, start)
}

// parallel64 makes RunParallel run 64 goroutines.
func parallel64(b *testing.B) {
	b.SetParallelism((64 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
}

func BenchmarkDirectCSignParallel64(b *testing.B) {
	be, v := benchSetup(b)
	parallel64(b)
	b.ResetTimer()
	start := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		d, err := be.NewDirect(ctx(b), v.ID)
		if err != nil {
			b.Error(err)
			return
		}
		defer d.Close()
		for pb.Next() {
			if _, err := d.Sign(benchDigest[:]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportCPU(b, start)
}

func BenchmarkKeyringSignJWTParallel64(b *testing.B) {
	be, _ := benchSetup(b)
	kr := keyring(b, be)
	c := ctx(b)
	claims := map[string]any{"sub": "alice", "aud": "app", "iat": 1700000000, "exp": 1700000300}
	parallel64(b)
	b.ResetTimer()
	start := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := kr.SignJWT(c, claims); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportCPU(b, start)
}

func BenchmarkBackendSignParallel64(b *testing.B) {
	be, v := benchSetup(b)
	c := ctx(b)
	parallel64(b)
	b.ResetTimer()
	start := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := be.Sign(c, v.ID, benchDigest[:]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportCPU(b, start)
}
