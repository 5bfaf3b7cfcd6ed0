package core

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/gateway/header"
	"github.com/kmsgate/kmsgate/gateway/identity"
	"github.com/kmsgate/kmsgate/gateway/proxy"
)

// Answer is the core's answer to a request, which a server writes out:
// a status, header fields and a body, or (Forward) a plan to carry out.
type Answer struct {
	Status      int
	ContentType string
	Body        []byte
	// Close asks the server to close the connection after this answer.
	Close bool
	// Endpoint labels the request in metrics and logs.
	Endpoint string
	// Subject is who the request was for (an identity's sub), and Client
	// the sign API client, for the request log.
	Subject, Client string
	// Route names the route that judged the request, and Decision its
	// policy's decision (allow, deny, not-allowed, no-policy), for the
	// request log.
	Route, Decision string
	// Forward is set when the request is to be forwarded as Plan says.
	Forward bool
	Plan    proxy.Plan

	hdr [14]header.Field
	n   int
}

// Set adds a header field to the answer.
func (a *Answer) Set(name, value string) {
	if a.n < len(a.hdr) {
		a.hdr[a.n] = header.Field{Name: name, Value: value}
		a.n++
	}
}

// Header returns the answer's header fields.
func (a *Answer) Header() []header.Field { return a.hdr[:a.n] }

// apiError is the JSON body of every error answer.
type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// ErrorJSON is the body of an error answer, {"error": msg, "code": code}.
func ErrorJSON(code, msg string) []byte {
	b, _ := json.Marshal(apiError{Error: msg, Code: code})
	return b
}

const jsonType = "application/json"

// Fail makes a an error answer; every error the gateway gives is written
// here.
func (a *Answer) Fail(status int, code, msg string) {
	a.Status, a.ContentType, a.Body = status, jsonType, ErrorJSON(code, msg)
}

// JSON makes a a JSON answer.
func (a *Answer) JSON(status int, body []byte) {
	a.Status, a.ContentType, a.Body = status, jsonType, body
}

// backendFailure answers a request that could not be signed because of
// the backend: 429 and retry in 1 s when it throttles, else 503 and retry in
// 5 s, with a code naming the kind. Nothing unsigned is ever returned or
// forwarded.
func (a *Answer) backendFailure(err error) {
	kind := backends.Kind(err)
	status, retry := http.StatusServiceUnavailable, 5
	if errors.Is(err, backends.ErrThrottled) {
		status, retry = http.StatusTooManyRequests, 1
	}
	a.Fail(status, "backend_"+kind, "the signing backend could not sign now ("+kind+"); retry later")
	a.Set("Retry-After", strconv.Itoa(retry))
}

// identityFailure answers a request without an acceptable identity: 403
// for identity headers from an untrusted address, else 401, with a Bearer
// challenge for the oidc source.
func (a *Answer) identityFailure(err error, source string) {
	if errors.Is(err, identity.ErrSpoofed) {
		a.Fail(http.StatusForbidden, "untrusted_identity", "identity headers are only accepted from a trusted proxy")
		return
	}
	if errors.Is(err, identity.ErrUnavailable) {
		a.Fail(http.StatusServiceUnavailable, "identity_unavailable", "the identity provider ("+source+") has not been reached yet; retry later")
		a.Set("Retry-After", "5")
		return
	}
	a.Fail(http.StatusUnauthorized, "unauthenticated", "no acceptable identity ("+source+")")
	if source == identity.SourceOIDC {
		a.Set("WWW-Authenticate", `Bearer realm="kmsgate"`)
	}
}

// forbiddenPage is the page a browser gets when a policy refuses it.
var forbiddenPage = htmlPage(http.StatusForbidden, "You are signed in, but this application's access policy does not let you in. If you need access, ask the team that runs it.")

// refuse answers a request that a policy refused: 403, with a small HTML
// page for a browser (Accept names text/html) and the JSON error for
// anything else.
func (a *Answer) refuse(r *Request, code, msg string) {
	a.Set("Vary", "Accept")
	if acceptsHTML(r.Headers.Values("Accept")) {
		a.Status, a.ContentType, a.Body = http.StatusForbidden, "text/html; charset=utf-8", forbiddenPage
		return
	}
	a.Fail(http.StatusForbidden, code, msg)
}

// acceptsHTML reports whether an Accept header lists text/html without
// q=0.
func acceptsHTML(values []string) bool {
	for _, v := range values {
		for _, item := range strings.Split(v, ",") {
			mt, params, _ := strings.Cut(item, ";")
			if !header.Exact(strings.TrimSpace(mt), "text/html") {
				continue
			}
			q := "1"
			for _, p := range strings.Split(params, ";") {
				if k, v, ok := strings.Cut(strings.TrimSpace(p), "="); ok && header.Exact(strings.TrimSpace(k), "q") {
					q = strings.TrimSpace(v)
				}
			}
			if f, err := strconv.ParseFloat(q, 64); err == nil && f > 0 {
				return true
			}
		}
	}
	return false
}
