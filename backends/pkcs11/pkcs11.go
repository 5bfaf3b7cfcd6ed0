//go:build pkcs11 && cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/kmsgate/kmsgate/backends"
)

// Supported reports whether this build can open pkcs11: key URIs: it needs
// cgo and the build tag pkcs11 (make build-pkcs11).
const Supported = true

// maxPINFile is the largest PIN file read.
const maxPINFile = 4 << 10

func init() { backends.Register(Scheme, Open) }

// Backend is one pkcs11: key URI. It is safe for concurrent use.
type Backend struct {
	uri     *URI
	mod     *module
	pool    *pool
	watch   *watch
	log     *slog.Logger
	limiter *backends.Limiter

	// loginMu serialises logins, so that concurrent sessions do not each
	// try a wrong PIN.
	loginMu sync.Mutex
	// badPIN is the SHA-256 of the last PIN the token refused, with the
	// error; a PIN is not tried again until the source gives another one.
	badPIN    *[sha256.Size]byte
	badPINErr error
	logins    int // C_Login calls made, for tests

	mu      sync.RWMutex
	keys    map[string]*key     // by version ID, from the last listing
	checked map[string][]byte   // version ID -> public key whose binding was checked
	warned  map[string]struct{} // version IDs warned about (extractable)

	closeOnce sync.Once
}

// Open is the backends.Opener of the pkcs11 scheme. It parses the URI,
// checks that the PIN can be read and loads the module; the token is looked
// up and logged in to on the first call, so that a token that is not there
// yet makes the gateway start unready rather than fail.
func Open(_ context.Context, u *url.URL, opts backends.Options) (backends.Backend, error) {
	p, err := parseURL(u, opts.Dev)
	if err != nil {
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	b := &Backend{
		uri:     p,
		log:     logger.With("backend", "pkcs11", "key", p.String()),
		limiter: backends.NewLimiter(opts.QPS),
		keys:    map[string]*key{},
		checked: map[string][]byte{},
		warned:  map[string]struct{}{},
		watch:   newWatch(),
	}
	if _, err := b.readPIN(); err != nil {
		return nil, err
	}
	if b.mod, err = loadModule(p.ModulePath); err != nil {
		return nil, fmt.Errorf("pkcs11: %s: %w", p, err)
	}
	b.pool = newPool(b, p.MaxSessions)
	return b, nil
}

// Kind implements backends.Backend.
func (b *Backend) Kind() string { return "pkcs11" }

// Ordering implements backends.Backend: Pomerium's rule over the keys in
// CKA_ID order (see the package documentation for why).
func (b *Backend) Ordering() backends.Ordering { return backends.FirstSigns }

// Remote implements backends.Backend: the HSM signs, so the keyring
// verifies every signature against the version's public key.
func (b *Backend) Remote() bool { return true }

// HonorsDeadline implements backends.DeadlineBound, so that the keyring
// signs on the caller's goroutine: waiting for a session ends with the
// caller's deadline, and once a call to the token outlives its caller's
// deadline every later call fails at once (see watch). A call already
// inside the PKCS#11 library when the token hangs returns when the
// library's own timeout ends; set that timeout (Luna's ReceiveTimeout,
// CloudHSM's and nShield's client settings) below the request deadline.
func (b *Backend) HonorsDeadline() bool { return true }

// String names the backend's keys for logs and errors.
func (b *Backend) String() string { return b.uri.String() }

// closeWait bounds how long Close waits for the calls in progress.
const closeWait = 5 * time.Second

// Close closes the sessions and, once no call is in progress, unloads the
// module when no other key URI uses it. A call still inside the library
// after closeWait (a hung token) keeps the module loaded: finalising it
// under a running call could crash the process.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		t := time.NewTimer(closeWait)
		defer t.Stop()
		select {
		case <-b.pool.close():
			b.mod.release()
		case <-t.C:
			b.log.Warn("PKCS#11 calls still in progress at close; the module stays loaded", "waited", closeWait.String())
		}
	})
	return nil
}

// readPIN reads the user PIN from the URI's pin-source file (a trailing
// line break is dropped) or returns its pin-value.
func (b *Backend) readPIN() (string, error) {
	if b.uri.HasPINValue {
		return b.uri.PINValue, nil
	}
	path := b.uri.PINFile
	bad := func(format string, args ...any) error {
		return fmt.Errorf("pkcs11: %s: %w: pin-source %s: %s", b.uri, backends.ErrConfig, path, fmt.Sprintf(format, args...))
	}
	f, err := os.Open(path)
	if err != nil {
		return "", bad("%v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", bad("%v", err)
	}
	if !st.Mode().IsRegular() {
		return "", bad("not a regular file")
	}
	data, err := io.ReadAll(io.LimitReader(f, maxPINFile+1))
	if err != nil {
		return "", bad("%v", err)
	}
	if len(data) > maxPINFile {
		return "", bad("more than %d bytes; it should hold only the PIN", maxPINFile)
	}
	data = bytes.TrimRight(data, "\r\n")
	if len(data) == 0 {
		return "", bad("the file is empty")
	}
	return string(data), nil
}

// pinSourceName says where the PIN comes from, for errors.
func (b *Backend) pinSourceName() string {
	if b.uri.HasPINValue {
		return "pin-value"
	}
	return "pin-source " + b.uri.PINFile
}

// login logs the user in on the token through session h, unless the token
// is logged in already (the login state is shared by all the process's
// sessions on a token).
func (b *Backend) login(h p11.SessionHandle) error {
	ctx := b.mod.ctx
	if info, err := ctx.GetSessionInfo(h); err == nil && (info.State == p11.CKS_RO_USER_FUNCTIONS || info.State == p11.CKS_RW_USER_FUNCTIONS) {
		return nil
	}
	b.loginMu.Lock()
	defer b.loginMu.Unlock()
	pin, err := b.readPIN()
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(pin))
	if b.badPIN != nil && *b.badPIN == sum {
		return b.badPINErr
	}
	b.logins++
	err = ctx.Login(h, p11.CKU_USER, pin)
	switch c := code(err); c {
	case p11.CKR_OK, p11.CKR_USER_ALREADY_LOGGED_IN:
		b.badPIN, b.badPINErr = nil, nil
		return nil
	case p11.CKR_PIN_INCORRECT, p11.CKR_PIN_INVALID, p11.CKR_PIN_LEN_RANGE, p11.CKR_PIN_LOCKED, p11.CKR_PIN_EXPIRED:
		what := map[uint]string{
			p11.CKR_PIN_INCORRECT: "the PIN is wrong",
			p11.CKR_PIN_INVALID:   "the PIN has characters the token does not accept",
			p11.CKR_PIN_LEN_RANGE: "the PIN's length is outside what the token accepts",
			p11.CKR_PIN_LOCKED:    "the user PIN is locked (too many wrong PINs); the security officer must unlock it",
			p11.CKR_PIN_EXPIRED:   "the user PIN has expired; set a new one",
		}[c]
		retry := "it is not tried again until the file changes"
		if b.uri.HasPINValue {
			retry = "it is not tried again"
		}
		b.badPIN = &sum
		b.badPINErr = fmt.Errorf("pkcs11: %s: log in with the PIN from %s: %s (%s); %s, so that retries cannot lock the token: %w: %w",
			b.uri, b.pinSourceName(), what, strerror(err), retry, backends.ErrPermission, backends.ErrConfig)
		b.log.Error("PKCS#11 login refused", "pin_source", b.pinSourceName(), "reason", what)
		return b.badPINErr
	case p11.CKR_USER_PIN_NOT_INITIALIZED:
		return fmt.Errorf("pkcs11: %s: log in: the token's user PIN is not initialised (%s): %w", b.uri, strerror(err), backends.ErrConfig)
	case p11.CKR_USER_ANOTHER_ALREADY_LOGGED_IN, p11.CKR_USER_TOO_MANY_TYPES:
		return fmt.Errorf("pkcs11: %s: log in: another user (the security officer?) is logged in to the token (%s): %w", b.uri, strerror(err), backends.ErrPermission)
	default:
		return b.mapError("log in", err)
	}
}

// findToken returns the slot of the one token the URI selects.
func (b *Backend) findToken() (uint, error) {
	ctx := b.mod.ctx
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return 0, b.mapError("list the slots", err)
	}
	var match []uint
	var seen []string
	for _, slot := range slots {
		ti, err := ctx.GetTokenInfo(slot)
		if err != nil {
			continue // removed in between
		}
		if ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		label, serial := strings.TrimRight(ti.Label, " \x00"), strings.TrimRight(ti.SerialNumber, " \x00")
		seen = append(seen, fmt.Sprintf("%q (serial %s, slot-id %d)", label, serial, slot))
		u := b.uri
		if (u.Token != "" && u.Token != label) ||
			(u.Serial != "" && u.Serial != serial) ||
			(u.Manufacturer != "" && u.Manufacturer != strings.TrimRight(ti.ManufacturerID, " \x00")) ||
			(u.Model != "" && u.Model != strings.TrimRight(ti.Model, " \x00")) ||
			(u.HasSlotID && u.SlotID != slot) {
			continue
		}
		match = append(match, slot)
	}
	switch len(match) {
	case 1:
		return match[0], nil
	case 0:
		present := "none"
		if len(seen) > 0 {
			present = strings.Join(seen, ", ")
		}
		return 0, fmt.Errorf("pkcs11: %s: %w: no initialised token in %s matches (tokens present: %s)", b.uri, backends.ErrNotFound, b.uri.ModulePath, present)
	default:
		ids := make([]string, len(match))
		for i, s := range match {
			ids[i] = strconv.FormatUint(uint64(s), 10)
		}
		return 0, fmt.Errorf("pkcs11: %s: %w: %d tokens match (slot-id %s): add token=, serial= or slot-id= to pick one", b.uri, backends.ErrInvalidURI, len(match), strings.Join(ids, ", "))
	}
}

// maxRecoveries bounds the recoveries of one call: a token reset can show
// as a closed session first and as stale key handles after it.
const maxRecoveries = 2

// withSession runs op on a pooled session. When op fails because the token
// dropped the session or the login, or the key handle went stale, the pool
// is recovered (reset, login, handles found again by the caller's refind)
// and op runs again, at most maxRecoveries times.
func (b *Backend) withSession(ctx context.Context, what string, op func(s session) error, refind func(s session) error) error {
	for attempt := 0; ; attempt++ {
		s, err := b.pool.get(ctx)
		if err != nil {
			return err
		}
		w, err := b.watch.enter(ctx, b.uri)
		if err != nil {
			b.pool.put(s, true)
			return err
		}
		err = op(s)
		b.watch.leave(w)
		if err == nil {
			b.pool.put(s, true)
			return nil
		}
		c := code(err)
		recoverable := tokenGone(err) || c == p11.CKR_USER_NOT_LOGGED_IN || handleStale(err) || c == p11.CKR_OPERATION_ACTIVE
		if !recoverable || attempt >= maxRecoveries {
			b.pool.put(s, c == 0) // a PKCS#11 error may leave the session in a bad state
			if c == 0 {
				return err
			}
			return b.mapError(what, err)
		}
		b.log.Warn("PKCS#11 session or login lost; recovering", "op", what, "error", strerror(err))
		switch {
		case tokenGone(err):
			b.pool.put(s, false)
			b.pool.reset()
		case c == p11.CKR_USER_NOT_LOGGED_IN, handleStale(err):
			// The session itself is fine: log in again on it, then find
			// the key again if its handle went stale (a private object is
			// invisible without the login).
			lerr := b.login(s.h)
			if lerr == nil && handleStale(err) && refind != nil {
				lerr = refind(s)
			}
			b.pool.put(s, lerr == nil)
			if lerr != nil {
				return lerr
			}
		default:
			b.pool.put(s, false)
		}
	}
}

// tokenGone reports whether err says that the session or the token is gone:
// the pool must start over.
func tokenGone(err error) bool {
	switch code(err) {
	case p11.CKR_SESSION_HANDLE_INVALID, p11.CKR_SESSION_CLOSED, p11.CKR_DEVICE_REMOVED,
		p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_TOKEN_NOT_RECOGNIZED, p11.CKR_SLOT_ID_INVALID, p11.CKR_DEVICE_ERROR:
		return true
	}
	return false
}

// handleStale reports whether err says that an object handle is no longer
// valid (the token was reset, or the object re-created).
func handleStale(err error) bool {
	c := code(err)
	return c == p11.CKR_KEY_HANDLE_INVALID || c == p11.CKR_OBJECT_HANDLE_INVALID
}

// mapError wraps a PKCS#11 error with what was being done and its typed
// error.
func (b *Backend) mapError(what string, err error) error {
	var typed error
	switch code(err) {
	case p11.CKR_PIN_INCORRECT, p11.CKR_PIN_LOCKED, p11.CKR_PIN_EXPIRED, p11.CKR_USER_NOT_LOGGED_IN, p11.CKR_USER_PIN_NOT_INITIALIZED:
		typed = backends.ErrPermission
	case p11.CKR_KEY_HANDLE_INVALID, p11.CKR_OBJECT_HANDLE_INVALID:
		typed = backends.ErrNotFound
	case p11.CKR_KEY_TYPE_INCONSISTENT, p11.CKR_KEY_FUNCTION_NOT_PERMITTED, p11.CKR_MECHANISM_INVALID, p11.CKR_MECHANISM_PARAM_INVALID:
		typed = backends.ErrKeyType
	case p11.CKR_SESSION_COUNT, p11.CKR_DEVICE_MEMORY, p11.CKR_HOST_MEMORY:
		typed = backends.ErrThrottled
	default:
		typed = backends.ErrUnavailable
	}
	return fmt.Errorf("pkcs11: %s: %s: %s: %w", b.uri, what, strerror(err), typed)
}

// strerror returns a PKCS#11 error's name (CKR_PIN_INCORRECT) or the error
// text.
func strerror(err error) string {
	if err == nil {
		return "no error"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": CKR_"); i >= 0 {
		return s[i+2:]
	}
	return s
}

// loginCount returns how many C_Login calls the backend made, for tests.
func (b *Backend) loginCount() int {
	b.loginMu.Lock()
	defer b.loginMu.Unlock()
	return b.logins
}

// key is one private key of the URI as the last listing found it.
type key struct {
	id     string // version ID
	label  string
	ckaID  []byte
	handle atomicHandle
	pub    []byte // uncompressed public point, for comparisons
}

// sortKeys orders keys by CKA_ID as an unsigned big-endian number, then by
// label.
func sortKeys(ks []*key) {
	slices.SortStableFunc(ks, func(a, b *key) int {
		x, y := bytes.TrimLeft(a.ckaID, "\x00"), bytes.TrimLeft(b.ckaID, "\x00")
		if c := len(x) - len(y); c != 0 {
			return c
		}
		if c := bytes.Compare(x, y); c != 0 {
			return c
		}
		return strings.Compare(a.label, b.label)
	})
}
