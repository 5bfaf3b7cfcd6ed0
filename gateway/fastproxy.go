package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

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
		DialTimeout: func(addr string, timeout time.Duration) (net.Conn, error) {
			c, err := fasthttp.DialTimeout(addr, 10*time.Second)
			if err != nil {
				return nil, err
			}
			return newIdleConn(c, idle), nil
		},
	}
}

// hopHeaders are the hop-by-hop headers a proxy must not forward (RFC 9110
// 7.6.1); fasthttp frames the message (Transfer-Encoding, Content-Length)
// itself.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Upgrade"}

// smallBody is the largest response body of known length that is read whole
// before it is sent on; larger ones, and those of unknown length, stream.
const smallBody = 16 << 10

var keepAlive, closeToken = []byte("keep-alive"), []byte("close")

// headerSet is what fasthttp's request and response headers share.
type headerSet interface {
	Peek(key string) []byte
	PeekAll(key string) [][]byte
	Del(key string)
}

// removeHopHeaders deletes the hop-by-hop headers and every header the
// Connection header names. fasthttp keeps header names canonical, so a
// lookup by canonical name finds every spelling.
func removeHopHeaders(h headerSet) {
	for _, v := range h.PeekAll("Connection") {
		if bytes.EqualFold(v, keepAlive) || bytes.EqualFold(v, closeToken) {
			continue
		}
		for _, name := range strings.Split(string(v), ",") {
			if name = strings.TrimSpace(name); name != "" && !strings.EqualFold(name, "close") && !strings.EqualFold(name, "keep-alive") {
				h.Del(http.CanonicalHeaderKey(name))
			}
		}
	}
	for _, n := range hopHeaders {
		if h.Peek(n) != nil {
			h.Del(n)
		}
	}
}

// sameHeaderName reports whether a header name is a variant of want: equal
// ignoring letter case, with "_" taken for "-", the way CGI and WSGI stacks
// fold names, so that no variant of a protected header slips through.
func sameHeaderName[T string | []byte](name T, want string) bool {
	if len(name) != len(want) {
		return false
	}
	for i := 0; i < len(name); i++ {
		a, b := name[i], want[i]
		if a == '_' {
			a = '-'
		}
		if b == '_' {
			b = '-'
		}
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// stripVariants removes every variant of names from a request header, with
// all their values.
func stripVariants(h *fasthttp.RequestHeader, names ...string) {
	var del []string
	for k := range h.All() {
		for _, n := range names {
			if sameHeaderName(k, n) {
				del = append(del, string(k))
				break
			}
		}
	}
	for _, k := range del {
		h.Del(k)
	}
}

// fastRequest is a fasthttp request seen by identity sources.
type fastRequest struct{ ctx *fasthttp.RequestCtx }

// context is the request's context; fasthttp's ends at shutdown, when
// in-flight requests must still finish, so that end is dropped.
func (f fastRequest) context() context.Context  { return context.WithoutCancel(f.ctx) }
func (f fastRequest) header(name string) string { return string(f.ctx.Request.Header.Peek(name)) }

func (f fastRequest) headerValues(name string) []string {
	var vs []string
	for _, v := range f.ctx.Request.Header.PeekAll(name) {
		vs = append(vs, string(v))
	}
	return vs
}

func (f fastRequest) hasAnyHeader(names []string) bool {
	for k := range f.ctx.Request.Header.All() {
		for _, n := range names {
			if sameHeaderName(k, n) {
				return true
			}
		}
	}
	return false
}

func (f fastRequest) peer() netip.Addr {
	ip, _ := netip.AddrFromSlice(f.ctx.RemoteIP())
	return ip.Unmap()
}

func (f fastRequest) tlsState() *tls.ConnectionState { return f.ctx.TLSConnectionState() }

var (
	httpScheme, httpsScheme = []byte("http"), []byte("https")
	headerXFF               = []byte("X-Forwarded-For")
	headerXFHost            = []byte("X-Forwarded-Host")
	headerXFProto           = []byte("X-Forwarded-Proto")
)

// prepareUpstream turns a client request into its upstream request: route,
// identity, assertion, and the headers a proxy must drop or set. When it
// cannot, it answers the client and ok is false.
func (s *Server) prepareUpstream(ctx *fasthttp.RequestCtx, path string) (rt *Route, clientClose, ok bool) {
	req := &ctx.Request
	h := &req.Header
	// The server stored every name in canonical form, and every name used
	// below is canonical: lookups can skip normalizing their key.
	h.DisableNormalizing()
	defer h.EnableNormalizing()
	stripVariants(h, s.proxy.headerNames...)
	host := string(h.Host())
	rt = s.proxy.matchHostPath(host, path)
	if rt == nil {
		fastFail(ctx, http.StatusNotFound, "no_route", "no route for this host and path")
		return nil, false, false
	}
	rq := fastRequest{ctx}
	id, err := rt.source.identify(rq)
	if err != nil {
		status, code, msg, challenge := s.identityRefusal(err, rt.Identity)
		fastFail(ctx, status, code, msg)
		if challenge {
			ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="kmsgate"`)
		}
		return nil, false, false
	}
	tok, err := s.proxy.minter.mint(rq.context(), s.cfg.RequestTimeout, id, rt.Audience)
	if err != nil {
		s.log.Warn("assertion not signed; request refused", "audience", rt.Audience, "err", err.Error())
		fastBackendFailure(ctx, err)
		return nil, false, false
	}

	clientClose = h.ConnectionClose()
	removeHopHeaders(h)
	h.ResetConnectionClose()
	trusted := isTrusted(rq.peer(), s.proxy.trusted)
	xff := ""
	if trusted {
		for _, v := range h.PeekAll("X-Forwarded-For") {
			if xff != "" {
				xff += ", "
			}
			xff += string(v)
		}
	}
	stripVariants(h, "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto")
	if !trusted {
		stripVariants(h, forwardedIdentityHeaders...)
	}
	if xff != "" {
		xff += ", "
	}
	h.SetCanonical(headerXFF, rq.peer().AppendTo(append(make([]byte, 0, len(xff)+48), xff...)))
	h.SetCanonical(headerXFHost, []byte(host))
	if ctx.IsTLS() {
		h.SetCanonical(headerXFProto, httpsScheme)
	} else {
		h.SetCanonical(headerXFProto, httpScheme)
	}
	if rt.Identity == SourceOIDC {
		h.Del("Authorization") // the original token never goes upstream
	}
	h.Set(rt.canonicalHeader, tok)
	rt.rewriteURI(req)
	return rt, clientClose, true
}

// fastProxy forwards an HTTP/1.x request to its route's upstream with a
// signed assertion, or refuses it: 404 without a route, 401/403 without an
// acceptable identity, 503 when the assertion cannot be signed, 502 when
// the upstream fails. It does what handleProxy and the route's
// httputil.ReverseProxy do for HTTP/2.
func (s *Server) fastProxy(ctx *fasthttp.RequestCtx, path string) {
	rt, clientClose, ok := s.prepareUpstream(ctx, path)
	if !ok {
		return
	}
	if err := rt.fast.Do(&ctx.Request, &ctx.Response); err != nil {
		s.log.Warn("upstream failed", "upstream", rt.target.Host, "err", err.Error())
		fastFail(ctx, http.StatusBadGateway, "bad_gateway", "the upstream did not answer")
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
			s.log.Warn("upstream failed", "upstream", rt.target.Host, "err", err.Error())
			fastFail(ctx, http.StatusBadGateway, "bad_gateway", "the upstream did not answer")
			return
		}
		resp.SetBodyRaw(body)
	}
	removeHopHeaders(&resp.Header)
	if clientClose {
		ctx.Response.Header.SetConnectionClose()
	} else {
		ctx.Response.Header.ResetConnectionClose()
	}
}

// rewriteURI points a request at the route's upstream: its host, the
// upstream path joined before the request path, and its query first.
func (rt *Route) rewriteURI(req *fasthttp.Request) {
	u := req.URI()
	u.SetHost(rt.target.Host)
	if rt.target.Scheme == "https" {
		u.SetSchemeBytes(httpsScheme)
	} else {
		u.SetSchemeBytes(httpScheme)
	}
	req.Header.SetHost(rt.target.Host)
	if p := rt.target.Path; p != "" && p != "/" {
		u.SetPath(strings.TrimSuffix(p, "/") + "/" + strings.TrimPrefix(string(u.Path()), "/"))
	}
	if q := rt.target.RawQuery; q != "" {
		if own := u.QueryString(); len(own) > 0 {
			q += "&" + string(own)
		}
		u.SetQueryString(q)
	}
}

// fastBackendFailure answers a request that could not be signed because of
// the backend: 429 when it throttles, 503 otherwise, always with
// Retry-After. Nothing unsigned is ever forwarded.
func fastBackendFailure(ctx *fasthttp.RequestCtx, err error) {
	status, retry, code, msg := backendRefusal(err)
	fastFail(ctx, status, code, msg)
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(retry))
}
