package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/valyala/fasthttp"

	"github.com/kmsgate/kmsgate/jwks"
)

// signRequest is the body of POST /v1/sign.
type signRequest struct {
	// Claims are the token's claims; sub and aud are required.
	Claims map[string]any `json:"claims"`
	// TTL is the lifetime, a Go duration ("5m") or seconds; default 5m,
	// capped by the client's max_ttl.
	TTL json.RawMessage `json:"ttl"`
}

// defaultTTL is the lifetime of a signed token when the request names none.
const defaultTTL = 5 * time.Minute

// handleSign answers POST /v1/sign for the net/http server.
func (s *Server) handleSign(c echo.Context) error {
	r := c.Request()
	c.Response().Header().Set("Cache-Control", "no-store")
	client := s.clients.authenticate(httpRequest{r})
	if client == nil {
		c.Response().Header().Set("WWW-Authenticate", `Bearer realm="kmsgate"`)
		return fail(c, http.StatusUnauthorized, "unauthenticated", "a valid bearer token or client certificate is required")
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), r.Body, s.cfg.MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fail(c, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the request body is larger than %d bytes", s.cfg.MaxBody))
		}
		return fail(c, http.StatusBadRequest, "malformed", "could not read the request body")
	}
	a := s.sign(r.Context(), client, body)
	if a.retryAfter > 0 {
		c.Response().Header().Set("Retry-After", strconv.Itoa(a.retryAfter))
	}
	return c.Blob(a.status, echo.MIMEApplicationJSON, a.body)
}

// fastSign answers POST /v1/sign for the fasthttp server.
func (s *Server) fastSign(ctx *fasthttp.RequestCtx) {
	rq := fastRequest{ctx}
	client := s.clients.authenticate(rq)
	if client == nil {
		fastFail(ctx, http.StatusUnauthorized, "unauthenticated", "a valid bearer token or client certificate is required")
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="kmsgate"`)
		ctx.Response.Header.Set("Cache-Control", "no-store")
		return
	}
	if !s.boundBody(ctx) {
		return
	}
	a := s.sign(rq.context(), client, ctx.PostBody())
	ctx.SetStatusCode(a.status)
	ctx.SetContentTypeBytes(jsonContentTypeBytes)
	ctx.Response.Header.Set("Cache-Control", "no-store")
	if a.retryAfter > 0 {
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(a.retryAfter))
	}
	ctx.SetBody(a.body)
}

// signAnswer is the outcome of a sign request: a status and its JSON body.
type signAnswer struct {
	status     int
	body       []byte
	retryAfter int // seconds; 0 for none
}

func refuse(status int, code, msg string) signAnswer {
	return signAnswer{status: status, body: errorJSON(code, msg)}
}

// sign checks an authenticated client's request body against its policy
// and signs the token within the request timeout.
func (s *Server) sign(ctx context.Context, client *Client, body []byte) signAnswer {
	var req signRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(&req); err != nil {
		return refuse(http.StatusBadRequest, "malformed", "body must be a JSON object {\"claims\": {...}, \"ttl\": \"5m\"}: "+err.Error())
	}
	if dec.More() {
		return refuse(http.StatusBadRequest, "malformed", "body has data after the JSON object")
	}
	ttl, err := parseTTL(req.TTL)
	if err != nil {
		return refuse(http.StatusBadRequest, "malformed", err.Error())
	}
	if ttl > client.MaxTTL {
		return refuse(http.StatusForbidden, "ttl_not_allowed", fmt.Sprintf("ttl %s is longer than this client's max_ttl %s", ttl, client.MaxTTL))
	}
	for _, name := range jwks.Reserved {
		if _, ok := req.Claims[name]; ok {
			return refuse(http.StatusBadRequest, "reserved_claim", fmt.Sprintf("claim %q is set by the gateway and may not be given", name))
		}
	}
	if status, code, msg := checkPolicy(client, req.Claims); status != 0 {
		return refuse(status, code, msg)
	}
	now := time.Now()
	claims, err := jwks.NewClaims(s.cfg.Issuer, now, ttl, req.Claims)
	if err != nil {
		return refuse(http.StatusBadRequest, "malformed", err.Error())
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	tok, kid, err := s.keys.SignJWT(ctx, claims)
	if err != nil {
		s.log.Warn("sign failed", "client", client.Name, "kid", kid, "err", err.Error())
		status, retry, code, msg := backendRefusal(err)
		a := refuse(status, code, msg)
		a.retryAfter = retry
		return a
	}
	s.log.Debug("signed", "client", client.Name, "kid", kid, "sub", claims["sub"])
	return signAnswer{status: http.StatusOK, body: signResponse(tok, kid, now.Add(ttl))}
}

// checkPolicy applies the client's policy to the requested claims and
// returns a non-zero status when it refuses them.
func checkPolicy(c *Client, claims map[string]any) (int, string, string) {
	sub, ok := claims["sub"].(string)
	if !ok || sub == "" {
		return http.StatusBadRequest, "malformed", "claims.sub must be a non-empty string"
	}
	if !c.allowSubject(sub) {
		return http.StatusForbidden, "subject_not_allowed", fmt.Sprintf("subject %q is not allowed for this client", sub)
	}
	var auds []string
	switch a := claims["aud"].(type) {
	case string:
		auds = []string{a}
	case []any:
		for _, v := range a {
			s, ok := v.(string)
			if !ok {
				return http.StatusBadRequest, "malformed", "claims.aud must be a string or a list of strings"
			}
			auds = append(auds, s)
		}
	default:
		return http.StatusBadRequest, "malformed", "claims.aud must be a string or a list of strings"
	}
	if len(auds) == 0 || slices.Contains(auds, "") {
		return http.StatusBadRequest, "malformed", "claims.aud must name at least one audience"
	}
	for _, a := range auds {
		if !c.allowAudience(a) {
			return http.StatusForbidden, "audience_not_allowed", fmt.Sprintf("audience %q is not allowed for this client", a)
		}
	}
	names := make([]string, 0, len(claims))
	for name := range claims {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if name != "sub" && name != "aud" && !c.allowClaim(name) {
			return http.StatusForbidden, "claim_not_allowed", fmt.Sprintf("claim %q is not allowed for this client", name)
		}
	}
	return 0, "", ""
}

// parseTTL reads the ttl member: absent means the default; a string is a Go
// duration, a number is seconds.
func parseTTL(raw json.RawMessage) (time.Duration, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return defaultTTL, nil
	}
	var d time.Duration
	var s string
	var n json.Number
	switch {
	case json.Unmarshal(raw, &s) == nil:
		v, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("ttl %q is not a duration such as \"5m\"", s)
		}
		d = v
	case json.Unmarshal(raw, &n) == nil:
		secs, err := n.Int64()
		if err != nil {
			return 0, fmt.Errorf("ttl %s is not a whole number of seconds", n)
		}
		if secs > int64(1<<62/time.Second) {
			return 0, fmt.Errorf("ttl %s is too large", n)
		}
		d = time.Duration(secs) * time.Second
	default:
		return 0, fmt.Errorf("ttl must be a duration string or a number of seconds")
	}
	if d <= 0 {
		return 0, fmt.Errorf("ttl %s is not positive", d)
	}
	return d, nil
}

// signResponse is the answer of POST /v1/sign,
// {"token": …, "kid": …, "expires_at": …}, without reflection: token
// and kid are base64url and dots, and the time is RFC 3339, so none needs
// escaping.
func signResponse(token, kid string, exp time.Time) []byte {
	b := make([]byte, 0, len(token)+len(kid)+80)
	b = append(b, `{"token":"`...)
	b = append(b, token...)
	b = append(b, `","kid":"`...)
	b = append(b, kid...)
	b = append(b, `","expires_at":"`...)
	b = exp.UTC().AppendFormat(b, time.RFC3339)
	b = append(b, `"}`...)
	return b
}
