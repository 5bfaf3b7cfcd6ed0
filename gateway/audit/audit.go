// Package audit writes the audit trail of issued tokens: one JSON line per
// token the gateway signs (sign API, proxy and forward-auth assertions),
// saying what was issued to whom, and never the token itself.
package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"
)

// Record is one issued token.
type Record struct {
	Time time.Time `json:"time"`
	// Kind is "sign" (sign API) or "assertion" (proxy, forward-auth).
	Kind string   `json:"kind"`
	JTI  string   `json:"jti"`
	KID  string   `json:"kid"`
	Sub  string   `json:"sub"`
	Aud  []string `json:"aud"`
	Exp  int64    `json:"exp"`
	// Client is the sign API client; Route the route (or "forward-auth")
	// an assertion was minted for.
	Client string `json:"client,omitempty"`
	Route  string `json:"route,omitempty"`
	// Remote is the address of the request's client.
	Remote string `json:"remote,omitempty"`
}

// Log writes records as JSON lines; a nil *Log writes nothing. It is safe
// for concurrent use.
type Log struct {
	mu     sync.Mutex
	w      io.Writer
	onFail func(error)
}

// New returns a log writing to w; onFail (may be nil) hears of write errors.
func New(w io.Writer, onFail func(error)) *Log { return &Log{w: w, onFail: onFail} }

// Open returns the log a --audit-log value names: "-" is standard output,
// "off" none (nil), anything else a file rotated at maxMB MiB keeping
// backups old files. The closer flushes and closes a file.
func Open(dest string, maxMB, backups int, onFail func(error)) (*Log, io.Closer, error) {
	switch dest {
	case "off":
		return nil, nopCloser{}, nil
	case "-", "":
		return New(os.Stdout, onFail), nopCloser{}, nil
	}
	if maxMB <= 0 || backups < 0 {
		return nil, nil, fmt.Errorf("audit log %s: the size limit must be positive and the backups not negative", dest)
	}
	f, err := os.OpenFile(dest, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("audit log: %w", err)
	}
	_ = f.Close()
	lj := &lumberjack.Logger{Filename: dest, MaxSize: maxMB, MaxBackups: backups}
	return New(lj, onFail), lj, nil
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// Origin is who an assertion was minted for: the route (or
// "forward-auth") and the client's address.
type Origin struct {
	Route  string
	Remote netip.Addr
}

// Write appends one record.
func (l *Log) Write(r Record) {
	if l == nil {
		return
	}
	b, err := json.Marshal(r)
	if err == nil {
		b = append(b, '\n')
		l.mu.Lock()
		_, err = l.w.Write(b)
		l.mu.Unlock()
	}
	if err != nil && l.onFail != nil {
		l.onFail(errors.Join(errors.New("audit log"), err))
	}
}

// FromClaims fills a record's token fields from the claims kmsgate signed.
func FromClaims(kind, kid string, claims map[string]any) Record {
	r := Record{Time: time.Now().UTC(), Kind: kind, KID: kid}
	r.JTI, _ = claims["jti"].(string)
	r.Sub, _ = claims["sub"].(string)
	switch a := claims["aud"].(type) {
	case string:
		r.Aud = []string{a}
	case []any:
		for _, v := range a {
			if s, ok := v.(string); ok {
				r.Aud = append(r.Aud, s)
			}
		}
	case []string:
		r.Aud = a
	}
	switch e := claims["exp"].(type) {
	case int64:
		r.Exp = e
	case json.Number:
		r.Exp, _ = e.Int64()
	}
	return r
}
