// Package assertion mints the signed identity assertions the gateway adds
// to forwarded requests, cached per identity and audience.
package assertion

import (
	"context"
	"fmt"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"

	"github.com/kmsgate/kmsgate/gateway/audit"
	"github.com/kmsgate/kmsgate/gateway/identity"
	"github.com/kmsgate/kmsgate/gateway/metrics"
	"github.com/kmsgate/kmsgate/jwks"
)

// assertionReuse is the share of an assertion's lifetime during which a
// cached copy is reused; after it a new one is signed.
const assertionReuse = 0.8

// Minter signs identity assertions and caches them per identity and
// audience, bounded and least recently used out first. A cached assertion
// is reused only while its kid is the active one, so a rotation (or a
// version disabled in an emergency) takes effect on the next request.
// Concurrent misses for the same key are collapsed into one backend
// signature.
type Minter struct {
	keys    *jwks.Keyring
	issuer  string
	ttl     time.Duration
	cache   *lru.Cache[string, assertion]
	flight  singleflight.Group
	metrics *metrics.Metrics
	audit   *audit.Log
	now     func() time.Time
}

type assertion struct {
	token, kid string
	reuseUntil time.Time
}

// New returns a minter that signs with kr as issuer, assertions that live
// ttl, and caches at most size of them; every assertion it signs leaves a
// record in log (which may be nil).
func New(kr *jwks.Keyring, issuer string, ttl time.Duration, size int, m *metrics.Metrics, log *audit.Log) (*Minter, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("--assertion-ttl %s must be positive", ttl)
	}
	if size <= 0 {
		return nil, fmt.Errorf("--assertion-cache-size %d must be positive", size)
	}
	c, err := lru.New[string, assertion](size)
	if err != nil {
		return nil, err
	}
	return &Minter{keys: kr, issuer: issuer, ttl: ttl, cache: c, metrics: m, audit: log, now: time.Now}, nil
}

// Mint returns a signed assertion for id and audience, from the cache while
// it is within assertionReuse of its lifetime. A signature is bounded by
// timeout. A signature is audited as made for origin.
func (m *Minter) Mint(ctx context.Context, timeout time.Duration, id identity.Identity, audience string, origin audit.Origin) (string, error) {
	key := id.Key(audience)
	active := m.keys.ActiveKID()
	if a, ok := m.cache.Get(key); ok && m.now().Before(a.reuseUntil) {
		if a.kid == active {
			m.metrics.AssertionCache(true)
			return a.token, nil
		}
		m.metrics.AssertionRotated()
	}
	m.metrics.AssertionCache(false)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The shared call must not be cancelled by the first caller leaving;
	// it is bounded by that caller's deadline instead.
	v, err, _ := m.flight.Do(key, func() (any, error) {
		if a, ok := m.cache.Get(key); ok && m.now().Before(a.reuseUntil) && a.kid == active {
			return a.token, nil
		}
		sctx := context.WithoutCancel(ctx)
		if dl, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			sctx, cancel = context.WithDeadline(sctx, dl)
			defer cancel()
		}
		now := m.now()
		groups := id.Groups
		if groups == nil {
			groups = []string{}
		}
		claims, err := jwks.NewClaims(m.issuer, now, m.ttl, map[string]any{
			"aud": audience, "sub": id.Subject, "user": id.User, "email": id.Email, "groups": groups, "name": id.Name,
		})
		if err != nil {
			return nil, err
		}
		tok, kid, err := m.keys.SignJWT(sctx, claims)
		if err != nil {
			return nil, err
		}
		if m.audit != nil {
			rec := audit.FromClaims("assertion", kid, claims)
			rec.Route = origin.Route
			if origin.Remote.IsValid() {
				rec.Remote = origin.Remote.String()
			}
			m.audit.Write(rec)
		}
		m.cache.Add(key, assertion{token: tok, kid: kid, reuseUntil: now.Add(time.Duration(float64(m.ttl) * assertionReuse))})
		return tok, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}
