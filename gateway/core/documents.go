package core

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/gateway/identity"
)

// discoveryDocument returns the OpenID discovery document of an issuer and
// its ETag.
func discoveryDocument(issuer string) ([]byte, string) {
	b, _ := json.Marshal(map[string]any{
		"issuer":                                issuer,
		"jwks_uri":                              strings.TrimSuffix(issuer, "/") + DefaultJWKSPath,
		"id_token_signing_alg_values_supported": []string{"ES256"},
		"response_types_supported":              []string{"id_token"},
		"subject_types_supported":               []string{"public"},
	})
	return b, etagOf(b)
}

// etagOf returns a strong ETag for a fixed document.
func etagOf(b []byte) string {
	sum := sha256.Sum256(b)
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:]) + `"`
}

// serveJWKS serves the key set from memory; it never calls a backend.
func (c *Core) serveJWKS(r *Request, a *Answer) {
	if r.Method == http.MethodOptions {
		preflight(a)
		return
	}
	st := c.keys.State()
	if !st.Ready {
		// An empty or partial set (a URI that has not loaded yet may hold
		// the key that signed live tokens) would be cached by verifiers
		// for max-age: refuse until every key URI has loaded.
		c.metrics.JWKSRequest(false)
		a.Fail(http.StatusServiceUnavailable, "not_ready", "the key set has not loaded yet")
		a.Set("Access-Control-Allow-Origin", "*")
		a.Set("Retry-After", "2")
		return
	}
	c.serveDocument(r, a, st.Document.JSON, st.Document.ETag)
}

func (c *Core) serveDiscovery(r *Request, a *Answer) {
	if r.Method == http.MethodOptions {
		preflight(a)
		return
	}
	c.serveDocument(r, a, c.discovery, c.discoveryTag)
}

// serveDocument answers with a cacheable JSON document, or 304 when the
// client's If-None-Match names its ETag.
func (c *Core) serveDocument(r *Request, a *Answer, body []byte, etag string) {
	a.Set("Access-Control-Allow-Origin", "*")
	a.Set("Cache-Control", c.cacheControl)
	a.Set("Etag", etag)
	if inm := r.Headers.Get("If-None-Match"); inm != "" && etagMatches(inm, etag) {
		c.metrics.JWKSRequest(true)
		a.Status = http.StatusNotModified
		return
	}
	c.metrics.JWKSRequest(false)
	a.JSON(http.StatusOK, body)
}

// preflight answers a CORS preflight for the documents.
func preflight(a *Answer) {
	a.Status = http.StatusNoContent
	a.Set("Access-Control-Allow-Origin", "*")
	a.Set("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
	a.Set("Access-Control-Allow-Headers", "If-None-Match")
	a.Set("Access-Control-Max-Age", "86400")
}

// etagMatches implements If-None-Match's weak comparison (RFC 9110 13.1.2)
// over a comma-separated list, with "*" matching any.
func etagMatches(header, etag string) bool {
	for header != "" {
		var t string
		t, header, _ = strings.Cut(header, ",")
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == etag {
			return true
		}
	}
	return false
}

// Health answers the liveness check.
func (c *Core) Health(a *Answer) { a.JSON(http.StatusOK, []byte(`{"status":"ok"}`)) }

// Ready answers 200 once every key URI has loaded once and every identity
// source can judge requests (an OIDC issuer reached), 503 before, naming
// what is still missing.
func (c *Core) Ready(a *Answer) {
	st := c.keys.State()
	missing := []string{}
	for i, src := range c.keys.Sources() {
		if i >= len(st.Loaded) || !st.Loaded[i] {
			missing = append(missing, backends.Redact(src.URI))
		}
	}
	if c.proxy != nil {
		names := make([]string, 0, len(c.proxy.sources))
		for n := range c.proxy.sources {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			if r, ok := c.proxy.sources[n].(identity.Readier); ok {
				if ready, what := r.Ready(); !ready {
					missing = append(missing, what)
				}
			}
		}
	}
	if len(missing) == 0 {
		a.JSON(http.StatusOK, []byte(`{"status":"ready"}`))
		return
	}
	b, _ := json.Marshal(map[string]any{"status": "not ready", "not_loaded": missing})
	a.JSON(http.StatusServiceUnavailable, b)
}
