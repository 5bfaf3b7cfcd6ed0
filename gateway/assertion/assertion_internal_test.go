package assertion

import (
	"context"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/gateway/audit"
	"github.com/kmsgate/kmsgate/gateway/identity"
	"github.com/kmsgate/kmsgate/gateway/metrics"
	"github.com/kmsgate/kmsgate/jwks"
)

func TestAssertionCacheReuseAndEviction(t *testing.T) {
	f := &backendtest.Fake{}
	f.Add("v1", time.Now().Add(-time.Hour))
	kr, _ := jwks.NewKeyring([]jwks.Source{{URI: "fake://k", Backend: f}}, jwks.Config{})
	if err := kr.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	m, err := New(kr, "https://iss", 10*time.Second, 2, metrics.New(), nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	m.now = func() time.Time { return now }
	ctx := context.Background()
	alice, bob, carol := identity.Identity{Subject: "alice"}, identity.Identity{Subject: "bob"}, identity.Identity{Subject: "carol"}
	mint := func(id identity.Identity, aud string) string {
		tok, err := m.Mint(ctx, time.Minute, id, aud, audit.Origin{})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	t1 := mint(alice, "app")
	if mint(alice, "app") != t1 || f.Signs.Load() != 1 {
		t.Fatal("second request did not reuse the assertion")
	}
	now = now.Add(7900 * time.Millisecond) // 79% of the lifetime
	if mint(alice, "app") != t1 || f.Signs.Load() != 1 {
		t.Fatal("assertion not reused before 80% of its lifetime")
	}
	now = now.Add(200 * time.Millisecond) // 81%
	if mint(alice, "app") == t1 || f.Signs.Load() != 2 {
		t.Fatal("assertion reused past 80% of its lifetime")
	}
	// Another audience or another identity is another entry.
	mint(alice, "other")
	if f.Signs.Load() != 3 {
		t.Fatal("audience not part of the cache key")
	}
	if mint(identity.Identity{Subject: "alice", Groups: []string{"admins"}}, "app") == t1 || f.Signs.Load() != 4 {
		t.Fatal("groups not part of the cache key")
	}
	// Size 2, least recently used out first.
	m2, _ := New(kr, "https://iss", time.Minute, 2, metrics.New(), nil)
	m = m2
	m.now = func() time.Time { return now }
	base := f.Signs.Load()
	mint(alice, "app")
	mint(bob, "app")
	mint(alice, "app") // alice is now the most recent
	mint(carol, "app") // evicts bob
	if f.Signs.Load() != base+3 {
		t.Fatalf("%d signatures", f.Signs.Load()-base)
	}
	mint(alice, "app")
	if f.Signs.Load() != base+3 {
		t.Fatal("alice was evicted instead of bob")
	}
	mint(bob, "app")
	if f.Signs.Load() != base+4 {
		t.Fatal("bob was not evicted")
	}
	if _, err := New(kr, "i", 0, 1, metrics.New(), nil); err == nil {
		t.Fatal("zero ttl accepted")
	}
	if _, err := New(kr, "i", time.Minute, 0, metrics.New(), nil); err == nil {
		t.Fatal("zero cache size accepted")
	}
}
