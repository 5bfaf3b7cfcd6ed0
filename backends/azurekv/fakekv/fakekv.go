// Package fakekv is a fake of the Azure Key Vault keys REST API, for tests
// only. It serves what kmsgate's azurekv backend calls (list a key's
// versions, get a key version, sign) over TLS on 127.0.0.1 and behaves like
// Key Vault where the backend depends on it: the bearer-challenge handshake
// (a request without a token gets 401 with a WWW-Authenticate challenge
// naming the tenant and resource), api-version, paging with nextLink,
// attributes (enabled, nbf, exp, created, updated), key types EC, EC-HSM and
// RSA, key_ops, Key Vault's error bodies and status codes, and ES256
// signatures in the JOSE R||S form. Tests steer it through a Go API: add
// versions, change attributes, deny access, and inject latency, errors and
// damaged answers.
//
// The package is a module of its own, so that nothing of it enters the main
// module; the azurekv backend's tests live beside it.
package fakekv

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Operations, as used in Fault.Op and Calls.
const (
	OpList = "list" // GET /keys/NAME/versions
	OpGet  = "get"  // GET /keys/NAME/VERSION
	OpSign = "sign" // POST /keys/NAME/VERSION/sign
)

// Tenant is the tenant the challenge names.
const Tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"

// Version is how a test describes one key version.
type Version struct {
	// Kty is the key type: "EC" (the default), "EC-HSM", "RSA" or "RSA-HSM".
	Kty string
	// Curve is the EC curve: "P-256" (the default) or "P-384".
	Curve string
	// KeyOps are the permitted operations; nil means sign and verify.
	KeyOps []string
	// Disabled turns attributes.enabled off.
	Disabled bool
	// NotBefore and Expires set attributes.nbf and attributes.exp when not
	// zero.
	NotBefore, Expires time.Time
	// Created is attributes.created; zero means now.
	Created time.Time
}

// Fault is an injected failure. It applies to the requests it matches, after
// the token was accepted, Times times (0: until ClearFaults).
type Fault struct {
	// Op and Key restrict the fault to one operation and one key name;
	// empty matches any.
	Op, Key string
	// Status, when not 0, answers with this HTTP status and a Key Vault
	// error body (Code and Message, or defaults for the status).
	Status        int
	Code, Message string
	// RetryAfter is sent as the Retry-After header when not empty.
	RetryAfter string
	// Delay holds the answer this long (or until the client gives up).
	Delay time.Duration
	// Drop closes the connection without an answer.
	Drop bool
	// WrongKID makes a sign answer name another version in its kid.
	WrongKID bool
	// ShortSignature makes a sign answer's signature 63 bytes.
	ShortSignature bool
	// SignWith makes a sign answer carry a signature by the newest version
	// of another key (named here) under the right kid.
	SignWith string
	// Times is how many requests the fault applies to; 0 means all.
	Times int

	used int
}

type version struct {
	id        string
	spec      Version
	ec        *ecdsa.PrivateKey
	rsa       *rsa.PrivateKey
	created   time.Time
	updated   time.Time
	enabled   bool
	nbf, exp  time.Time
	keyOps    []string
	createdNs int64 // tie-break for "latest"
}

type key struct {
	name     string // as created
	versions map[string]*version
	denied   bool
}

// Server is one fake vault. Its methods are safe for concurrent use.
type Server struct {
	// Token is the bearer token the fake accepts.
	Token string

	srv *httptest.Server

	mu         sync.Mutex
	keys       map[string]*key // by lower-case name
	faults     []*Fault
	latency    time.Duration
	pageSize   int
	calls      map[string]int
	challenges int
	bodyNoAuth int
	tokens     map[string]int
	seq        int64
	conns      int
}

// Connections returns how many connections clients have opened.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

// New starts a fake vault on a random 127.0.0.1 port, serving TLS with a
// certificate for 127.0.0.1 (see CACertPEM), accepting the bearer token
// token. Close stops it.
func New(token string) *Server {
	s := &Server{Token: token, keys: map[string]*key{}, calls: map[string]int{}, tokens: map[string]int{}, pageSize: 25}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.mu.Lock()
			s.conns++
			s.mu.Unlock()
		}
	}
	s.srv.StartTLS()
	return s
}

// URL is the fake's base URL, https://127.0.0.1:PORT.
func (s *Server) URL() string { return s.srv.URL }

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// CACertPEM is the PEM of the certificate the fake serves, to trust as a
// certificate authority.
func (s *Server) CACertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
}

// WriteCACert writes CACertPEM to a file in dir and returns its path.
func (s *Server) WriteCACert(dir string) (string, error) {
	p := filepath.Join(dir, "fakekv-ca.pem")
	return p, os.WriteFile(p, s.CACertPEM(), 0o600)
}

// HTTPClient returns a client that trusts the fake's certificate.
func (s *Server) HTTPClient() *http.Client { return s.srv.Client() }

// SetLatency delays every answer (challenges included) by d.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetPageSize sets how many versions one page of a listing holds.
func (s *Server) SetPageSize(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pageSize = max(n, 1)
}

// Inject adds a fault.
func (s *Server) Inject(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// ClearFaults removes every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// Calls returns how many authenticated requests of op were answered (faults
// included).
func (s *Server) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// Challenges returns how many requests came without a token and were
// answered with the 401 challenge, and how many of those carried a body
// (the SDK removes the body before it elicits a challenge).
func (s *Server) Challenges() (challenges, withBody int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.challenges, s.bodyNoAuth
}

// RefusedTokens returns how many requests carried a token the fake does not
// accept.
func (s *Server) RefusedTokens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for t, c := range s.tokens {
		if t != s.Token {
			n += c
		}
	}
	return n
}

// AddVersion creates a version of key name (creating the key) and returns
// its version id, 32 hexadecimal digits.
func (s *Server) AddVersion(name string, spec Version) (string, error) {
	if spec.Kty == "" {
		spec.Kty = "EC"
	}
	if spec.KeyOps == nil {
		spec.KeyOps = []string{"sign", "verify"}
	}
	v := &version{spec: spec, enabled: !spec.Disabled, nbf: spec.NotBefore, exp: spec.Expires, keyOps: slices.Clone(spec.KeyOps)}
	switch spec.Kty {
	case "EC", "EC-HSM":
		if spec.Curve == "" {
			spec.Curve = "P-256"
		}
		curve := elliptic.P256()
		switch spec.Curve {
		case "P-256":
		case "P-384":
			curve = elliptic.P384()
		default:
			return "", fmt.Errorf("fakekv: curve %q not supported", spec.Curve)
		}
		k, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			return "", err
		}
		v.ec = k
	case "RSA", "RSA-HSM":
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return "", err
		}
		v.rsa = k
	default:
		return "", fmt.Errorf("fakekv: key type %q not supported", spec.Kty)
	}
	v.spec = spec
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return "", err
	}
	v.id = hex.EncodeToString(id)
	v.created = spec.Created
	if v.created.IsZero() {
		v.created = time.Now()
	}
	v.created = v.created.Truncate(time.Second)
	v.updated = v.created
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	v.createdNs = s.seq
	k := s.keys[strings.ToLower(name)]
	if k == nil {
		k = &key{name: name, versions: map[string]*version{}}
		s.keys[strings.ToLower(name)] = k
	}
	k.versions[v.id] = v
	return v.id, nil
}

// Update changes a version's attributes (enabled, nbf, exp, key_ops) and
// moves attributes.updated on, as Key Vault's UpdateKey does.
func (s *Server) Update(name, ver string, fn func(enabled *bool, nbf, exp *time.Time, keyOps *[]string)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.version(name, ver)
	if err != nil {
		return err
	}
	fn(&v.enabled, &v.nbf, &v.exp, &v.keyOps)
	// Key Vault's times have a resolution of one second: make each update
	// visible as a new updated time.
	v.updated = v.updated.Add(time.Second)
	if now := time.Now().Truncate(time.Second); now.After(v.updated) {
		v.updated = now
	}
	return nil
}

// SetEnabled turns a version's attributes.enabled on or off.
func (s *Server) SetEnabled(name, ver string, on bool) error {
	return s.Update(name, ver, func(enabled *bool, _, _ *time.Time, _ *[]string) { *enabled = on })
}

// DeleteKey removes a key with all its versions.
func (s *Server) DeleteKey(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.keys, strings.ToLower(name))
}

// Deny makes every request about key name fail with 403, as a caller
// without a role assignment gets (on is false to allow again).
func (s *Server) Deny(name string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k := s.keys[strings.ToLower(name)]; k != nil {
		k.denied = on
	}
}

// PublicKey returns a version's EC public key (nil for RSA or unknown).
func (s *Server) PublicKey(name, ver string) *ecdsa.PublicKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.version(name, ver)
	if err != nil || v.ec == nil {
		return nil
	}
	return &v.ec.PublicKey
}

func (s *Server) version(name, ver string) (*version, error) {
	k := s.keys[strings.ToLower(name)]
	if k == nil {
		return nil, fmt.Errorf("fakekv: no key %q", name)
	}
	v := k.versions[strings.ToLower(ver)]
	if v == nil {
		return nil, fmt.Errorf("fakekv: key %q has no version %q", name, ver)
	}
	return v, nil
}

// errorBody writes a Key Vault error answer.
func errorBody(w http.ResponseWriter, status int, code, inner, msg string) {
	e := map[string]any{"code": code, "message": msg}
	if inner != "" {
		e["innererror"] = map[string]any{"code": inner}
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": e})
}

// challenge answers 401 with the bearer challenge Key Vault sends.
func challenge(w http.ResponseWriter, r *http.Request, msg string) {
	resource := "https://vault.azure.net"
	if strings.Contains(r.Host, ".managedhsm.") {
		resource = "https://managedhsm.azure.net"
	}
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer authorization="https://login.microsoftonline.com/%s", resource="%s"`, Tenant, resource))
	errorBody(w, http.StatusUnauthorized, "Unauthorized", "", msg)
}

// wait holds an answer for d, or until the client goes away.
func wait(r *http.Request, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// route splits a request path into operation, key name and version.
func route(r *http.Request) (op, name, ver string, ok bool) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if len(parts) < 2 || parts[0] != "keys" || parts[1] == "" {
		return "", "", "", false
	}
	name = parts[1]
	switch {
	case r.Method == http.MethodGet && len(parts) == 3 && parts[2] == "versions":
		return OpList, name, "", true
	case r.Method == http.MethodGet && (len(parts) == 2 || len(parts) == 3):
		if len(parts) == 3 {
			ver = parts[2]
		}
		return OpGet, name, ver, true
	case r.Method == http.MethodPost && len(parts) == 4 && parts[3] == "sign":
		return OpSign, name, parts[2], true
	}
	return "", "", "", false
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	// Read the body first, as a front end does: the server then notices a
	// client that goes away (r.Context() ends) while the answer is held.
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return
	}
	s.mu.Lock()
	latency := s.latency
	s.mu.Unlock()
	if !wait(r, latency) {
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		errorBody(w, http.StatusBadRequest, "BadParameter", "", "The 'api-version' query parameter is missing.")
		return
	}
	auth := r.Header.Get("Authorization")
	if auth == "" {
		s.mu.Lock()
		s.challenges++
		if len(body) > 0 {
			s.bodyNoAuth++
		}
		s.mu.Unlock()
		challenge(w, r, "AKV10000: Request is missing a Bearer or PoP token.")
		return
	}
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	s.mu.Lock()
	s.tokens[tok]++
	s.mu.Unlock()
	if !ok || tok != s.Token {
		challenge(w, r, "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/"+Tenant+"/.")
		return
	}
	op, name, ver, ok := route(r)
	if !ok {
		errorBody(w, http.StatusNotFound, "NotFound", "", "The requested resource was not found: "+r.Method+" "+r.URL.Path)
		return
	}
	s.mu.Lock()
	s.calls[op]++
	f := s.fault(op, name)
	s.mu.Unlock()
	if f != nil {
		if !wait(r, f.Delay) {
			return
		}
		if f.Drop {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		}
		if f.Status != 0 {
			if f.RetryAfter != "" {
				w.Header().Set("Retry-After", f.RetryAfter)
			}
			code, msg := f.Code, f.Message
			if code == "" {
				code, msg = defaultError(f.Status)
			}
			errorBody(w, f.Status, code, "", msg)
			return
		}
	}
	switch op {
	case OpList:
		s.list(w, r, name)
	case OpGet:
		s.get(w, r, name, ver)
	case OpSign:
		s.sign(w, r, name, ver, body, f)
	}
}

func defaultError(status int) (code, msg string) {
	switch {
	case status == http.StatusTooManyRequests:
		return "Throttled", "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached"
	case status == http.StatusForbidden:
		return "Forbidden", "Caller is not authorized to perform action on resource."
	case status >= 500:
		return "InternalServerError", "The service encountered an internal error."
	}
	return "BadParameter", "Bad request."
}

// fault returns the first fault matching op and key, counting its use.
func (s *Server) fault(op, name string) *Fault {
	for i, f := range s.faults {
		if (f.Op == "" || f.Op == op) && (f.Key == "" || strings.EqualFold(f.Key, name)) {
			f.used++
			if f.Times > 0 && f.used >= f.Times {
				s.faults = slices.Delete(s.faults, i, i+1)
			}
			c := *f
			return &c
		}
	}
	return nil
}

// lookup finds a key for a request, answering 404 or 403 itself.
func (s *Server) lookup(w http.ResponseWriter, name string) *key {
	k := s.keys[strings.ToLower(name)]
	if k == nil {
		errorBody(w, http.StatusNotFound, "KeyNotFound", "", fmt.Sprintf("A key with (name/id) %s was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command.", name))
		return nil
	}
	if k.denied {
		errorBody(w, http.StatusForbidden, "Forbidden", "ForbiddenByRbac", "Caller is not authorized to perform action on resource. Action: 'Microsoft.KeyVault/vaults/keys/read'")
		return nil
	}
	return k
}

func kid(r *http.Request, k *key, v *version) string {
	return "https://" + r.Host + "/keys/" + k.name + "/" + v.id
}

func attributes(v *version) map[string]any {
	a := map[string]any{
		"enabled":         v.enabled,
		"created":         v.created.Unix(),
		"updated":         v.updated.Unix(),
		"recoveryLevel":   "Recoverable+Purgeable",
		"recoverableDays": 90,
	}
	if !v.nbf.IsZero() {
		a["nbf"] = v.nbf.Unix()
	}
	if !v.exp.IsZero() {
		a["exp"] = v.exp.Unix()
	}
	return a
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(w).Encode(v)
}

var b64 = base64.RawURLEncoding

func (s *Server) list(w http.ResponseWriter, r *http.Request, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.lookup(w, name)
	if k == nil {
		return
	}
	// Key Vault lists versions in no particular order; the fake lists
	// them by id, which is random.
	ids := make([]string, 0, len(k.versions))
	for id := range k.versions {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	start := 0
	if tok := r.URL.Query().Get("$skiptoken"); tok != "" {
		b, err := base64.StdEncoding.DecodeString(tok)
		n, err2 := strconv.Atoi(string(b))
		if err != nil || err2 != nil || n < 0 || n > len(ids) {
			errorBody(w, http.StatusBadRequest, "BadParameter", "", "Invalid skip token.")
			return
		}
		start = n
	}
	end := min(start+s.pageSize, len(ids))
	items := make([]any, 0, end-start)
	for _, id := range ids[start:end] {
		v := k.versions[id]
		items = append(items, map[string]any{"kid": kid(r, k, v), "attributes": attributes(v)})
	}
	var next any
	if end < len(ids) {
		q := fmtQuery(r.URL.Query().Get("api-version"), base64.StdEncoding.EncodeToString([]byte(strconv.Itoa(end))), s.pageSize)
		next = "https://" + r.Host + "/keys/" + k.name + "/versions?" + q
	}
	writeJSON(w, map[string]any{"value": items, "nextLink": next})
}

func fmtQuery(apiVersion, skip string, max int) string {
	return "api-version=" + apiVersion + "&$skiptoken=" + skip + "&maxresults=" + strconv.Itoa(max)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request, name, ver string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.lookup(w, name)
	if k == nil {
		return
	}
	var v *version
	if ver == "" {
		for _, c := range k.versions {
			if v == nil || c.createdNs > v.createdNs {
				v = c
			}
		}
	} else {
		v = k.versions[strings.ToLower(ver)]
	}
	if v == nil {
		errorBody(w, http.StatusNotFound, "KeyNotFound", "", fmt.Sprintf("A key with (name/id) %s/%s was not found in this key vault.", name, ver))
		return
	}
	if !v.enabled {
		errorBody(w, http.StatusForbidden, "Forbidden", "KeyDisabled", "Operation get is not allowed on a disabled key.")
		return
	}
	jwk := map[string]any{"kid": kid(r, k, v), "kty": v.spec.Kty, "key_ops": v.keyOps}
	if v.ec != nil {
		size := (v.ec.Curve.Params().BitSize + 7) / 8
		jwk["crv"] = v.spec.Curve
		jwk["x"] = b64.EncodeToString(v.ec.X.FillBytes(make([]byte, size)))
		jwk["y"] = b64.EncodeToString(v.ec.Y.FillBytes(make([]byte, size)))
	} else {
		jwk["n"] = b64.EncodeToString(v.rsa.N.Bytes())
		jwk["e"] = b64.EncodeToString(big.NewInt(int64(v.rsa.E)).Bytes())
	}
	writeJSON(w, map[string]any{"key": jwk, "attributes": attributes(v)})
}

func (s *Server) sign(w http.ResponseWriter, r *http.Request, name, ver string, body []byte, f *Fault) {
	var req struct {
		Alg   string `json:"alg"`
		Value string `json:"value"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		errorBody(w, http.StatusBadRequest, "BadParameter", "", "The request body is not valid JSON: "+err.Error())
		return
	}
	digest, err := b64.DecodeString(strings.TrimRight(req.Value, "="))
	if err != nil {
		errorBody(w, http.StatusBadRequest, "BadParameter", "", "Property value is not base64url.")
		return
	}
	s.mu.Lock()
	k := s.lookup(w, name)
	if k == nil {
		s.mu.Unlock()
		return
	}
	v := k.versions[strings.ToLower(ver)]
	if v == nil {
		s.mu.Unlock()
		errorBody(w, http.StatusNotFound, "KeyNotFound", "", fmt.Sprintf("A key with (name/id) %s/%s was not found in this key vault.", name, ver))
		return
	}
	// A version's key, type and id never change; its attributes are read
	// under the lock, the signature is made without it.
	enabled, nbf, exp, keyOps := v.enabled, v.nbf, v.exp, v.keyOps
	signedBy := v
	if f != nil && f.WrongKID {
		for _, o := range k.versions {
			if o != v {
				signedBy = o
				break
			}
		}
		if signedBy == v {
			signedBy = &version{id: strings.Repeat("0", 32)}
		}
	}
	signedKID := kid(r, k, signedBy)
	signer := v
	if f != nil && f.SignWith != "" {
		if o := s.keys[strings.ToLower(f.SignWith)]; o != nil {
			for _, c := range o.versions {
				if c.ec != nil && (signer == v || c.createdNs > signer.createdNs) {
					signer = c
				}
			}
		}
	}
	s.mu.Unlock()
	now := time.Now()
	switch {
	case !enabled:
		errorBody(w, http.StatusForbidden, "Forbidden", "KeyDisabled", "Operation sign is not allowed on a disabled key.")
		return
	case !exp.IsZero() && !now.Before(exp):
		errorBody(w, http.StatusForbidden, "Forbidden", "KeyExpired", "Operation sign is not allowed on an expired key.")
		return
	case !nbf.IsZero() && now.Before(nbf):
		errorBody(w, http.StatusForbidden, "Forbidden", "KeyNotYetValid", "Operation sign is not allowed on a key that is not yet valid.")
		return
	case !slices.Contains(keyOps, "sign"):
		errorBody(w, http.StatusForbidden, "Forbidden", "", "Operation sign is not permitted on this key.")
		return
	}
	var sig []byte
	switch {
	case req.Alg == "ES256" && v.ec != nil && v.spec.Curve == "P-256":
		if len(digest) != 32 {
			errorBody(w, http.StatusBadRequest, "BadParameter", "", "Invalid length of digest: want 32 bytes for ES256.")
			return
		}
		rr, ss, err := ecdsa.Sign(rand.Reader, signer.ec, digest)
		if err != nil {
			errorBody(w, http.StatusInternalServerError, "InternalServerError", "", err.Error())
			return
		}
		sig = append(rr.FillBytes(make([]byte, 32)), ss.FillBytes(make([]byte, 32))...)
	case req.Alg == "RS256" && v.rsa != nil:
		if sig, err = rsa.SignPKCS1v15(rand.Reader, v.rsa, crypto.SHA256, digest); err != nil {
			errorBody(w, http.StatusBadRequest, "BadParameter", "", err.Error())
			return
		}
	default:
		errorBody(w, http.StatusBadRequest, "BadParameter", "", fmt.Sprintf("Key and signature algorithm %q are not compatible.", req.Alg))
		return
	}
	if f != nil && f.ShortSignature {
		sig = sig[:len(sig)-1]
	}
	writeJSON(w, map[string]any{"kid": signedKID, "value": b64.EncodeToString(sig)})
}
