package front

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/kmsgate/kmsgate/gateway/core"
	"github.com/kmsgate/kmsgate/gateway/proxy"
)

// stdFront is the net/http adapter, with echo as its framework: HTTP/2 (TLS
// h2 and h2c with prior knowledge) and WebSocket upgrades handed off by the
// HTTP/1.x server. It turns a net/http request into a core.Request, writes
// the core's answer, and carries out forwarding plans with one
// httputil.ReverseProxy per route. The core routes every request: echo's
// router is not consulted on the public port.
type stdFront struct {
	core    *core.Core
	echo    *echo.Echo
	proxies []*httputil.ReverseProxy // by route index
	log     *slog.Logger
}

func newStdFront(c *core.Core) *stdFront {
	s := &stdFront{core: c, log: c.Logger()}
	for range c.Routes() {
		s.proxies = append(s.proxies, s.newReverseProxy(c.UpstreamTimeout()))
	}
	s.echo = echo.New()
	s.echo.HideBanner, s.echo.HidePort = true, true
	// A pre-routing middleware sees every request whatever its method or
	// path, so the core's table is the only one.
	s.echo.Pre(func(echo.HandlerFunc) echo.HandlerFunc { return s.serve })
	return s
}

// server returns the HTTP/2 (and handed-off HTTP/1.1) server.
func (s *stdFront) server(ctx context.Context) *http.Server {
	srv := &http.Server{
		Handler:           s.echo,
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// "OPTIONS *" reaches the core too, which refuses it on every
		// protocol.
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:                  func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*prefixedConn); ok && pc.handedOff {
				return context.WithValue(ctx, handedOffKey{}, pc)
			}
			return ctx
		},
	}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetHTTP2(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	return srv
}

// handedOffKey keys, in a connection's context, the connection the
// HTTP/1.x server handed off.
type handedOffKey struct{}

// stdHeaders is a net/http request header seen by the core.
type stdHeaders http.Header

func (h stdHeaders) Get(name string) string      { return http.Header(h).Get(name) }
func (h stdHeaders) Values(name string) []string { return http.Header(h).Values(name) }
func (h stdHeaders) All(yield func(name, value string) bool) {
	for k, vs := range h {
		for _, v := range vs {
			if !yield(k, v) {
				return
			}
		}
	}
}

// serve answers one request.
func (s *stdFront) serve(c echo.Context) error {
	start := time.Now()
	hr := c.Request()
	handedOff, _ := hr.Context().Value(handedOffKey{}).(*prefixedConn)
	st := hr.TLS
	if st == nil && handedOff != nil {
		st = handedOff.tls
	}
	r := core.Request{
		Ctx: hr.Context(), Method: hr.Method, Target: hr.RequestURI, Authority: hr.Host,
		TLSState: st, Headers: stdHeaders(hr.Header), Body: hr.Body, BodyLen: hr.ContentLength,
	}
	if ap, err := netip.ParseAddrPort(hr.RemoteAddr); err == nil {
		r.Addr = ap.Addr().Unmap()
	}
	if r.BodyLen < 0 {
		r.BodyLen = -1
	}
	var w http.ResponseWriter = c.Response()
	if handedOff != nil {
		// Only a WebSocket upgrade is handed off: unless it switches
		// protocols, the connection is not kept for more requests.
		w = &oneShot{ResponseWriter: w}
	}
	var a core.Answer
	s.core.Serve(&r, &a)
	if a.Forward {
		if !a.Plan.WebSocket {
			hr.Header.Del("Upgrade") // only WebSocket upgrades pass
		} else {
			w = hijackBuffered{w}
		}
		rp := s.proxies[a.Plan.Route.Index]
		rp.ServeHTTP(w, hr.WithContext(context.WithValue(hr.Context(), planKey{}, &a.Plan)))
		a.Status = c.Response().Status
	} else {
		if a.Close && hr.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		writeStd(w, &a)
	}
	s.core.Observe(&r, &a, time.Since(start))
	return nil
}

// oneShot is the ResponseWriter of a connection the HTTP/1.x server
// handed off: any answer but 101 Switching Protocols closes it.
type oneShot struct{ http.ResponseWriter }

func (w *oneShot) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *oneShot) WriteHeader(code int) {
	if code != http.StatusSwitchingProtocols {
		w.Header().Set("Connection", "close")
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *oneShot) Write(b []byte) (int, error) {
	w.Header().Set("Connection", "close") // Write without WriteHeader: 200
	return w.ResponseWriter.Write(b)
}

// hijackBuffered is a ResponseWriter whose Hijack returns a connection
// that first replays what the server had already read from the client.
// httputil.ReverseProxy copies a WebSocket from the hijacked connection
// alone, so without this the bytes a client sent right behind its upgrade
// request (and the one byte net/http reads ahead to notice a closed
// connection) would never reach the upstream.
type hijackBuffered struct{ http.ResponseWriter }

func (w hijackBuffered) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w hijackBuffered) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		c = &prefixedConn{Conn: c, prefix: bytes.Clone(b)}
		brw.Reader.Reset(c)
	}
	return c, brw, nil
}

// writeStd writes a core answer.
func writeStd(w http.ResponseWriter, a *core.Answer) {
	h := w.Header()
	for _, f := range a.Header() {
		h.Add(f.Name, f.Value) // an answer repeats only Set-Cookie
	}
	if a.ContentType != "" {
		h.Set("Content-Type", a.ContentType)
	}
	if a.Body != nil {
		h.Set("Content-Length", strconv.Itoa(len(a.Body)))
	}
	w.WriteHeader(a.Status)
	_, _ = w.Write(a.Body)
}

// planKey keys a request's forwarding plan in its context.
type planKey struct{}

// bufferPool lends the reverse proxies their copy buffers; without it
// httputil.ReverseProxy allocates 32 KiB per response.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(v []byte) { b.p.Put(&v) }

var copyBuffers = &bufferPool{p: sync.Pool{New: func() any { v := make([]byte, 32<<10); return &v }}}

// newReverseProxy builds the streaming reverse proxy of one route. Its
// Rewrite carries out the request's plan; it runs after the hop-by-hop
// headers (and any header named in Connection) have been removed, so the
// headers it sets always arrive. A read from the upstream that waits
// longer than idle fails.
func (s *stdFront) newReverseProxy(idle time.Duration) *httputil.ReverseProxy {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return newIdleConn(c, idle), nil
	}
	tr.MaxIdleConnsPerHost = 1024
	tr.MaxIdleConns = 4096
	// HTTP/1.1 upstream, as from the HTTP/1.x server, and bodies passed as
	// they are: the upstream sees the same request whatever the client spoke.
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	tr.DisableCompression = true
	return &httputil.ReverseProxy{
		Transport:  tr,
		BufferPool: copyBuffers,
		Rewrite: func(pr *httputil.ProxyRequest) {
			p := pr.In.Context().Value(planKey{}).(*proxy.Plan)
			out := pr.Out
			out.URL.Scheme, out.URL.Host = p.Route.Target.Scheme, p.Host
			out.URL.Path, _ = url.PathUnescape(p.Path)
			out.URL.RawPath, out.URL.RawQuery = p.Path, p.RawQuery
			out.Host = p.Host
			for k := range out.Header {
				if p.Drop(k) {
					delete(out.Header, k)
				}
			}
			for _, f := range p.Set() {
				out.Header.Set(f.Name, f.Value)
			}
			out.Trailer = nil // client trailers never go upstream
		},
		ModifyResponse: func(resp *http.Response) error {
			if p, ok := resp.Request.Context().Value(planKey{}).(*proxy.Plan); ok {
				for _, v := range p.SetCookies {
					resp.Header.Add("Set-Cookie", v)
				}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) {
				return // the client went away
			}
			p := r.Context().Value(planKey{}).(*proxy.Plan)
			s.log.Warn("upstream failed", "upstream", p.Host, "err", err.Error())
			var a core.Answer
			a.Fail(http.StatusBadGateway, "bad_gateway", "the upstream did not answer")
			writeStd(w, &a)
		},
	}
}
