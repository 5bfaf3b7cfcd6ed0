package core

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/netip"
	"path"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/kmsgate/kmsgate/backends/pem"
	"github.com/kmsgate/kmsgate/jwks"
)

// fieldMap is Headers over a map of canonical names to one value each.
type fieldMap map[string]string

func (h fieldMap) Get(name string) string { return h[name] }
func (h fieldMap) Values(name string) []string {
	if v, ok := h[name]; ok {
		return []string{v}
	}
	return nil
}
func (h fieldMap) All(yield func(name, value string) bool) {
	for k, v := range h {
		if !yield(k, v) {
			return
		}
	}
}

// normalJSON returns v as encoding/json reads it back with UseNumber, so
// that claims decoded by different paths compare equal when their JSON is.
func normalJSON(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encode %#v: %v", v, err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var out any
	if err := d.Decode(&out); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return out
}

var signSeeds = []string{
	`{"claims":{"sub":"svc-a","aud":"app"}}`,
	`{"claims":{"sub":"svc-a","aud":["app","api"],"scope":"read","tenant":{"id":12345678901234567890,"f":1.5e3,"l":[true,null,"x"]}},"ttl":"90s"}`,
	`{"claims":{"sub":"svc-b","aud":"api"},"ttl":3600}`,
	`{"claims":{"sub":"svc-b","aud":"api"},"ttl":"1h0m1s"}`,
	`{"claims":{"sub":"svc-b","aud":"api"},"ttl":0}`,
	`{"claims":{"sub":"svc-b","aud":"api"},"ttl":"-5m"}`,
	`{"claims":{"sub":"svc-b","aud":"api"},"ttl":1.5}`,
	`{"claims":{"sub":"svc-b","aud":"api"},"ttl":null}`,
	`{"claims":{"sub":"svc-b","aud":"api"},"ttl":9223372036}`,
	`{"claims":{"sub":"svc-b","aud":"api"},"ttl":[1]}`,
	`{"claims":{"sub":"svc-a","aud":"app","ISS":"x"}}`,
	`{"claims":{"sub":"svc-a","aud":"app","exp":1}}`,
	`{"claims":{"sub":"root","aud":"app"}}`,
	`{"claims":{"sub":"svc-a","aud":"other"}}`,
	`{"claims":{"sub":"svc-a","aud":[]}}`,
	`{"claims":{"sub":"svc-a","aud":[""]}}`,
	`{"claims":{"sub":"svc-a","aud":[1]}}`,
	`{"claims":{"sub":"svc-a","aud":"app","role":"admin"}}`,
	`{"claims":{"sub":"svc-a","sub":"svc-b","aud":"app"}}`,
	`{"claims":{"sub":"svc-a","aud":"app"},"extra":1}`,
	`{"claims":{"sub":"svc-a","aud":"app","scope":"\u00e9\ud83d\ude00<>&"}}`,
	"{\"claims\":{\"sub\":\"svc-\xff\",\"aud\":\"app\"}}",
	`{"claims":{"sub":"","aud":"app"}}`,
	`{"claims":null}`, `{}`, `[]`, `null`, ``, `{"claims":{}} {}`,
}

// FuzzDecodeSignRequest checks the strict reader of sign request bodies: a
// refused body gets an error that says why; an accepted one has a claims
// object, and its claims and ttl written out again read back the same; an
// accepted ttl is positive and, given as a string, the Go duration it
// spells.
func FuzzDecodeSignRequest(f *testing.F) {
	for _, s := range signSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeSignRequest(body)
		if err != nil {
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatal("refused without a message")
			}
			return
		}
		if req.Claims == nil {
			t.Fatalf("%q: accepted without claims", body)
		}
		out := map[string]any{"claims": req.Claims}
		if len(req.TTL) > 0 {
			out["ttl"] = req.TTL
		}
		re, err := json.Marshal(out)
		if err != nil {
			t.Fatalf("%q: claims %#v cannot be written out: %v", body, req.Claims, err)
		}
		again, err := decodeSignRequest(re)
		if err != nil {
			t.Fatalf("%q written out as %s is refused: %v", body, re, err)
		}
		if !reflect.DeepEqual(again.Claims, req.Claims) {
			t.Fatalf("%q: claims %#v written out as %s read back as %#v", body, req.Claims, re, again.Claims)
		}
		ttl, err := parseTTL(req.TTL)
		ttl2, err2 := parseTTL(again.TTL)
		if ttl != ttl2 || (err == nil) != (err2 == nil) {
			t.Fatalf("%q: ttl %v, %v; written out as %s: %v, %v", body, ttl, err, re, ttl2, err2)
		}
		if err != nil {
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatal("ttl refused without a message")
			}
			return
		}
		if ttl <= 0 {
			t.Fatalf("%q: ttl %v accepted", body, ttl)
		}
		var s string
		if bytes.HasPrefix(req.TTL, []byte(`"`)) && json.Unmarshal(req.TTL, &s) == nil {
			if d, err := time.ParseDuration(s); err != nil || d != ttl {
				t.Fatalf("%q: ttl %q read as %v; time.ParseDuration says %v, %v", body, s, ttl, d, err)
			}
		}
	})
}

// FuzzSignAPI checks POST /v1/sign end to end through the core, with a PEM
// key and one client (token, subjects svc-*, audiences app and api, extra
// claims scope and tenant, max-ttl 1h), on any Authorization value and
// body: every refusal is 400, 401, 403 or 413 with a JSON error and code,
// 401 only without the client's token; every 200 carries a token that
// jwx verifies against the served JWKS, whose claims are the requested
// ones (none reserved, all allowed by the policy) plus the gateway's iss,
// iat, nbf, exp and jti, with exp the requested ttl (at most max-ttl)
// after the moment of signing, and expires_at is exp.
func FuzzSignAPI(f *testing.F) {
	const (
		issuer = "https://issuer.example"
		secret = "fuzz-token-0123456789"
	)
	key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), bytes.Repeat([]byte{0x24}, 32))
	if err != nil {
		f.Fatal(err)
	}
	b, err := pem.New("fuzz", key)
	if err != nil {
		f.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: "fuzz", Backend: b}}, jwks.Config{Logger: log})
	if err != nil {
		f.Fatal(err)
	}
	if err := kr.Refresh(context.Background()); err != nil {
		f.Fatal(err)
	}
	sum := sha256.Sum256([]byte(secret))
	client := Client{Name: "fuzz", TokenSHA256: hex.EncodeToString(sum[:]), Audiences: []string{"app", "api"},
		Subjects: []string{"svc-*"}, MaxTTL: time.Hour, Claims: []string{"scope", "tenant"}}
	c, err := New(context.Background(), Config{Issuer: issuer, MaxBody: 2048, Clients: []Client{client}, Logger: log}, kr, nil)
	if err != nil {
		f.Fatal(err)
	}
	var doc Answer
	c.Serve(&Request{Ctx: context.Background(), Method: "GET", Target: DefaultJWKSPath, Headers: fieldMap{}}, &doc)
	set, err := jwk.Parse(doc.Body)
	if doc.Status != http.StatusOK || err != nil {
		f.Fatalf("JWKS: %d %s %v", doc.Status, doc.Body, err)
	}

	for _, s := range signSeeds {
		f.Add("Bearer "+secret, []byte(s))
	}
	f.Add("bearer  "+secret+" ", []byte(signSeeds[0]))
	f.Add("Bearer "+secret+"x", []byte(signSeeds[0]))
	f.Add("Basic "+secret, []byte(signSeeds[0]))
	f.Add("", []byte(signSeeds[0]))
	f.Add("Bearer "+secret, bytes.Repeat([]byte(" "), 3000))
	f.Add("Bearer "+secret+"\x00", []byte(signSeeds[0]))

	reserved := func(name string) bool {
		return slices.ContainsFunc(jwks.Reserved, func(r string) bool { return strings.EqualFold(r, name) })
	}
	serve := func(auth string, body []byte) *Answer {
		var a Answer
		h := fieldMap{"Content-Type": "application/json"}
		if auth != "" {
			h["Authorization"] = auth
		}
		c.Serve(&Request{Ctx: context.Background(), Method: "POST", Target: "/v1/sign", Authority: "gw.example",
			Addr: netip.MustParseAddr("192.0.2.10"), Headers: h, Body: bytes.NewReader(body), BodyLen: int64(len(body))}, &a)
		return &a
	}
	// The seeds reach a signature.
	if a := serve("Bearer "+secret, []byte(signSeeds[1])); a.Status != http.StatusOK {
		f.Fatalf("a good request: %d %s", a.Status, a.Body)
	}
	f.Fuzz(func(t *testing.T, auth string, body []byte) {
		before := time.Now().Unix()
		a := serve(auth, body)
		after := time.Now().Unix()
		if a.Status != http.StatusOK {
			var e struct{ Error, Code string }
			d := json.NewDecoder(bytes.NewReader(a.Body))
			d.DisallowUnknownFields()
			if err := d.Decode(&e); err != nil || e.Error == "" || e.Code == "" || a.ContentType != "application/json" {
				t.Fatalf("%d answer %q (%s) is not a JSON error with a code: %v", a.Status, a.Body, a.ContentType, err)
			}
			switch a.Status {
			case http.StatusBadRequest, http.StatusForbidden, http.StatusRequestEntityTooLarge:
			case http.StatusUnauthorized:
				if strings.Contains(auth, secret) && strings.HasPrefix(strings.ToLower(auth), "bearer ") && strings.TrimSpace(auth[7:]) == secret {
					t.Fatalf("the client's token %q refused: %s", auth, a.Body)
				}
			default:
				t.Fatalf("status %d for a client's request: %s", a.Status, a.Body)
			}
			return
		}
		if !strings.Contains(auth, secret) {
			t.Fatalf("signed for %q, which does not carry the client's token", auth)
		}
		var resp struct {
			Token     string    `json:"token"`
			KID       string    `json:"kid"`
			ExpiresAt time.Time `json:"expires_at"`
		}
		if err := json.Unmarshal(a.Body, &resp); err != nil {
			t.Fatalf("200 answer %q: %v", a.Body, err)
		}
		payload, err := jws.Verify([]byte(resp.Token), jws.WithKeySet(set, jws.WithRequireKid(true)))
		if err != nil {
			t.Fatalf("token %q does not verify with the served JWKS: %v", resp.Token, err)
		}
		if msg, err := jws.Parse([]byte(resp.Token)); err != nil || msg.Signatures()[0].ProtectedHeaders().KeyID() != resp.KID {
			t.Fatalf("token %q: kid is not %q (%v)", resp.Token, resp.KID, err)
		}
		var got map[string]any
		d := json.NewDecoder(bytes.NewReader(payload))
		d.UseNumber()
		if err := d.Decode(&got); err != nil {
			t.Fatalf("payload %s: %v", payload, err)
		}
		req, err := decodeSignRequest(body)
		if err != nil {
			t.Fatalf("signed %q, which the body reader refuses: %v", body, err)
		}
		for name, v := range req.Claims {
			if reserved(name) {
				t.Fatalf("signed %q, which sets the reserved claim %q", body, name)
			}
			if name != "sub" && name != "aud" && !slices.Contains(client.Claims, name) {
				t.Fatalf("signed %q, which sets the claim %q the client may not set", body, name)
			}
			if !reflect.DeepEqual(normalJSON(t, got[name]), normalJSON(t, v)) {
				t.Fatalf("claim %q is %#v in the token, %#v in the request", name, got[name], v)
			}
		}
		for _, name := range jwks.Reserved {
			if _, ok := got[name]; !ok {
				t.Fatalf("token %s has no %s", payload, name)
			}
		}
		sub, _ := got["sub"].(string)
		if ok, _ := path.Match("svc-*", sub); !ok {
			t.Fatalf("signed for the subject %q", sub)
		}
		var auds []string
		switch v := got["aud"].(type) {
		case string:
			auds = []string{v}
		case []any:
			for _, a := range v {
				s, _ := a.(string)
				auds = append(auds, s)
			}
		}
		for _, aud := range auds {
			if !slices.Contains(client.Audiences, aud) {
				t.Fatalf("signed for the audience %q", aud)
			}
		}
		if len(auds) == 0 {
			t.Fatalf("token %s has no audience", payload)
		}
		num := func(name string) int64 {
			n, ok := got[name].(json.Number)
			v, err := n.Int64()
			if !ok || err != nil {
				t.Fatalf("%s is %#v", name, got[name])
			}
			return v
		}
		iat, nbf, exp := num("iat"), num("nbf"), num("exp")
		ttl, err := parseTTL(req.TTL)
		if err != nil || ttl > client.MaxTTL {
			t.Fatalf("signed with the ttl %v (%v), more than max-ttl %v", ttl, err, client.MaxTTL)
		}
		skew := int64(jwks.ClockSkew / time.Second)
		if got["iss"] != issuer || nbf != iat || iat < before-skew-1 || iat > after-skew ||
			exp-iat-skew < int64(ttl/time.Second) || exp-iat-skew > int64((ttl+time.Second-1)/time.Second) {
			t.Fatalf("token %s: iss, iat, nbf or exp wrong for ttl %v signed in [%d, %d]", payload, ttl, before, after)
		}
		if resp.ExpiresAt.Unix() != exp {
			t.Fatalf("expires_at %v is not exp %d", resp.ExpiresAt, exp)
		}
	})
}
