package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// The front end splits connections between two HTTP servers: HTTP/1.x goes
// to fasthttp, which answers the hot paths (key set, discovery, proxied
// requests) itself and hands every other request to the echo routes through
// fasthttpadaptor; HTTP/2 (TLS with ALPN h2, or cleartext with prior
// knowledge) goes to net/http, which serves the same echo routes. On a
// 2-core machine net/http's per-request cost was the ceiling of the load
// targets; see README "Performance".

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

// Serve answers on ln until ctx ends, then shuts down gracefully: it stops
// accepting connections and lets in-flight requests finish for up to grace.
// With tlsCfg the listener serves TLS (HTTP/1.1 and h2 by ALPN); without, it
// serves HTTP/1.1 and h2c with prior knowledge.
func (s *Server) Serve(ctx context.Context, ln net.Listener, tlsCfg *tls.Config, grace time.Duration) error {
	if tlsCfg != nil {
		tlsCfg = tlsCfg.Clone()
		if len(tlsCfg.NextProtos) == 0 {
			tlsCfg.NextProtos = []string{"h2", "http/1.1"}
		}
	}
	h2 := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	h2.Protocols = new(http.Protocols)
	h2.Protocols.SetHTTP1(true)
	h2.Protocols.SetHTTP2(true)
	h2.Protocols.SetUnencryptedHTTP2(true)

	h2.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if pc, ok := c.(*prefixedConn); ok && pc.tls != nil {
			return context.WithValue(ctx, tlsStateKey{}, pc.tls)
		}
		return ctx
	}
	h1q, h2q := newConnQueue(ln.Addr()), newConnQueue(ln.Addr())
	fast := s.fastServer(h2q)
	errc := make(chan error, 3)
	go func() { errc <- fast.Serve(h1q) }()
	go func() { errc <- h2.Serve(h2q) }()
	go func() { errc <- s.accept(ln, tlsCfg, h1q, h2q) }()

	var err error
	select {
	case err = <-errc:
		err = fmt.Errorf("gateway: serve: %w", err)
	case <-ctx.Done():
		s.log.Info("shutting down; letting in-flight requests finish", "grace", grace.String())
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
				s.log.Debug("connection dropped before its first request", "remote", c.RemoteAddr().String(), "err", err.Error())
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
		return tc, tc.ConnectionState().NegotiatedProtocol == "h2", nil
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
}

// tlsStateKey keys the TLS state of a handed-off connection in the
// net/http server's connection context.
type tlsStateKey struct{}

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

// fastServer is the HTTP/1.x server; it hands upgraded connections to
// handoff.
func (s *Server) fastServer(handoff *connQueue) *fasthttp.Server {
	return &fasthttp.Server{
		Handler:                      func(ctx *fasthttp.RequestCtx) { s.serveFast(ctx, handoff) },
		ErrorHandler:                 s.fastParseError,
		Name:                         "kmsgate",
		ReadBufferSize:               maxHeaderBytes,
		ReadTimeout:                  headerTimeout,
		IdleTimeout:                  idleTimeout,
		MaxRequestBodySize:           int(s.cfg.MaxBody),
		StreamRequestBody:            true, // proxied bodies stream; gateway endpoints are bounded in serveFast
		DisablePreParseMultipartForm: true,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		SecureErrorLogMessage:        true, // parse errors never quote request bytes into logs
		CloseOnShutdown:              true,
		KeepHijackedConns:            true, // handed off to net/http
		Logger:                       fastLogger{s.log},
		HeaderReceived: func(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
			// The header was read in time; a streamed body may take as long
			// as its upload takes (-1: chunked).
			if cl := h.ContentLength(); cl > 0 || cl == -1 {
				return fasthttp.RequestConfig{ReadTimeout: 24 * time.Hour}
			}
			return fasthttp.RequestConfig{}
		},
	}
}

// fastLogger sends fasthttp's own messages to the debug log.
type fastLogger struct{ log *slog.Logger }

func (l fastLogger) Printf(format string, args ...any) {
	l.log.Debug("http server", "msg", fmt.Sprintf(format, args...))
}

// fastParseError answers a request fasthttp could not read.
func (s *Server) fastParseError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.As(err, &small):
		fastFail(ctx, http.StatusRequestHeaderFieldsTooLarge, "header_too_large", "the request header is too large")
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		fastFail(ctx, http.StatusRequestEntityTooLarge, "too_large", "the request body is too large")
	default:
		fastFail(ctx, http.StatusBadRequest, "malformed", "the request could not be parsed")
	}
	ctx.SetConnectionClose()
}

// fastFail writes a JSON error answer.
func fastFail(ctx *fasthttp.RequestCtx, status int, code, msg string) {
	ctx.Response.Reset()
	ctx.SetStatusCode(status)
	ctx.SetContentTypeBytes(jsonContentTypeBytes)
	ctx.SetBody(errorJSON(code, msg))
}

var jsonContentTypeBytes = []byte("application/json")

// serveFast answers an HTTP/1.x request: the key set, discovery, the sign
// API and proxied requests here, upgrades by handing the connection to
// net/http, everything else through the echo routes.
func (s *Server) serveFast(ctx *fasthttp.RequestCtx, handoff *connQueue) {
	start := time.Now()
	path := string(ctx.Path())
	method := ctx.Method()
	getOrHead := string(method) == http.MethodGet || string(method) == http.MethodHead
	endpoint := ""
	switch {
	case getOrHead && s.isJWKSPath(path):
		endpoint = path
		s.fastJWKS(ctx)
	case getOrHead && path == discoveryPath:
		endpoint = path
		s.metrics.jwksRequests.Inc()
		s.fastDocument(ctx, s.discovery, s.discoveryTag)
	case string(method) == http.MethodPost && path == "/v1/sign":
		endpoint = path
		s.fastSign(ctx)
	case ctx.Request.Header.ConnectionUpgrade():
		s.handOff(ctx, handoff)
		return // net/http and echo take it from here
	case s.proxied(path):
		endpoint = "proxy"
		s.fastProxy(ctx, path)
	default:
		// The other gateway endpoints take small bodies only.
		if !s.boundBody(ctx) {
			endpoint = "other"
			break
		}
		s.adaptor(ctx)
		return // echo's middleware observed it
	}
	status := ctx.Response.StatusCode()
	took := time.Since(start)
	rm := s.metrics.route(endpoint, status)
	rm.requests.Inc()
	rm.duration.Observe(took.Seconds())
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("request", "method", string(method), "endpoint", endpoint, "status", status, "took_ms", float64(took.Microseconds())/1000)
	}
}

// handOff passes the connection of an upgrade request (WebSocket, h2c) to
// the net/http server, which serves the request again, and the
// connection's later ones, through echo: fasthttpadaptor cannot keep a
// request valid after a hijack.
func (s *Server) handOff(ctx *fasthttp.RequestCtx, q *connQueue) {
	if cl := ctx.Request.Header.ContentLength(); cl > 0 || cl == -1 { // -1: chunked
		fastFail(ctx, http.StatusBadRequest, "malformed", "an upgrade request may not carry a body")
		ctx.SetConnectionClose()
		return
	}
	head := append([]byte(nil), ctx.Request.Header.Header()...)
	st := ctx.TLSConnectionState()
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		if err := c.SetDeadline(time.Time{}); err != nil {
			_ = c.Close()
			return
		}
		q.deliver(&prefixedConn{Conn: c, prefix: head, tls: st})
	})
}

// boundBody reads a streamed request body of at most MaxBody bytes into
// memory, or answers 413.
func (s *Server) boundBody(ctx *fasthttp.RequestCtx) bool {
	if !ctx.Request.IsBodyStream() {
		return true
	}
	if cl := ctx.Request.Header.ContentLength(); cl > int(s.cfg.MaxBody) {
		fastFail(ctx, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the request body is larger than %d bytes", s.cfg.MaxBody))
		ctx.SetConnectionClose()
		return false
	}
	body, err := io.ReadAll(io.LimitReader(ctx.RequestBodyStream(), s.cfg.MaxBody+1))
	switch {
	case err != nil:
		fastFail(ctx, http.StatusBadRequest, "malformed", "the request body could not be read")
	case int64(len(body)) > s.cfg.MaxBody:
		fastFail(ctx, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the request body is larger than %d bytes", s.cfg.MaxBody))
	default:
		ctx.Request.SetBody(body)
		return true
	}
	ctx.SetConnectionClose()
	return false
}

const discoveryPath = "/.well-known/openid-configuration"

// isJWKSPath reports whether path serves the key set.
func (s *Server) isJWKSPath(path string) bool {
	if path == DefaultJWKSPath {
		return true
	}
	for _, p := range s.cfg.JWKSPaths {
		if p == path {
			return true
		}
	}
	return false
}

// proxied reports whether a path goes to the reverse proxy: with a route,
// every path that no gateway endpoint claims.
func (s *Server) proxied(path string) bool {
	if s.proxy == nil || len(s.proxy.routes) == 0 || s.ownPaths[path] {
		return false
	}
	for _, p := range s.ownPrefixes {
		if strings.HasPrefix(path, p) {
			return false
		}
	}
	return true
}

// claimPaths records the paths the echo routes answer themselves, exact or
// by prefix ("/v1/auth/*"), leaving out the proxy's catch-all.
func (s *Server) claimPaths() {
	s.ownPaths = map[string]bool{}
	for _, r := range s.echo.Routes() {
		switch {
		case r.Path == "/" || r.Path == "/*":
		case strings.HasSuffix(r.Path, "/*"):
			s.ownPrefixes = append(s.ownPrefixes, strings.TrimSuffix(r.Path, "*"))
		default:
			s.ownPaths[r.Path] = true
		}
	}
}

// fastJWKS serves the key set from memory; it never calls a backend.
func (s *Server) fastJWKS(ctx *fasthttp.RequestCtx) {
	st := s.keys.State()
	s.metrics.jwksRequests.Inc()
	if !st.Ready {
		fastFail(ctx, http.StatusServiceUnavailable, "not_ready", "the key set has not loaded yet")
		ctx.Response.Header.Set("Access-Control-Allow-Origin", "*")
		ctx.Response.Header.Set("Retry-After", "2")
		return
	}
	s.fastDocument(ctx, st.Document.JSON, st.Document.ETag)
}

// fastDocument writes a cacheable JSON document, or 304 when the client's
// If-None-Match names its ETag.
func (s *Server) fastDocument(ctx *fasthttp.RequestCtx, body []byte, etag string) {
	h := &ctx.Response.Header
	h.SetCanonical(headerCORS, headerAny)
	h.SetCanonical(headerCacheControl, s.cacheControlBytes)
	h.SetCanonical(headerETag, []byte(etag))
	if inm := ctx.Request.Header.Peek("If-None-Match"); len(inm) > 0 && etagMatches(string(inm), etag) {
		s.metrics.jwksNotModified.Inc()
		ctx.SetStatusCode(http.StatusNotModified)
		return
	}
	ctx.SetContentTypeBytes(jsonContentTypeBytes)
	ctx.SetBody(body) // fasthttp sends no body for HEAD, with the same Content-Length
}

var (
	headerCORS         = []byte("Access-Control-Allow-Origin")
	headerAny          = []byte("*")
	headerCacheControl = []byte("Cache-Control")
	headerETag         = []byte("Etag")
)

// errorJSON is the body of an error answer.
func errorJSON(code, msg string) []byte {
	b, _ := json.Marshal(apiError{Error: msg, Code: code})
	return b
}
