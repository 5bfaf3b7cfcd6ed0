package core

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/kmsgate/kmsgate/gateway/audit"
	"github.com/kmsgate/kmsgate/jwks"
)

// signRequest is the body of POST /v1/sign.
type signRequest struct {
	// Claims are the token's claims; sub and aud are required.
	Claims map[string]any `json:"claims"`
	// TTL is the lifetime, a Go duration ("5m") or seconds; default 5m,
	// capped by the client's max-ttl.
	TTL json.RawMessage `json:"ttl"`
}

// defaultTTL is the lifetime of a signed token when the request names none.
const defaultTTL = 5 * time.Minute

// serveSign answers POST /v1/sign: authenticate the client, read the body
// (at most MaxBody), check it against the client's policy and sign.
func (c *Core) serveSign(r *Request, a *Answer) {
	a.Set("Cache-Control", "no-store")
	client := c.clients.authenticate(r)
	if client == nil {
		a.Fail(http.StatusUnauthorized, "unauthenticated", "a valid bearer token or client certificate is required")
		a.Set("WWW-Authenticate", `Bearer realm="kmsgate"`)
		return
	}
	a.Client = client.Name
	body, ok := c.readBody(r, a)
	if !ok {
		return
	}
	s := c.sign(r.Ctx, client, body, r.Addr)
	if s.retryAfter > 0 {
		a.Set("Retry-After", strconv.Itoa(s.retryAfter))
	}
	a.JSON(s.status, s.body)
}

// readBody reads a request body of at most MaxBody bytes, or answers 413
// (or 400 when it cannot be read) and asks for the connection to close.
func (c *Core) readBody(r *Request, a *Answer) ([]byte, bool) {
	tooLarge := func() ([]byte, bool) {
		a.Fail(http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the request body is larger than %d bytes", c.cfg.MaxBody))
		a.Close = true
		return nil, false
	}
	if r.BodyLen > c.cfg.MaxBody {
		return tooLarge()
	}
	if r.Body == nil || r.BodyLen == 0 {
		r.bodyRead = true
		return nil, true
	}
	if r.Buffered != nil && int64(len(r.Buffered)) <= c.cfg.MaxBody {
		r.bodyRead = true
		return r.Buffered, true
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, c.cfg.MaxBody+1))
	switch {
	case err != nil:
		a.Fail(http.StatusBadRequest, "malformed", "the request body could not be read")
		a.Close = true
		return nil, false
	case int64(len(body)) > c.cfg.MaxBody:
		return tooLarge()
	}
	r.bodyRead = true
	return body, true
}

// signAnswer is the outcome of a sign request: a status and its JSON body.
type signAnswer struct {
	status     int
	body       []byte
	retryAfter int // seconds; 0 for none
}

func refuse(status int, code, msg string) signAnswer {
	return signAnswer{status: status, body: ErrorJSON(code, msg)}
}

// sign checks an authenticated client's request body against its policy
// and signs the token within the request timeout.
func (c *Core) sign(ctx context.Context, client *Client, body []byte, remote netip.Addr) signAnswer {
	req, err := decodeSignRequest(body)
	if err != nil {
		return refuse(http.StatusBadRequest, "malformed", err.Error())
	}
	ttl, err := parseTTL(req.TTL)
	if err != nil {
		return refuse(http.StatusBadRequest, "malformed", err.Error())
	}
	if ttl > client.MaxTTL {
		return refuse(http.StatusForbidden, "ttl_not_allowed", fmt.Sprintf("ttl %s is longer than this client's max-ttl %s", ttl, client.MaxTTL))
	}
	for name := range req.Claims {
		for _, reserved := range jwks.Reserved {
			if strings.EqualFold(name, reserved) {
				return refuse(http.StatusBadRequest, "reserved_claim", fmt.Sprintf("claim %q is set by the gateway and may not be given, in any letter case", name))
			}
		}
	}
	if status, code, msg := checkPolicy(client, req.Claims); status != 0 {
		return refuse(status, code, msg)
	}
	now := time.Now()
	claims, err := jwks.NewClaims(c.cfg.Issuer, now, ttl, req.Claims)
	if err != nil {
		return refuse(http.StatusBadRequest, "malformed", err.Error())
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	tok, kid, err := c.keys.SignJWT(ctx, claims)
	if err != nil {
		c.log.Warn("sign failed", "client", client.Name, "kid", kid, "err", err.Error())
		var a Answer
		a.backendFailure(err)
		retry, _ := strconv.Atoi(a.Header()[0].Value)
		return signAnswer{status: a.Status, body: a.Body, retryAfter: retry}
	}
	c.log.Debug("signed", "client", client.Name, "kid", kid, "sub", claims["sub"])
	if c.cfg.Audit != nil {
		rec := audit.FromClaims("sign", kid, claims)
		rec.Client = client.Name
		if remote.IsValid() {
			rec.Remote = remote.String()
		}
		c.cfg.Audit.Write(rec)
	}
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

// decodeSignRequest reads a sign request body strictly, in one pass of
// the JSON v2 decoder: one JSON object with only the members "claims" and
// "ttl" (exact spelling), no name twice in any object at any depth (the
// gateway and a verifier could otherwise read different values of one
// claim), valid UTF-8, nothing after it. Numbers in claims keep their
// exact digits (json.Number).
func decodeSignRequest(body []byte) (signRequest, error) {
	const form = `body must be a JSON object {"claims": {...}, "ttl": "5m"}`
	var raw struct {
		Claims map[string]jsontext.Value `json:"claims"`
		TTL    jsontext.Value            `json:"ttl"`
	}
	var req signRequest
	if err := jsonv2.Unmarshal(body, &raw, jsonv2.RejectUnknownMembers(true)); err != nil {
		return req, fmt.Errorf("%s: %w", form, err)
	}
	if raw.Claims == nil {
		return req, errors.New("claims must be a JSON object")
	}
	req.TTL = json.RawMessage(raw.TTL)
	req.Claims = make(map[string]any, len(raw.Claims))
	for k, v := range raw.Claims {
		var val any
		switch v.Kind() {
		case '"':
			var str string
			if err := jsonv2.Unmarshal(v, &str); err != nil {
				return req, fmt.Errorf("claims.%s: %w", k, err)
			}
			val = str
		case '0':
			val = json.Number(v)
		case 't', 'f':
			val = v.Kind() == 't'
		case 'n':
			val = nil
		default: // objects and arrays, with json.Number inside
			d := json.NewDecoder(bytes.NewReader(v))
			d.UseNumber()
			if err := d.Decode(&val); err != nil {
				return req, fmt.Errorf("claims.%s: %w", k, err)
			}
		}
		req.Claims[k] = val
	}
	return req, nil
}
