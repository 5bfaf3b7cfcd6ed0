//go:build pkcs11 && cgo

package pkcs11

import (
	"context"
	"fmt"
	"time"

	p11 "github.com/miekg/pkcs11"
)

// LoginCount returns how many C_Login calls b made.
func (b *Backend) LoginCount() int { return b.loginCount() }

// PoolStats returns the sessions b has open and how many are idle.
func (b *Backend) PoolStats() (open, idle int) { return b.pool.stats() }

// DropAllSessions closes every session of the process on b's token
// (C_CloseAllSessions), which also ends the login: what a token reset does
// to a running gateway.
func (b *Backend) DropAllSessions(ctx context.Context) error {
	s, err := b.pool.get(ctx)
	if err != nil {
		return err
	}
	info, err := b.mod.ctx.GetSessionInfo(s.h)
	b.pool.put(s, true)
	if err != nil {
		return err
	}
	return b.mod.ctx.CloseAllSessions(info.SlotID)
}

// Logout logs the process out of b's token (C_Logout) and leaves the
// sessions open: every session falls back to public.
func (b *Backend) Logout(ctx context.Context) error {
	s, err := b.pool.get(ctx)
	if err != nil {
		return err
	}
	defer b.pool.put(s, true)
	return b.mod.ctx.Logout(s.h)
}

// Direct is a raw session on b's token with the handle of one of its keys:
// the baseline of the benchmarks, C_SignInit and C_Sign through the same
// library with nothing of the backend around them.
type Direct struct {
	ctx *p11.Ctx
	s   p11.SessionHandle
	key p11.ObjectHandle
}

// NewDirect opens a session of its own on b's token, logged in through b,
// for version id (listed by b.Versions).
func (b *Backend) NewDirect(ctx context.Context, id string) (*Direct, error) {
	b.mu.RLock()
	k := b.keys[id]
	b.mu.RUnlock()
	if k == nil {
		return nil, fmt.Errorf("no version %s", id)
	}
	s, err := b.pool.get(ctx)
	if err != nil {
		return nil, err
	}
	info, err := b.mod.ctx.GetSessionInfo(s.h)
	b.pool.put(s, true)
	if err != nil {
		return nil, err
	}
	h, err := b.mod.ctx.OpenSession(info.SlotID, p11.CKF_SERIAL_SESSION)
	if err != nil {
		return nil, err
	}
	return &Direct{ctx: b.mod.ctx, s: h, key: k.handle.load()}, nil
}

// Sign signs digest with CKM_ECDSA: one C_SignInit and one C_Sign.
func (d *Direct) Sign(digest []byte) ([]byte, error) {
	if err := d.ctx.SignInit(d.s, ecdsaMechanism, d.key); err != nil {
		return nil, err
	}
	return d.ctx.Sign(d.s, digest)
}

// Close closes the session.
func (d *Direct) Close() error { return d.ctx.CloseSession(d.s) }

// HoldSession takes one session from b's pool and returns the function
// that gives it back.
func (b *Backend) HoldSession(ctx context.Context) (func(), error) {
	s, err := b.pool.get(ctx)
	if err != nil {
		return nil, err
	}
	return func() { b.pool.put(s, true) }, nil
}

// Private-key attributes GenerateP256 may set.
const (
	AttrSign        = p11.CKA_SIGN
	AttrSensitive   = p11.CKA_SENSITIVE
	AttrAlwaysAuth  = p11.CKA_ALWAYS_AUTHENTICATE
	AttrExtractable = p11.CKA_EXTRACTABLE
)

// GenerateP256 generates a P-256 key pair on b's token, through b's module
// and login, labelled label with CKA_ID id, with the private key's boolean
// attributes set as given: keys pkcs11-tool cannot make.
func (b *Backend) GenerateP256(ctx context.Context, label string, id []byte, priv map[uint]bool) error {
	s, err := b.pool.get(ctx)
	if err != nil {
		return err
	}
	info, err := b.mod.ctx.GetSessionInfo(s.h)
	b.pool.put(s, true)
	if err != nil {
		return err
	}
	h, err := b.mod.ctx.OpenSession(info.SlotID, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return err
	}
	defer b.mod.ctx.CloseSession(h)
	pubT := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_EC_PARAMS, oidP256),
		p11.NewAttribute(p11.CKA_VERIFY, true),
		p11.NewAttribute(p11.CKA_LABEL, label),
		p11.NewAttribute(p11.CKA_ID, id),
	}
	privT := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_LABEL, label),
		p11.NewAttribute(p11.CKA_ID, id),
	}
	for a, v := range priv {
		privT = append(privT, p11.NewAttribute(a, v))
	}
	_, _, err = b.mod.ctx.GenerateKeyPair(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_EC_KEY_PAIR_GEN, nil)}, pubT, privT)
	return err
}

// SetClock replaces the clock of b's watch of calls in progress.
func (b *Backend) SetClock(now func() time.Time) { b.watch.now = now }

// StartCall registers a call in progress whose caller waits until
// deadline, as a call stuck in the library would be, and returns the
// function that ends it.
func (b *Backend) StartCall(deadline time.Time) (end func(), err error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	c, err := b.watch.enter(ctx, b.uri)
	if err != nil {
		return nil, err
	}
	return func() { b.watch.leave(c) }, nil
}
