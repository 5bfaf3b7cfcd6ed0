package jwks

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/kmsgate/kmsgate/backends"
)

// Source is one configured key URI and the backend opened for it.
type Source struct {
	URI     string
	Backend backends.Backend
}

// Config holds the keyring's settings.
type Config struct {
	// Prepublish is how long a new version is published before it signs
	// (--prepublish).
	Prepublish time.Duration
	// KIDFormat is how kids are derived (--kid-format).
	KIDFormat KIDFormat
	// Clock returns the current time; time.Now when nil.
	Clock func() time.Time
	// Logger receives refresh warnings; slog.Default when nil.
	Logger *slog.Logger
	// OnSign, when set, is called after every backend signature with the
	// backend kind, the kid, how long the backend took and its error.
	OnSign func(kind, kid string, took time.Duration, err error)
	// OnRefresh, when set, is called after every refresh of one URI.
	OnRefresh func(uri, kind string, err error)
}

// Keyring holds the key versions of every configured URI, the current plan
// and served document, and signs JWTs with the active version. It is safe
// for concurrent use; reads never call a backend.
type Keyring struct {
	sources []Source
	cfg     Config

	mu       sync.Mutex // serialises refreshes and replans
	versions [][]backends.Version
	loaded   []bool

	state atomic.Pointer[State]
}

// State is an immutable snapshot of the keyring: what is served and what
// signs until the next refresh or NextChange.
type State struct {
	Plan     Plan
	Document Document
	// Ready is true once every URI has loaded at least once.
	Ready bool
	// Loaded says, per URI in configuration order, whether it has loaded.
	Loaded []bool
	// signer is the prepared signing key of the active version.
	signer *signingKey
}

type signingKey struct {
	key     Key
	backend backends.Backend
	jwk     jose.JSONWebKey
}

// NewKeyring returns a keyring over the sources, in configuration order (the
// first URI signs). It holds no keys until Refresh is called.
func NewKeyring(sources []Source, cfg Config) (*Keyring, error) {
	if len(sources) == 0 {
		return nil, errors.New("jwks: no key URI configured")
	}
	if cfg.Prepublish < 0 {
		return nil, fmt.Errorf("jwks: prepublish %s is negative", cfg.Prepublish)
	}
	f, err := ParseKIDFormat(string(cfg.KIDFormat))
	if err != nil {
		return nil, err
	}
	cfg.KIDFormat = f
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	k := &Keyring{
		sources:  sources,
		cfg:      cfg,
		versions: make([][]backends.Version, len(sources)),
		loaded:   make([]bool, len(sources)),
	}
	k.state.Store(&State{Plan: Plan{Active: -1}, Loaded: make([]bool, len(sources))})
	return k, nil
}

// Sources returns the configured sources.
func (k *Keyring) Sources() []Source { return k.sources }

// State returns the current snapshot, replanning first when a pending version
// has become due since the last one.
func (k *Keyring) State() *State {
	st := k.state.Load()
	if nc := st.Plan.NextChange; !nc.IsZero() && !k.cfg.Clock().Before(nc) {
		k.mu.Lock()
		if err := k.replanLocked(); err != nil {
			k.cfg.Logger.Error("jwks: replan", "err", err)
		}
		k.mu.Unlock()
		st = k.state.Load()
	}
	return st
}

// Refresh lists the versions of every URI, concurrently. A URI that fails
// keeps its last good versions; the errors are returned joined. The plan and
// document are rebuilt from what is known.
func (k *Keyring) Refresh(ctx context.Context) error {
	type result struct {
		vs  []backends.Version
		err error
	}
	res := make([]result, len(k.sources))
	var wg sync.WaitGroup
	for i, s := range k.sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vs, err := s.Backend.Versions(ctx)
			if err != nil {
				err = fmt.Errorf("jwks: refresh %s: %w", backends.Redact(s.URI), err)
			}
			res[i] = result{vs, err}
		}()
	}
	wg.Wait()

	k.mu.Lock()
	defer k.mu.Unlock()
	var errs []error
	for i, r := range res {
		s := k.sources[i]
		if k.cfg.OnRefresh != nil {
			k.cfg.OnRefresh(s.URI, s.Backend.Kind(), r.err)
		}
		if r.err != nil {
			errs = append(errs, r.err)
			if k.loaded[i] {
				k.cfg.Logger.Warn("key refresh failed; serving the last good versions", "uri", backends.Redact(s.URI), "err", r.err.Error())
			}
			continue
		}
		k.versions[i], k.loaded[i] = r.vs, true
	}
	if err := k.replanLocked(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (k *Keyring) replanLocked() error {
	in := make([]URIVersions, len(k.sources))
	for i, s := range k.sources {
		in[i] = URIVersions{URI: s.URI, Ordering: s.Backend.Ordering(), Versions: k.versions[i]}
	}
	plan, err := Order(in, k.cfg.Clock(), k.cfg.Prepublish, k.cfg.KIDFormat)
	if err != nil {
		return err
	}
	doc, err := NewDocument(&plan)
	if err != nil {
		return err
	}
	st := &State{Plan: plan, Document: doc, Loaded: append([]bool(nil), k.loaded...), Ready: true}
	for _, l := range k.loaded {
		st.Ready = st.Ready && l
	}
	if key, ok := plan.ActiveKey(); ok {
		st.signer = &signingKey{
			key:     key,
			backend: k.sources[key.source].Backend,
			jwk:     jose.JSONWebKey{Key: key.Version.PublicKey, KeyID: key.KID, Algorithm: string(jose.ES256), Use: "sig"},
		}
	}
	k.state.Store(st)
	return nil
}

// Run refreshes every interval until ctx ends. Failures are logged by
// Refresh's caller contract: the last good set keeps being served.
func (k *Keyring) Run(ctx context.Context, interval time.Duration, timeout time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rctx, cancel := context.WithTimeout(ctx, timeout)
			if err := k.Refresh(rctx); err != nil {
				k.cfg.Logger.Warn("key refresh", "err", err.Error())
			}
			cancel()
		}
	}
}

// ErrNoSigningKey is returned by SignJWT when no loaded version can sign.
var ErrNoSigningKey = fmt.Errorf("no key version can sign: %w", backends.ErrUnavailable)

// SignJWT signs claims as a compact JWT (alg ES256, typ JWT, kid of the
// active version) through the active version's backend. A signature from a
// remote backend is verified against that version's public key before the
// token is returned. It returns the token and the kid that signed it.
func (k *Keyring) SignJWT(ctx context.Context, claims any) (token, kid string, err error) {
	sk := k.State().signer
	if sk == nil {
		return "", "", ErrNoSigningKey
	}
	op := &opaque{ctx: ctx, sk: sk, onSign: k.cfg.OnSign}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: op}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", "", fmt.Errorf("jwks: signer for %s: %w", sk.key.KID, err)
	}
	token, err = jwt.Signed(signer).Claims(claims).Serialize()
	if op.err != nil {
		return "", sk.key.KID, op.err // the backend's typed error, not go-jose's wrapping
	}
	if err != nil {
		return "", sk.key.KID, fmt.Errorf("jwks: sign JWT with %s: %w", sk.key.KID, err)
	}
	return token, sk.key.KID, nil
}

// opaque lets go-jose sign through a backend for one call, carrying that
// call's context.
type opaque struct {
	ctx    context.Context
	sk     *signingKey
	onSign func(kind, kid string, took time.Duration, err error)
	err    error
}

func (o *opaque) Public() *jose.JSONWebKey        { return &o.sk.jwk }
func (o *opaque) Algs() []jose.SignatureAlgorithm { return []jose.SignatureAlgorithm{jose.ES256} }

func (o *opaque) SignPayload(payload []byte, alg jose.SignatureAlgorithm) ([]byte, error) {
	if alg != jose.ES256 {
		o.err = fmt.Errorf("jwks: algorithm %s: %w", alg, backends.ErrKeyType)
		return nil, o.err
	}
	digest := sha256.Sum256(payload)
	b, v := o.sk.backend, o.sk.key.Version
	start := time.Now()
	sig, err := b.Sign(o.ctx, v.ID, digest[:])
	if err == nil && len(sig) != backends.SignatureSize {
		err = fmt.Errorf("jwks: %s returned a %d-byte signature for %s: %w", b.Kind(), len(sig), v.ID, backends.ErrIntegrity)
	}
	if err == nil && b.Remote() && !backends.VerifyJOSE(v.PublicKey, digest[:], sig) {
		err = fmt.Errorf("jwks: signature from %s for %s does not verify with kid %s: %w", b.Kind(), v.ID, o.sk.key.KID, backends.ErrIntegrity)
	}
	if o.onSign != nil {
		o.onSign(b.Kind(), o.sk.key.KID, time.Since(start), err)
	}
	if err != nil {
		o.err = err
		return nil, err
	}
	return sig, nil
}
