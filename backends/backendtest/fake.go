package backendtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsgate/kmsgate/backends"
)

// Fake is an in-memory remote backend (ByCreation, Remote) for tests of the
// keyring and the gateway. It holds real P-256 keys, can fail, hang, or sign
// with the wrong key, and counts its calls.
type Fake struct {
	mu       sync.Mutex
	versions []backends.Version
	keys     map[string]*ecdsa.PrivateKey
	fail     error
	hang     chan struct{} // closed to release the calls held by SetHang
	delay    time.Duration
	wrongKey bool

	// Lists and Signs count the calls to Versions and Sign.
	Lists, Signs atomic.Int64
}

// Kind implements backends.Backend.
func (f *Fake) Kind() string { return "fake" }

// Ordering implements backends.Backend.
func (f *Fake) Ordering() backends.Ordering { return backends.ByCreation }

// Remote implements backends.Backend.
func (f *Fake) Remote() bool { return true }

// Close implements backends.Backend.
func (f *Fake) Close() error { return nil }

// Add creates an enabled version with a new key.
func (f *Fake) Add(id string, created time.Time) *ecdsa.PublicKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.keys == nil {
		f.keys = map[string]*ecdsa.PrivateKey{}
	}
	f.keys[id] = k
	f.versions = append(f.versions, backends.Version{ID: id, PublicKey: &k.PublicKey, Created: created, State: backends.StateEnabled})
	return &k.PublicKey
}

// SetState changes a version's state.
func (f *Fake) SetState(id string, st backends.State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.versions {
		if f.versions[i].ID == id {
			f.versions[i].State = st
		}
	}
}

// SetFail makes every call fail with err (nil: succeed again).
func (f *Fake) SetFail(err error) { f.mu.Lock(); f.fail = err; f.mu.Unlock() }

// SetHang(true) makes Sign block, ignoring its context, until SetHang(false)
// releases the calls held (they then go on as if they had just arrived).
func (f *Fake) SetHang(h bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case h && f.hang == nil:
		f.hang = make(chan struct{})
	case !h && f.hang != nil:
		close(f.hang)
		f.hang = nil
	}
}

// SetDelay makes Sign wait d (or until its context ends) before answering.
func (f *Fake) SetDelay(d time.Duration) { f.mu.Lock(); f.delay = d; f.mu.Unlock() }

// SetWrongKey makes Sign answer with a signature by another version's key.
func (f *Fake) SetWrongKey(w bool) { f.mu.Lock(); f.wrongKey = w; f.mu.Unlock() }

// Versions implements backends.Backend.
func (f *Fake) Versions(context.Context) ([]backends.Version, error) {
	f.Lists.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	return append([]backends.Version(nil), f.versions...), nil
}

// Sign implements backends.Backend.
func (f *Fake) Sign(ctx context.Context, id string, digest []byte) ([]byte, error) {
	f.Signs.Add(1)
	f.mu.Lock()
	hang := f.hang
	f.mu.Unlock()
	if hang != nil {
		<-hang // a client library that ignores its context
	}
	f.mu.Lock()
	fail, delay, wrong := f.fail, f.delay, f.wrongKey
	k := f.keys[id]
	if wrong {
		for other, ok := range f.keys {
			if other != id {
				k = ok
				break
			}
		}
	}
	f.mu.Unlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("fake: sign: %w", backends.Deadline(ctx.Err()))
		case <-t.C:
		}
	}
	if fail != nil {
		return nil, fail
	}
	if k == nil {
		return nil, fmt.Errorf("fake: %s: %w", id, backends.ErrNotFound)
	}
	r, s, err := ecdsa.Sign(rand.Reader, k, digest)
	if err != nil {
		return nil, err
	}
	sig := make([]byte, backends.SignatureSize)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return sig, nil
}
