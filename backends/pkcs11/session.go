//go:build pkcs11 && cgo

package pkcs11

import (
	"context"
	"fmt"
	"sync"

	p11 "github.com/miekg/pkcs11"

	"github.com/kmsgate/kmsgate/backends"
)

// session is one open PKCS#11 session of a pool generation.
type session struct {
	h   p11.SessionHandle
	gen uint64
}

// pool holds the read-only sessions of one key URI. At most max sessions
// are open; each caller holds one exclusively (a PKCS#11 session must not be
// used by two threads at once) and waits, within its context, for a free
// one. A reset starts a new generation: idle sessions of the old one are
// closed at once, sessions in use when they come back, and the token is
// found again by its attributes before the next session opens (a token that
// was removed and inserted again may sit in another slot).
type pool struct {
	b   *Backend
	max int
	sem chan struct{} // one token per session in use

	mu       sync.Mutex
	idle     []session
	open     int // sessions open: idle and in use
	busy     int // sessions in use
	gen      uint64
	slot     uint
	haveSlot bool
	closed   bool
	drained  chan struct{} // closed when the pool is closed and no session is in use
}

func newPool(b *Backend, max int) *pool {
	return &pool{b: b, max: max, sem: make(chan struct{}, max), drained: make(chan struct{})}
}

// get returns a session for the caller's exclusive use, opening one (and
// logging in) when none is idle. Each get must be paired with a put.
func (p *pool) get(ctx context.Context) (session, error) {
	select {
	case p.sem <- struct{}{}:
	default:
		select {
		case p.sem <- struct{}{}:
		case <-ctx.Done():
			return session{}, fmt.Errorf("pkcs11: %s: waiting for one of the %d sessions (x-max-sessions): %w", p.b.uri, p.max, backends.Deadline(ctx.Err()))
		}
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.sem
		return session{}, fmt.Errorf("pkcs11: %s: %w: the backend is closed", p.b.uri, backends.ErrUnavailable)
	}
	p.busy++
	if n := len(p.idle); n > 0 {
		s := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return s, nil
	}
	// Every open session is idle or held by a caller holding a semaphore
	// token, so with none idle fewer than max are open.
	p.open++
	gen := p.gen
	p.mu.Unlock()
	s, err := p.openSession(gen)
	if err != nil {
		p.mu.Lock()
		p.open--
		p.done()
		p.mu.Unlock()
		<-p.sem
		return session{}, err
	}
	return s, nil
}

// done counts one session fewer in use; call it with p.mu held.
func (p *pool) done() {
	p.busy--
	if p.closed && p.busy == 0 {
		close(p.drained)
	}
}

// put gives a session back. A session that failed, or that belongs to an
// older generation, is closed instead of kept.
func (p *pool) put(s session, healthy bool) {
	p.mu.Lock()
	keep := healthy && s.gen == p.gen && !p.closed
	if keep {
		p.idle = append(p.idle, s)
	} else {
		p.open--
	}
	p.done()
	p.mu.Unlock()
	if !keep {
		_ = p.b.mod.ctx.CloseSession(s.h)
	}
	<-p.sem
}

// reset starts a new generation after the token dropped the sessions (a
// token reset, a removed device): the idle sessions are closed and the
// token is looked up again before the next session opens.
func (p *pool) reset() {
	p.mu.Lock()
	p.gen++
	p.haveSlot = false
	old := p.idle
	p.idle = nil
	p.open -= len(old)
	p.mu.Unlock()
	for _, s := range old {
		_ = p.b.mod.ctx.CloseSession(s.h)
	}
}

// close closes the idle sessions; sessions in use are closed when they
// come back. Closing a process's last session on a token ends its login
// there, so no C_Logout is needed (and none is made: another key URI on the
// same token shares the login). It returns a channel closed once no session
// is in use any more.
func (p *pool) close() <-chan struct{} {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		if p.busy == 0 {
			close(p.drained)
		}
	}
	old := p.idle
	p.idle = nil
	p.open -= len(old)
	p.mu.Unlock()
	for _, s := range old {
		_ = p.b.mod.ctx.CloseSession(s.h)
	}
	return p.drained
}

// openSession opens a read-only session on the token and logs the user in
// if the token is not logged in yet.
func (p *pool) openSession(gen uint64) (session, error) {
	slot, err := p.slotFor(gen)
	if err != nil {
		return session{}, err
	}
	h, err := p.b.mod.ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION)
	if err != nil {
		if tokenGone(err) {
			p.forgetSlot(gen)
		}
		return session{}, p.b.mapError("open a session", err)
	}
	if err := p.b.login(h); err != nil {
		_ = p.b.mod.ctx.CloseSession(h)
		return session{}, err
	}
	return session{h: h, gen: gen}, nil
}

// slotFor returns the slot of the token, looking it up once per generation.
func (p *pool) slotFor(gen uint64) (uint, error) {
	p.mu.Lock()
	if p.haveSlot && p.gen == gen {
		slot := p.slot
		p.mu.Unlock()
		return slot, nil
	}
	p.mu.Unlock()
	slot, err := p.b.findToken()
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	if p.gen == gen {
		p.slot, p.haveSlot = slot, true
	}
	p.mu.Unlock()
	return slot, nil
}

// forgetSlot makes the next session of generation gen look the token up
// again.
func (p *pool) forgetSlot(gen uint64) {
	p.mu.Lock()
	if p.gen == gen {
		p.haveSlot = false
	}
	p.mu.Unlock()
}

// stats returns the sessions open and idle, for tests.
func (p *pool) stats() (open, idle int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open, len(p.idle)
}
