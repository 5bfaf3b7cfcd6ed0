package jwks

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

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
	// usableSince holds, per URI, when this keyring first saw a version
	// usable that became usable after the URI's first load (re-enabled, or
	// new): it is pending for --prepublish from then, not from its
	// creation. Versions usable at the first load have no entry (see Order).
	usableSince []map[string]time.Time
	lastLoad    []time.Time // per URI, the clock at its last successful load

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
	header  []byte // base64url of the protected header
}

// encodeHeader returns the base64url protected header of tokens signed with
// kid, members in lexical order like go-jose's.
func encodeHeader(kid string) []byte {
	h, _ := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{"ES256", kid, "JWT"})
	return base64.RawURLEncoding.AppendEncode(nil, h)
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
	k.usableSince = make([]map[string]time.Time, len(sources))
	k.lastLoad = make([]time.Time, len(sources))
	for i := range k.usableSince {
		k.usableSince[i] = map[string]time.Time{}
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
		// Another caller may have replanned while this one waited.
		if cur := k.state.Load().Plan.NextChange; cur.Equal(nc) {
			if err := k.replanLocked(); err != nil {
				k.cfg.Logger.Error("jwks: replan", "err", err.Error())
			}
		}
		k.mu.Unlock()
		st = k.state.Load()
	}
	return st
}

// ActiveKID returns the kid of the version that signs now, or "" when
// none can.
func (k *Keyring) ActiveKID() string {
	if sk := k.State().signer; sk != nil {
		return sk.key.KID
	}
	return ""
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
			msg := "key refresh failed; serving the last good versions"
			if !k.loaded[i] {
				msg = "key URI not loaded yet; retrying"
			}
			k.cfg.Logger.Warn(msg, "uri", backends.Redact(s.URI), "kind", backends.Kind(r.err), "err", r.err.Error())
			continue
		}
		if !k.loaded[i] {
			usable := 0
			for _, v := range r.vs {
				if v.State.CanSign() {
					usable++
				}
			}
			k.cfg.Logger.Info("key URI loaded", "uri", backends.Redact(s.URI), "backend", s.Backend.Kind(), "versions", len(r.vs), "usable", usable)
		}
		k.noteUsable(i, r.vs)
		k.versions[i], k.loaded[i] = r.vs, true
	}
	if err := k.replanLocked(); err != nil {
		k.cfg.Logger.Error("key set not rebuilt; serving the last one", "err", err.Error())
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// noteUsable records when versions of URI i became usable since its last
// load, and forgets those no longer usable (a later re-enabling is timed
// anew). A version becomes usable when it was listed before in a state
// that cannot sign (re-enabled), or when it is listed for the first time
// though created before the last load (it was hidden: an alias moved onto
// an old key). A version created since the last load is new and counts from
// its creation, like on every replica. Call it with k.mu held, before
// storing vs.
func (k *Keyring) noteUsable(i int, vs []backends.Version) {
	since := k.usableSince[i]
	usable := map[string]bool{}
	for _, v := range vs {
		if v.State.CanSign() {
			usable[v.ID] = true
		}
	}
	for id := range since {
		if !usable[id] {
			delete(since, id)
		}
	}
	now := k.cfg.Clock()
	defer func() { k.lastLoad[i] = now }()
	if !k.loaded[i] {
		return // what is usable at the first load is timed by creation
	}
	listed, was := map[string]bool{}, map[string]bool{}
	for _, v := range k.versions[i] {
		listed[v.ID] = true
		was[v.ID] = v.State.CanSign()
	}
	for _, v := range vs {
		if _, seen := since[v.ID]; !usable[v.ID] || was[v.ID] || seen {
			continue
		}
		if listed[v.ID] || !v.Created.After(k.lastLoad[i]) {
			since[v.ID] = now
		}
	}
}

func (k *Keyring) replanLocked() error {
	in := make([]URIVersions, len(k.sources))
	for i, s := range k.sources {
		in[i] = URIVersions{URI: s.URI, Ordering: s.Backend.Ordering(), Versions: k.versions[i], UsableSince: k.usableSince[i]}
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
			header:  encodeHeader(key.KID),
		}
	}
	prev := k.state.Load()
	k.state.Store(st)
	k.logChanges(prev, st)
	return nil
}

// logChanges logs, at info, the changes between two states an operator acts
// on: the gateway becoming ready, and the signing key changing, with why.
func (k *Keyring) logChanges(prev, st *State) {
	if !prev.Ready && st.Ready {
		k.cfg.Logger.Info("ready: every key URI has loaded", "uris", len(k.sources), "published", len(st.Plan.Keys), "active_kid", activeKID(st))
	}
	old, cur := activeKID(prev), activeKID(st)
	if old == cur {
		return
	}
	reason := "the key versions changed"
	switch {
	case old == "":
		reason = "keys loaded"
	case cur == "":
		reason = "no usable version left to sign with"
	case !slices.ContainsFunc(st.Plan.Keys, func(key Key) bool { return key.KID == old }):
		reason = "the signing version is no longer usable (disabled, destroyed or removed)"
	case slices.ContainsFunc(prev.Plan.Keys, func(key Key) bool { return key.KID == cur && key.Role == RolePending }):
		reason = "a pending version has been published for --prepublish"
	}
	level := slog.LevelInfo
	if cur == "" {
		level = slog.LevelError
	}
	k.cfg.Logger.Log(context.Background(), level, "signing key changed", "old_kid", old, "new_kid", cur, "reason", reason)
}

func activeKID(st *State) string {
	if key, ok := st.Plan.ActiveKey(); ok {
		return key.KID
	}
	return ""
}

// Run refreshes every interval until ctx ends, each refresh bounded by
// timeout. Until every URI has loaded it retries every two seconds (or every
// interval, if shorter), so the gateway becomes ready soon after a backend
// comes back. Failures are logged; the last good set keeps being served.
func (k *Keyring) Run(ctx context.Context, interval, timeout time.Duration) {
	for {
		wait := interval
		if !k.state.Load().Ready {
			wait = min(interval, 2*time.Second)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, timeout)
		_ = k.Refresh(rctx) // each failed URI is logged once by Refresh
		cancel()
	}
}

// ErrNoSigningKey is returned by SignJWT when no loaded version can sign.
var ErrNoSigningKey = fmt.Errorf("no key version can sign: %w", backends.ErrUnavailable)

// SignJWT signs claims as a compact JWS (RFC 7515 section 7.1) with the
// protected header {"alg":"ES256","kid":…,"typ":"JWT"} through the active
// version's backend. A signature from a remote backend is verified against
// that version's public key before the token is returned. It returns the
// token and the kid that signed it.
//
// The header segment is encoded once per active version; go-jose's generic
// signer re-encodes it and the claims on every call, which measured about 20%
// on top of the bare ECDSA signature (see BenchmarkSign).
func (k *Keyring) SignJWT(ctx context.Context, claims any) (token, kid string, err error) {
	sk := k.State().signer
	if sk == nil {
		return "", "", ErrNoSigningKey
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", sk.key.KID, fmt.Errorf("jwks: encode claims: %w", err)
	}
	enc := base64.RawURLEncoding
	n := len(sk.header) + 1 + enc.EncodedLen(len(payload))
	buf := make([]byte, n, n+1+enc.EncodedLen(backends.SignatureSize))
	copy(buf, sk.header)
	buf[len(sk.header)] = '.'
	enc.Encode(buf[len(sk.header)+1:], payload)
	digest := sha256.Sum256(buf)

	b, v := sk.backend, sk.key.Version
	start := time.Now()
	var sig []byte
	if db, ok := b.(backends.DeadlineBound); b.Remote() && !(ok && db.HonorsDeadline()) {
		sig, err = signWithin(ctx, b, v.ID, digest[:])
	} else {
		sig, err = b.Sign(ctx, v.ID, digest[:])
	}
	if err == nil && len(sig) != backends.SignatureSize {
		err = fmt.Errorf("jwks: %s returned a %d-byte signature for %s: %w", b.Kind(), len(sig), v.ID, backends.ErrIntegrity)
	}
	if err == nil && b.Remote() && !backends.VerifyJOSE(v.PublicKey, digest[:], sig) {
		err = fmt.Errorf("jwks: signature from %s for %s does not verify with kid %s: %w", b.Kind(), v.ID, sk.key.KID, backends.ErrIntegrity)
	}
	if k.cfg.OnSign != nil {
		k.cfg.OnSign(b.Kind(), sk.key.KID, time.Since(start), err)
	}
	if err != nil {
		return "", sk.key.KID, err
	}
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, sig)
	return string(buf), sk.key.KID, nil
}

// signWithin calls a remote backend's Sign but returns when ctx ends even if
// the backend does not, so that no request outlives its deadline because of
// a client library that ignores its context.
func signWithin(ctx context.Context, b backends.Backend, id string, digest []byte) ([]byte, error) {
	type result struct {
		sig []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		sig, err := b.Sign(ctx, id, digest)
		done <- result{sig, err}
	}()
	select {
	case r := <-done:
		return r.sig, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("jwks: sign with %s: %w", id, backends.Deadline(ctx.Err()))
	}
}
