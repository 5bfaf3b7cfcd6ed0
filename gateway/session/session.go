// Package session seals what the gateway keeps in a browser between
// requests (the sign-in state and the session) into cookies: encrypted and
// authenticated with AES-256-GCM under keys the operator holds, bound to
// the cookie's name, and split over a few cookies when long.
package session

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// KeySize is the size of a cookie secret: 32 random bytes (AES-256).
const KeySize = 32

// maxCookie is the most bytes of one cookie's value; with its name and
// attributes a cookie stays under browsers' 4096-byte limit.
const maxCookie = 3800

// MaxChunks is the most cookies one sealed value is split over.
const MaxChunks = 3

// ErrInvalid is the failure to open a cookie: missing, cut, tampered with,
// sealed under an unknown key or for another name, or expired.
var ErrInvalid = errors.New("session: invalid or expired cookie")

// Sealer seals and opens cookie values. The first key seals; every key
// opens, so a new key can be put first while cookies sealed under the old
// one still open (rotation).
type Sealer struct {
	aeads []cipher.AEAD
	now   func() time.Time
}

// ParseKeys reads cookie secrets: one or more lines, each the standard
// base64 of KeySize random bytes; blank lines and lines starting with #
// are skipped. The first key seals. The secret never appears in an error;
// where names it.
func ParseKeys(data []byte, where string) (*Sealer, error) {
	var keys [][]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil || len(k) != KeySize {
			return nil, fmt.Errorf("%s: line %d is not the base64 of %d bytes (make one with: head -c %d /dev/urandom | base64)", where, n, KeySize, KeySize)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no key (make one with: head -c %d /dev/urandom | base64)", where, KeySize)
	}
	return NewSealer(keys...)
}

// NewSealer returns a sealer over keys, the first of which seals.
func NewSealer(keys ...[]byte) (*Sealer, error) {
	if len(keys) == 0 {
		return nil, errors.New("session: no key")
	}
	s := &Sealer{now: time.Now}
	for i, k := range keys {
		if len(k) != KeySize {
			return nil, fmt.Errorf("session: key %d has %d bytes, want %d", i+1, len(k), KeySize)
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, err
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		s.aeads = append(s.aeads, aead)
	}
	return s, nil
}

// SetClock replaces the sealer's clock (tests).
func (s *Sealer) SetClock(now func() time.Time) { s.now = now }

// Seal encrypts value for the cookie name, to be opened until expires. The
// name and the expiry are authenticated with it.
func (s *Sealer) Seal(name string, value []byte, expires time.Time) string {
	aead := s.aeads[0]
	out := make([]byte, 8+aead.NonceSize(), 8+aead.NonceSize()+len(value)+aead.Overhead())
	putUint64(out, uint64(expires.Unix()))
	_, _ = rand.Read(out[8:]) // never fails (crypto/rand, Go 1.24+)
	out = aead.Seal(out, out[8:], value, additional(name, out[:8]))
	return base64.RawURLEncoding.EncodeToString(out)
}

// Open decrypts a value sealed for the cookie name; ErrInvalid when it
// cannot (or it has expired).
func (s *Sealer) Open(name, sealed string) ([]byte, error) {
	b, err := base64.RawURLEncoding.Strict().DecodeString(sealed)
	if err != nil {
		return nil, ErrInvalid
	}
	for _, aead := range s.aeads {
		if len(b) < 8+aead.NonceSize()+aead.Overhead() {
			return nil, ErrInvalid
		}
		nonce := b[8 : 8+aead.NonceSize()]
		v, err := aead.Open(nil, nonce, b[8+aead.NonceSize():], additional(name, b[:8]))
		if err != nil {
			continue
		}
		if s.now().Unix() >= int64(getUint64(b)) {
			return nil, ErrInvalid
		}
		return v, nil
	}
	return nil, ErrInvalid
}

func additional(name string, expires []byte) []byte {
	return append(append([]byte(name), 0), expires...)
}

func putUint64(b []byte, v uint64) {
	for i := 7; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
}

func getUint64(b []byte) uint64 {
	var v uint64
	for _, c := range b[:8] {
		v = v<<8 | uint64(c)
	}
	return v
}

// Cookies describes the cookies a sealed value is written to: the name
// (chunks after the first are name_1, name_2), and the attributes.
type Cookies struct {
	Name   string
	Domain string // empty: host-only
	Secure bool
}

// Write returns the Set-Cookie values that store sealed, expiring at
// expires, and clear chunks a longer earlier value left; an error when it
// needs more than MaxChunks cookies.
func (c Cookies) Write(sealed string, expires time.Time) ([]string, error) {
	n := (len(sealed) + maxCookie - 1) / maxCookie
	if n > MaxChunks {
		return nil, fmt.Errorf("session: %d bytes sealed need %d cookies, more than %d", len(sealed), n, MaxChunks)
	}
	out := make([]string, 0, MaxChunks)
	for i := 0; i < MaxChunks; i++ {
		if i < n {
			part := sealed[i*maxCookie : min(len(sealed), (i+1)*maxCookie)]
			out = append(out, c.cookie(c.chunk(i), part, expires, false))
		} else {
			out = append(out, c.cookie(c.chunk(i), "", time.Time{}, true))
		}
	}
	return out, nil
}

// Clear returns the Set-Cookie values that remove every chunk.
func (c Cookies) Clear() []string {
	out := make([]string, 0, MaxChunks)
	for i := 0; i < MaxChunks; i++ {
		out = append(out, c.cookie(c.chunk(i), "", time.Time{}, true))
	}
	return out
}

// Read joins the chunks of the value from a request's Cookie headers; ""
// when the first is missing.
func (c Cookies) Read(cookieHeaders []string) string {
	var parts [MaxChunks]string
	for _, line := range cookieHeaders {
		for line != "" {
			var pair string
			pair, line, _ = strings.Cut(line, ";")
			name, value, ok := strings.Cut(strings.TrimSpace(pair), "=")
			if !ok || !strings.HasPrefix(name, c.Name) {
				continue
			}
			for i := range MaxChunks {
				if name == c.chunk(i) && parts[i] == "" {
					parts[i] = strings.Trim(value, `"`)
				}
			}
		}
	}
	if parts[0] == "" {
		return ""
	}
	if parts[1] == "" {
		return parts[0]
	}
	return parts[0] + parts[1] + parts[2]
}

// Owns reports whether a cookie name is one of c's chunks.
func (c Cookies) Owns(name string) bool {
	if name == c.Name {
		return true
	}
	rest, ok := strings.CutPrefix(name, c.Name+"_")
	if !ok {
		return false
	}
	i, err := strconv.Atoi(rest)
	return err == nil && i > 0 && i < MaxChunks
}

func (c Cookies) chunk(i int) string {
	if i == 0 {
		return c.Name
	}
	return c.Name + "_" + strconv.Itoa(i)
}

func (c Cookies) cookie(name, value string, expires time.Time, clear bool) string {
	ck := http.Cookie{Name: name, Value: value, Path: "/", Domain: c.Domain, Secure: c.Secure, HttpOnly: true, SameSite: http.SameSiteLaxMode}
	if clear {
		ck.MaxAge = -1
	} else {
		ck.Expires = expires
	}
	return ck.String()
}
