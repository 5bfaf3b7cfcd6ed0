// Package front holds the gateway's servers: the listener that splits
// connections between fasthttp (HTTP/1.x) and net/http with echo (HTTP/2,
// h2c, WebSocket), the two thin adapters that translate requests and
// answers for the core and carry out its forwarding plans, and the admin
// server.
package front

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/kmsgate/kmsgate/gateway/core"
)

const (
	// handshakeTimeout bounds the TLS handshake and the wait for a
	// cleartext connection's first bytes.
	handshakeTimeout = 10 * time.Second
	// headerTimeout bounds reading a request's header.
	headerTimeout = 10 * time.Second
	// idleTimeout closes keep-alive connections that stay idle.
	idleTimeout = 2 * time.Minute
	// maxHeaderBytes is the largest request or upstream response header.
	maxHeaderBytes = 32 << 10
)

// http2Preface starts every cleartext HTTP/2 connection (RFC 9113 3.4).
const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Server serves the public port: every connection is classified once (TLS
// ALPN, or the HTTP/2 preface in cleartext) and handed to the HTTP/1.x or
// the HTTP/2 server; both answer through the same core.
type Server struct{ core *core.Core }

// New returns the public server of a core.
func New(c *core.Core) *Server { return &Server{core: c} }

// Serve answers on ln until ctx ends, then shuts down gracefully: it stops
// accepting connections and lets in-flight requests finish for up to grace.
// With tlsCfg the listener serves TLS (HTTP/1.1 and h2 by ALPN); without, it
// serves HTTP/1.1 and h2c with prior knowledge.
func (s *Server) Serve(ctx context.Context, ln net.Listener, tlsCfg *tls.Config, grace time.Duration) error {
	log := s.core.Logger()
	if tlsCfg != nil {
		tlsCfg = tlsCfg.Clone()
		if len(tlsCfg.NextProtos) == 0 {
			tlsCfg.NextProtos = []string{"h2", "http/1.1"}
		}
	}
	h1q, h2q := newConnQueue(ln.Addr()), newConnQueue(ln.Addr())
	h2 := newStdFront(s.core).server(ctx)
	fast := newFastFront(s.core, h2q).server(s.core.MaxBody())
	errc := make(chan error, 3)
	go func() { errc <- fast.Serve(h1q) }()
	go func() { errc <- h2.Serve(h2q) }()
	go func() { errc <- s.accept(ln, tlsCfg, h1q, h2q) }()

	var err error
	select {
	case err = <-errc:
		err = fmt.Errorf("gateway: serve: %w", err)
	case <-ctx.Done():
		log.Info("shutting down; letting in-flight requests finish", "grace", grace.String())
	}
	_ = ln.Close()
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	var wg sync.WaitGroup
	var fastErr, h2Err error
	wg.Add(2)
	go func() { defer wg.Done(); fastErr = fast.ShutdownWithContext(sctx) }()
	go func() { defer wg.Done(); h2Err = h2.Shutdown(sctx) }()
	wg.Wait()
	h1q.Close()
	h2q.Close()
	if err != nil {
		return err
	}
	if err := errors.Join(fastErr, h2Err); err != nil {
		return fmt.Errorf("gateway: shutdown: %w", err)
	}
	return nil
}

// accept hands each connection of ln to the HTTP/1.x or the HTTP/2 server,
// after the TLS handshake or a look at the first bytes. It returns when ln
// is closed.
func (s *Server) accept(ln net.Listener, tlsCfg *tls.Config, h1, h2 *connQueue) error {
	log := s.core.Logger()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		go func() {
			conn, http2, err := classify(&deadlineConn{Conn: c}, tlsCfg)
			if err != nil {
				log.Debug("connection dropped before its first request", "remote", c.RemoteAddr().String(), "err", err.Error())
				_ = c.Close()
				return
			}
			if http2 {
				h2.deliver(conn)
			} else {
				h1.deliver(conn)
			}
		}()
	}
}

// classify completes the TLS handshake, or reads the first bytes of a
// cleartext connection, and reports whether the connection speaks HTTP/2.
func classify(c net.Conn, tlsCfg *tls.Config) (net.Conn, bool, error) {
	if err := c.SetDeadline(time.Now().Add(handshakeTimeout)); err != nil {
		return nil, false, err
	}
	if tlsCfg != nil {
		tc := tls.Server(c, tlsCfg)
		if err := tc.Handshake(); err != nil {
			return nil, false, fmt.Errorf("TLS handshake: %w", err)
		}
		if err := c.SetDeadline(time.Time{}); err != nil {
			return nil, false, err
		}
		if tc.ConnectionState().NegotiatedProtocol == "h2" {
			return tc, true, nil
		}
		return &tlsConn{Conn: tc}, false, nil
	}
	// A request line is longer than 3 bytes, and only the HTTP/2 preface
	// starts with "PRI".
	var b [3]byte
	n, err := io.ReadFull(c, b[:])
	if err != nil {
		return nil, false, err
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return nil, false, err
	}
	return &prefixedConn{Conn: c, prefix: b[:n]}, string(b[:n]) == http2Preface[:3], nil
}

// prefixedConn replays bytes already read from a connection (by classify,
// or the request fasthttp read before a hand-off) before reading on.
type prefixedConn struct {
	net.Conn
	prefix []byte
	tls    *tls.ConnectionState // of a TLS connection handed off by fasthttp
	// handedOff marks a connection the HTTP/1.x server handed off after
	// a WebSocket upgrade request.
	handedOff bool
	connScratch
}

// tlsConn is a TLS connection of the HTTP/1.x server, with its scratch
// space; it keeps tls.Conn's methods, which fasthttp reads the TLS state
// through.
type tlsConn struct {
	*tls.Conn
	connScratch
}

// connScratch is a connection's scratch space, made on first use.
type connScratch struct{ sc *scratch }

func (c *connScratch) scratch() *scratch {
	if c.sc == nil {
		c.sc = new(scratch)
	}
	return c.sc
}

func (p *prefixedConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// connQueue is a net.Listener fed with classified connections.
type connQueue struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (q *connQueue) deliver(c net.Conn) {
	select {
	case q.ch <- c:
	case <-q.done:
		_ = c.Close()
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }
