package front

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"

	"github.com/kmsgate/kmsgate/gateway/core"
	"github.com/kmsgate/kmsgate/gateway/proxy"
)

// fastFront is the HTTP/1.x adapter: it checks what only the HTTP/1.x wire
// format can get wrong, turns a fasthttp request into a core.Request,
// writes the core's answer, and carries out forwarding plans with one
// kept-alive client per route. WebSocket upgrades are handed to the
// net/http server, which serves them through the same core.
type fastFront struct {
	core      *core.Core
	clients   []*fasthttp.HostClient // by route index
	handoff   *connQueue
	log       *slog.Logger
	base      context.Context // of every request: fasthttp's own ends at shutdown
	scratches sync.Pool       // of *scratch, for connections without their own
}

// scratch is the memory of one request's handling: the core's view of the
// request, its answer, and the upstream request. It is too large to
// allocate per request on the hot path; a connection keeps its own (its
// requests come one at a time), other requests borrow one from a pool.
type scratch struct {
	r  core.Request
	a  core.Answer
	up fasthttp.Request
}

// scratchHolder is a connection with scratch space of its own.
type scratchHolder interface{ scratch() *scratch }

// scratchFor returns the scratch space of a request, and a function that
// clears it once the request is answered.
func (f *fastFront) scratchFor(ctx *fasthttp.RequestCtx) (*scratch, func()) {
	if h, ok := ctx.Conn().(scratchHolder); ok {
		sc := h.scratch()
		return sc, func() { sc.clear() }
	}
	sc := f.scratches.Get().(*scratch)
	return sc, func() { sc.clear(); f.scratches.Put(sc) }
}

// clear drops everything a scratch holds of its request.
func (sc *scratch) clear() {
	sc.r, sc.a = core.Request{}, core.Answer{}
	sc.up.Reset()
}

func newFastFront(c *core.Core, handoff *connQueue) *fastFront {
	f := &fastFront{core: c, handoff: handoff, log: c.Logger(), base: context.Background()}
	f.scratches.New = func() any { return new(scratch) }
	for _, rt := range c.Routes() {
		f.clients = append(f.clients, newUpstreamClient(rt.Target, c.UpstreamTimeout()))
	}
	return f
}

// server returns the HTTP/1.x server.
func (f *fastFront) server(maxBody int64) *fasthttp.Server {
	return &fasthttp.Server{
		Handler:                      f.serve,
		ErrorHandler:                 f.parseError,
		Name:                         "kmsgate",
		ReadBufferSize:               maxHeaderBytes,
		ReadTimeout:                  headerTimeout,
		IdleTimeout:                  idleTimeout,
		MaxRequestBodySize:           int(maxBody),
		StreamRequestBody:            true, // proxied bodies stream; the core bounds its own
		DisablePreParseMultipartForm: true,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		SecureErrorLogMessage:        true, // parse errors never quote request bytes into logs
		CloseOnShutdown:              true,
		KeepHijackedConns:            true, // handed off to net/http
		Logger:                       fastLogger{f.log},
		HeaderReceived: func(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
			// The header was read in time. fasthttp reads the first
			// preRead bytes of a body before the handler runs: a body that
			// small must arrive within the header timeout too. A longer or
			// chunked body streams, and may take as long as its upload
			// takes; an answer given without reading it closes the
			// connection.
			if cl := h.ContentLength(); cl > preRead || cl == -1 {
				return fasthttp.RequestConfig{ReadTimeout: 24 * time.Hour}
			}
			return fasthttp.RequestConfig{}
		},
	}
}

// preRead is how much of a body fasthttp reads before the handler runs.
const preRead = 8 << 10

// fastLogger sends fasthttp's own messages to the debug log.
type fastLogger struct{ log *slog.Logger }

func (l fastLogger) Printf(format string, args ...any) {
	l.log.Debug("http server", "msg", fmt.Sprintf(format, args...))
}

// parseError answers a request fasthttp could not read, and closes.
func (f *fastFront) parseError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var a core.Answer
	switch {
	case errors.As(err, &small):
		a.Fail(http.StatusRequestHeaderFieldsTooLarge, "header_too_large", "the request header is too large")
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		a.Fail(http.StatusRequestEntityTooLarge, "too_large", "the request body is too large")
	default:
		a.Fail(http.StatusBadRequest, "malformed", "the request could not be parsed")
	}
	writeFast(ctx, &a)
	ctx.SetConnectionClose()
}

// fastHeaders is a fasthttp request header seen by the core.
type fastHeaders struct{ h *fasthttp.RequestHeader }

func (f fastHeaders) Get(name string) string { return string(f.h.Peek(name)) }

func (f fastHeaders) Values(name string) []string {
	var vs []string
	for _, v := range f.h.PeekAll(name) {
		vs = append(vs, string(v))
	}
	return vs
}

func (f fastHeaders) All(yield func(name, value string) bool) {
	for k, v := range f.h.All() {
		if !yield(b2s(k), b2s(v)) {
			return
		}
	}
}

// s2b views s as bytes without copying, for calls that only read them.
func s2b(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// b2s views b as a string without copying; the string is valid only while
// b is unchanged.
func b2s(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// checkWire refuses what only HTTP/1.x framing can carry, read off the
// raw header lines: obs-fold continuation lines, a Transfer-Encoding other
// than exactly one "chunked", and Transfer-Encoding beside Content-Length
// (RFC 9112 6.1 allows refusing it; it is the smuggling shape).
func checkWire(h *fasthttp.RequestHeader) string {
	raw := h.RawHeaders()
	te, cl := 0, false
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		line = bytes.TrimSuffix(line, strCR)
		if len(line) == 0 {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			return "obsolete line folding in the header"
		}
		name, value, _ := bytes.Cut(line, strColon)
		switch {
		case bytes.EqualFold(name, strTransferEncoding):
			te++
			if te > 1 || !bytes.EqualFold(bytes.TrimSpace(value), strChunked) {
				return "Transfer-Encoding must be exactly chunked"
			}
		case bytes.EqualFold(name, strContentLength):
			cl = true
		}
	}
	if te > 0 && cl {
		return "Transfer-Encoding and Content-Length together"
	}
	return ""
}

var (
	strTransferEncoding = []byte("Transfer-Encoding")
	strContentLength    = []byte("Content-Length")
	strCR               = []byte("\r")
	strColon            = []byte(":")
	strChunked          = []byte("chunked")
	httpScheme          = []byte("http")
	httpsScheme         = []byte("https")
)

// methodString returns the method without allocating for the common ones.
func methodString(m []byte) string {
	for _, s := range [...]string{http.MethodGet, http.MethodPost, http.MethodHead, http.MethodPut, http.MethodDelete, http.MethodOptions, http.MethodPatch} {
		if string(m) == s {
			return s
		}
	}
	return string(m)
}

// request builds the core's view of a fasthttp request into r. Target and
// Authority view fasthttp's buffers: they, and what the core derives from
// them (the path, the plan's path), are valid until the handler returns.
func (f *fastFront) request(ctx *fasthttp.RequestCtx, r *core.Request) {
	h := &ctx.Request.Header
	*r = core.Request{
		Ctx:       f.base,
		Method:    methodString(h.Method()),
		Target:    b2s(h.RequestURI()),
		Authority: b2s(h.Host()),
		TLSState:  ctx.TLSConnectionState(),
		Headers:   fastHeaders{h},
		BodyLen:   bodyLen(h),
	}
	if ip, ok := netip.AddrFromSlice(ctx.RemoteIP()); ok {
		r.Addr = ip.Unmap()
	}
	if r.BodyLen != 0 {
		if ctx.Request.IsBodyStream() {
			r.Body = ctx.RequestBodyStream()
		} else {
			r.Buffered = ctx.Request.Body()
			r.Body = bytes.NewReader(r.Buffered)
		}
	}
}

// bodyLen is a request's body length: -1 for chunked, 0 without a body (a
// request without Content-Length or Transfer-Encoding has none).
func bodyLen(h *fasthttp.RequestHeader) int64 {
	switch cl := h.ContentLength(); {
	case cl > 0:
		return int64(cl)
	case cl == -1:
		return -1
	}
	return 0
}

// serve answers one HTTP/1.x request.
func (f *fastFront) serve(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	h := &ctx.Request.Header
	if msg := checkWire(h); msg != "" {
		var a core.Answer
		a.Fail(http.StatusBadRequest, "malformed", msg)
		writeFast(ctx, &a)
		ctx.SetConnectionClose()
		return
	}
	if core.WantsWebSocket(methodString(h.Method()), fastHeaders{h}) {
		f.handOff(ctx)
		return // net/http serves it through the core
	}
	// Every name the core looks up is canonical, as the parser stored
	// them: lookups skip normalizing their key.
	h.DisableNormalizing()
	defer h.EnableNormalizing()
	sc, done := f.scratchFor(ctx)
	defer done()
	r, a := &sc.r, &sc.a
	f.request(ctx, r)
	f.core.Serve(r, a)
	if a.Forward {
		f.forward(ctx, a, &sc.up)
	} else {
		writeFast(ctx, a)
		if a.Close || !r.BodyRead() {
			// An answer given before the body was read: close rather than
			// drain what the client may still send.
			ctx.SetConnectionClose()
		}
	}
	f.core.Observe(r, a, time.Since(start))
}

// writeFast writes a core answer.
func writeFast(ctx *fasthttp.RequestCtx, a *core.Answer) {
	ctx.Response.Reset()
	ctx.SetStatusCode(a.Status)
	for _, fl := range a.Header() {
		ctx.Response.Header.Set(fl.Name, fl.Value)
	}
	if a.ContentType != "" {
		ctx.SetContentType(a.ContentType)
	}
	if a.Body != nil {
		ctx.SetBody(a.Body) // fasthttp sends no body for HEAD, with the same Content-Length
	}
}

// handOff passes the connection of a WebSocket upgrade request to the
// net/http server, which serves the request again, and the connection's
// later ones, through the core: fasthttp cannot keep a request valid after
// a hijack.
func (f *fastFront) handOff(ctx *fasthttp.RequestCtx) {
	if bodyLen(&ctx.Request.Header) != 0 {
		var a core.Answer
		a.Fail(http.StatusBadRequest, "malformed", "an upgrade request may not carry a body")
		writeFast(ctx, &a)
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
		f.handoff.deliver(&prefixedConn{Conn: c, prefix: head, tls: st, handedOff: true})
	})
}

// forward carries out a forwarding plan: an upstream request built from
// the client's (its headers less those the plan drops, the headers it
// sets, its body) is sent, and the upstream's answer is passed back less
// its hop-by-hop headers.
func (f *fastFront) forward(ctx *fasthttp.RequestCtx, a *core.Answer, up *fasthttp.Request) {
	var body clientBody
	clientClose := f.prepare(ctx, &a.Plan, up, &body)
	rt := a.Plan.Route
	if err := f.clients[rt.Index].Do(up, &ctx.Response); err != nil {
		a.Forward = false
		if body.err != nil {
			// The client's body was malformed (chunk framing) or cut off.
			a.Fail(http.StatusBadRequest, "malformed", "the request body could not be read")
			writeFast(ctx, a)
			ctx.SetConnectionClose()
			return
		}
		f.log.Warn("upstream failed", "upstream", rt.Target.Host, "err", err.Error())
		a.Fail(http.StatusBadGateway, "bad_gateway", "the upstream did not answer")
		writeFast(ctx, a)
		return
	}
	resp := &ctx.Response
	if cl := resp.Header.ContentLength(); cl >= 0 && cl <= smallBody && resp.IsBodyStream() {
		// A small body of known length is read here, so that the server
		// writes header and body at once instead of copying a stream.
		body := make([]byte, cl)
		_, err := io.ReadFull(resp.BodyStream(), body)
		_ = resp.CloseBodyStream()
		if err != nil {
			f.log.Warn("upstream failed", "upstream", rt.Target.Host, "err", err.Error())
			a.Forward = false
			a.Fail(http.StatusBadGateway, "bad_gateway", "the upstream did not answer")
			writeFast(ctx, a)
			return
		}
		resp.SetBodyRaw(body)
	}
	dropHopHeaders(&resp.Header)
	for _, v := range a.Plan.SetCookies {
		resp.Header.Add("Set-Cookie", v)
	}
	if clientClose {
		resp.Header.SetConnectionClose()
	} else {
		resp.Header.ResetConnectionClose()
	}
	a.Status = resp.StatusCode()
}

// prepare builds the upstream request of a plan into up and reports
// whether the client asked to close its connection. Only what the plan
// keeps is copied: client trailers, parsed into the client's request as
// its body is read, never reach up.
func (f *fastFront) prepare(ctx *fasthttp.RequestCtx, p *proxy.Plan, up *fasthttp.Request, body *clientBody) (clientClose bool) {
	in := &ctx.Request.Header
	h := &up.Header
	h.DisableNormalizing() // names come canonical from the server's parser
	h.SetNoDefaultContentType(true)
	h.SetMethodBytes(in.Method())
	for k, v := range in.All() {
		if framing(k) || p.Drop(b2s(k)) {
			continue
		}
		h.AddBytesKV(k, v)
	}
	for _, fl := range p.Set() {
		h.SetCanonical(s2b(fl.Name), s2b(fl.Value)) // copied
	}
	if n := bodyLen(in); n != 0 {
		if ctx.Request.IsBodyStream() {
			body.r = ctx.RequestBodyStream()
			up.SetBodyStream(body, int(n))
		} else {
			up.SetBodyRaw(ctx.Request.Body())
		}
	}
	u := up.URI()
	u.DisablePathNormalizing = true
	if p.Route.Target.Scheme == "https" {
		u.SetSchemeBytes(httpsScheme)
	} else {
		u.SetSchemeBytes(httpScheme)
	}
	u.SetHost(p.Host)
	h.SetHost(p.Host)
	u.SetPath(p.Path)
	u.SetQueryString(p.RawQuery)
	return in.ConnectionClose()
}

// clientBody is a client's streamed body on its way upstream; it keeps the
// first read error, so that a malformed body is told from a failed
// upstream.
type clientBody struct {
	r   io.Reader
	err error
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

// framing reports whether a header frames the message (Content-Length,
// Transfer-Encoding); each hop's client writes its own.
func framing(name []byte) bool {
	return bytes.EqualFold(name, strContentLength) || bytes.EqualFold(name, strTransferEncoding)
}

// dropHopHeaders deletes an upstream response's hop-by-hop headers, those
// its Connection header names included.
func dropHopHeaders(h *fasthttp.ResponseHeader) {
	var conn []string
	if vs := h.PeekAll("Connection"); len(vs) > 0 {
		vals := make([]string, len(vs))
		for i, v := range vs {
			vals[i] = b2s(v) // used only during this call
		}
		conn = proxy.ConnectionTokens(vals)
	}
	var del [][]byte
	for k := range h.All() {
		if proxy.HopByHop(b2s(k), conn) {
			del = append(del, append([]byte(nil), k...))
		}
	}
	for _, k := range del {
		h.DelBytes(k)
	}
}

// smallBody is the largest response body of known length that is read whole
// before it is sent on; larger ones, and those of unknown length, stream.
const smallBody = 16 << 10

// newUpstreamClient returns the HTTP/1.1 client of one route's upstream for
// the fasthttp front: kept-alive connections, response bodies streamed as
// they arrive, and a read that waits longer than idle fails.
func newUpstreamClient(u *url.URL, idle time.Duration) *fasthttp.HostClient {
	addr := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		addr = net.JoinHostPort(u.Hostname(), port)
	}
	return &fasthttp.HostClient{
		Addr:                     addr,
		IsTLS:                    u.Scheme == "https",
		TLSConfig:                &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12},
		MaxConns:                 4096,
		MaxIdleConnDuration:      90 * time.Second,
		ReadBufferSize:           maxHeaderBytes,
		StreamResponseBody:       true,
		NoDefaultUserAgentHeader: true,
		DisablePathNormalizing:   true, // the core normalized the path once
		DialTimeout: func(addr string, timeout time.Duration) (net.Conn, error) {
			c, err := fasthttp.DialTimeout(addr, 10*time.Second)
			if err != nil {
				return nil, err
			}
			return newIdleConn(c, idle), nil
		},
	}
}
