package core

import (
	"html"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/kmsgate/kmsgate/gateway/header"
	"github.com/kmsgate/kmsgate/gateway/identity"
	"github.com/kmsgate/kmsgate/gateway/session"
	"github.com/kmsgate/kmsgate/gateway/signin"
)

// SetCookie implements identity.CookieSetter: the cookies go on the
// request's answer, or on the upstream's response when it is forwarded.
func (r *Request) SetCookie(values ...string) { r.setCookies = append(r.setCookies, values...) }

// origin is where a browser sent r.
func origin(r *Request) signin.Origin {
	return signin.Origin{Host: r.Authority, TLS: r.TLSState != nil}
}

// browser reports whether a request may be answered with a redirect to
// sign in: a GET or HEAD whose Accept names text/html, not a WebSocket
// upgrade and not an XMLHttpRequest.
func browser(r *Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && acceptsHTML(r.Headers.Values("Accept")) &&
		!WantsWebSocket(r.Method, r.Headers) && !header.Exact(r.Headers.Get("X-Requested-With"), "XMLHttpRequest")
}

// signIn answers a request without a valid session: a browser is sent to
// sign in and come back to returnTo; anything else, or a request with no
// returnTo (forward-auth), gets 401.
func (c *Core) signIn(r *Request, a *Answer, returnTo string) {
	if returnTo == "" || !browser(r) {
		a.Fail(http.StatusUnauthorized, "sign_in_required", "no valid session; sign in with a browser first")
		return
	}
	resp, err := c.proxy.signin.SignIn(origin(r), returnTo)
	if err != nil {
		c.log.Warn("sign-in not started", "err", err.Error())
		a.providerDown()
		return
	}
	a.signinResponse(resp)
}

// serveCallback finishes a sign-in (signin.CallbackPath).
func (c *Core) serveCallback(r *Request, a *Answer) {
	a.signinResponse(c.proxy.signin.Callback(r.Ctx, r.Headers.Values("Cookie"), r.RawQuery))
}

// serveLogout ends the browser's session (signin.LogoutPath).
func (c *Core) serveLogout(r *Request, a *Answer) { a.signinResponse(c.proxy.signin.Logout(origin(r))) }

// serveLogin starts a sign-in that returns to ?rd= (a path on this host;
// anything else returns to "/"), signin.LoginPath.
func (c *Core) serveLogin(r *Request, a *Answer) {
	rd := ""
	for _, kv := range strings.Split(r.RawQuery, "&") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == "rd" {
			rd = unescape(v)
		}
	}
	resp, err := c.proxy.signin.SignIn(origin(r), signin.SafeReturn(rd))
	if err != nil {
		a.providerDown()
		return
	}
	a.signinResponse(resp)
}

// signinResponse writes a sign-in step's answer; it is never cached.
func (a *Answer) signinResponse(resp signin.Response) {
	a.Set("Cache-Control", "no-store")
	for _, v := range resp.Cookies {
		a.Set("Set-Cookie", v)
	}
	if resp.Location != "" {
		a.Status = resp.Status
		a.Set("Location", resp.Location)
		return
	}
	if resp.Status == http.StatusServiceUnavailable {
		a.Set("Retry-After", "5")
	}
	a.page(resp.Status, resp.Page)
}

// providerDown answers a browser whose sign-in needs the identity provider
// while it cannot be reached: a 503 page, never a redirect (no loop).
func (a *Answer) providerDown() {
	a.page(http.StatusServiceUnavailable, "The identity provider cannot be reached now. Try again in a minute.")
	a.Set("Retry-After", "5")
}

// page makes a a small HTML page with a message.
func (a *Answer) page(status int, msg string) {
	a.Status, a.ContentType, a.Body = status, "text/html; charset=utf-8", htmlPage(status, msg)
}

// htmlPage is a small HTML page headed by a status with a message.
func htmlPage(status int, msg string) []byte {
	title := html.EscapeString(strconv.Itoa(status) + " " + http.StatusText(status))
	return []byte(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>` + title + `</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem">
<h1>` + title + `</h1>
<p>` + html.EscapeString(msg) + `</p>
</body></html>
`)
}

// withoutOwnCookies returns the request's cookies less those the gateway
// owns, joined into one Cookie header, and whether any was removed.
func withoutOwnCookies(values []string, own []session.Cookies) (string, bool) {
	var kept []string
	removed := false
	for _, line := range values {
		for _, part := range strings.Split(line, ";") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			name, _, _ := strings.Cut(part, "=")
			mine := false
			for _, ck := range own {
				if ck.Owns(strings.TrimSpace(name)) {
					mine = true
				}
			}
			if mine {
				removed = true
				continue
			}
			kept = append(kept, part)
		}
	}
	return strings.Join(kept, "; "), removed
}

// unescape decodes a query value, or returns "" when it is malformed.
func unescape(v string) string {
	s, err := url.QueryUnescape(v)
	if err != nil {
		return ""
	}
	return s
}

var _ identity.CookieSetter = (*Request)(nil)
