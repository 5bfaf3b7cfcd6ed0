package core

import (
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"

	"log/slog"

	"github.com/kmsgate/kmsgate/gateway/header"
	"github.com/kmsgate/kmsgate/gateway/route"
)

// endpoint is one of the gateway's own endpoints.
type endpoint struct {
	label   string // metrics label
	serve   func(*Core, *Request, *Answer)
	methods []string
}

var documentMethods = []string{http.MethodGet, http.MethodHead, http.MethodOptions}

// Serve judges a request and fills in its answer, or sets a.Forward and
// a.Plan for a request to forward. It is the one place a request is
// parsed, routed and decided, whichever server received it:
//
//   - the method, target, host and header fields are checked (400 and close
//     for anything malformed) and the path is normalized once;
//   - the gateway's own endpoints are matched on the normalized path (the
//     key set and discovery, Prefix/v1/sign, Prefix/v1/auth; every other
//     path under Prefix/v1/ is the gateway's and answers 404);
//   - every other path goes to the upstream routes, when there are any.
func (c *Core) Serve(r *Request, a *Answer) {
	if !c.admit(r, a) {
		a.Endpoint, a.Close = "malformed", true
		return
	}
	if ep, ok := c.endpoints[r.Path]; ok {
		a.Endpoint = ep.label
		if !slices.Contains(ep.methods, r.Method) {
			a.Fail(http.StatusMethodNotAllowed, "method_not_allowed", "method "+r.Method+" is not allowed here")
			a.Set("Allow", strings.Join(ep.methods, ", "))
			return
		}
		ep.serve(c, r, a)
		return
	}
	if c.proxy != nil && (r.Path == c.authPath || strings.HasPrefix(r.Path, c.authPath+"/")) {
		a.Endpoint = "/v1/auth"
		c.serveForwardAuth(r, a)
		return
	}
	if c.proxy != nil && len(c.proxy.table.Routes()) > 0 && !strings.HasPrefix(r.Path, c.ownPrefix) {
		a.Endpoint = "proxy"
		c.forward(r, a)
		return
	}
	a.Endpoint = "other"
	a.Fail(http.StatusNotFound, "not_found", "no such endpoint")
}

// admit checks what every request must satisfy before it is routed, and
// sets its Path, RawQuery and Host; it answers 400 (or 405) when it refuses.
func (c *Core) admit(r *Request, a *Answer) bool {
	if !header.ValidName(r.Method) {
		a.Fail(http.StatusBadRequest, "malformed", "the request method is not a token")
		return false
	}
	if r.Method == http.MethodConnect {
		a.Fail(http.StatusBadRequest, "malformed", "CONNECT is not served")
		return false
	}
	host, path, query, err := route.SplitTarget(r.Target)
	if err != nil {
		a.Fail(http.StatusBadRequest, "malformed", err.Error())
		return false
	}
	if host != "" {
		// absolute-form: its authority replaces Host (RFC 9112 3.2.2).
		r.Authority = host
	}
	if r.Path, err = route.Normalize(path, c.cfg.KeepEscapedSlashes); err != nil {
		a.Fail(http.StatusBadRequest, "malformed", err.Error())
		return false
	}
	r.RawQuery = query
	if r.Host, err = route.Host(r.Authority); err != nil {
		a.Fail(http.StatusBadRequest, "malformed", err.Error())
		return false
	}
	bad := ""
	r.Headers.All(func(name, value string) bool {
		if !header.ValidName(name) {
			bad = "a header field name is not a token"
			return false
		}
		if !header.ValidValue(value) {
			bad = "a header field value has a control character"
			return false
		}
		return true
	})
	if bad != "" {
		a.Fail(http.StatusBadRequest, "malformed", bad)
		return false
	}
	return true
}

// WantsWebSocket reports whether a request asks to upgrade to a WebSocket,
// the only upgrade the gateway passes on: a GET whose Connection lists
// "upgrade" and whose Upgrade is "websocket". Any other Upgrade is dropped
// as a hop-by-hop header and the request served as it is.
func WantsWebSocket(method string, h Headers) bool {
	if method != http.MethodGet || !header.Exact(strings.TrimSpace(h.Get("Upgrade")), "websocket") {
		return false
	}
	for _, v := range h.Values("Connection") {
		for _, t := range strings.Split(v, ",") {
			if header.Exact(strings.TrimSpace(t), "upgrade") {
				return true
			}
		}
	}
	return false
}

// Observe records an answered request: its metrics, and for a sample of
// requests (RequestLogSample) an info line with the method, endpoint (and
// route and policy decision), status, duration, client address and who
// it was for; never headers, tokens, path or query.
func (c *Core) Observe(r *Request, a *Answer, took time.Duration) {
	c.metrics.Request(a.Endpoint, a.Status, took)
	rate := c.cfg.RequestLogSample
	if rate <= 0 || !c.log.Enabled(r.Ctx, slog.LevelInfo) || (rate < 1 && rand.Float64() >= rate) {
		return
	}
	attrs := make([]slog.Attr, 0, 8)
	attrs = append(attrs, slog.String("method", r.Method), slog.String("endpoint", a.Endpoint), slog.Int("status", a.Status),
		slog.Float64("took_ms", float64(took.Microseconds())/1000), slog.String("remote", r.Addr.String()))
	if a.Route != "" {
		attrs = append(attrs, slog.String("route", a.Route))
	}
	if a.Decision != "" {
		attrs = append(attrs, slog.String("decision", a.Decision))
	}
	if a.Subject != "" {
		attrs = append(attrs, slog.String("sub", a.Subject))
	}
	if a.Client != "" {
		attrs = append(attrs, slog.String("client", a.Client))
	}
	c.log.LogAttrs(r.Ctx, slog.LevelInfo, "request", attrs...)
}
