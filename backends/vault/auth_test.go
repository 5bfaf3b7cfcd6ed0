package vault_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/vault"
)

// signFor signs one digest with b and checks the signature.
func signFor(t *testing.T, b *vault.Backend, v backends.Version) error {
	t.Helper()
	d := sha256.Sum256([]byte(time.Now().String()))
	sig, err := b.Sign(ctxTimeout(t, 5*time.Second), v.ID, d[:])
	if err != nil {
		return err
	}
	if !backends.VerifyJOSE(v.PublicKey, d[:], sig) {
		t.Fatalf("%s: signature does not verify", v.ID)
	}
	return nil
}

// signDuring signs continuously for d, failing on the first error, and returns
// the distinct client tokens seen.
func signDuring(t *testing.T, b *vault.Backend, v backends.Version, d time.Duration) map[string]bool {
	t.Helper()
	tokens := map[string]bool{}
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if err := signFor(t, b, v); err != nil {
			t.Fatalf("sign at %s: %v", time.Now().Format(time.StampMilli), err)
		}
		tokens[vault.ClientToken(b)] = true
	}
	return tokens
}

// enableAuth enables an auth method at a mount unique to the test.
func (e *env) enableAuth(t *testing.T, typ string) string {
	t.Helper()
	mount := typ + "-" + keyName(t)
	e.write("sys/auth/"+mount, map[string]any{"type": typ})
	return mount
}

// TestAppRoleLogin logs in with AppRole on the real Vault, with tokens of a
// 2 s TTL and a 5 s maximum: the LifetimeWatcher renews the token, the
// backend logs in again before the maximum, and signing never fails. A
// revoked token is replaced by a new login; a wrong secret ID is
// ErrPermission. The root token in VAULT_TOKEN is never used.
func TestAppRoleLogin(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for token renewals")
	}
	e := newEnv(t)
	name := keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	e.policy("least-"+name, leastPolicy(t, "transit", name))
	mount := e.enableAuth(t, "approle")
	e.write("auth/"+mount+"/role/gateway", map[string]any{"token_policies": []string{"least-" + name}, "token_ttl": "2s", "token_max_ttl": "5s"})
	s, err := e.admin.Logical().Read("auth/" + mount + "/role/gateway/role-id")
	if err != nil {
		t.Fatal(err)
	}
	roleID := s.Data["role_id"].(string)
	secretID := e.write("auth/"+mount+"/role/gateway/secret-id", nil).Data["secret_id"].(string)
	secretFile := filepath.Join(t.TempDir(), "secret-id")
	if err := os.WriteFile(secretFile, []byte(secretID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(vault.EnvAuth, "approle")
	t.Setenv(vault.EnvAuthMount, mount)
	t.Setenv(vault.EnvRoleID, roleID)
	t.Setenv(vault.EnvSecretIDFile, secretFile)
	t.Cleanup(vault.SetReloginMinAge(0))

	b := e.open("hashivault://" + name)
	vs, err := b.Versions(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	first := vault.ClientToken(b)
	if first == "" || first == e.admin.Token() {
		t.Fatal("the backend does not use its own login token")
	}
	look, err := e.admin.Auth().Token().Lookup(first)
	if err != nil {
		t.Fatal(err)
	}
	if pol := look.Data["policies"]; !strings.Contains(strings.Join(toStrings(pol), ","), "least-"+name) || strings.Contains(strings.Join(toStrings(pol), ","), "root") {
		t.Fatalf("login token policies %v", pol)
	}

	tokens := signDuring(t, b, vs[0], 7*time.Second)
	if len(tokens) < 2 {
		t.Fatalf("one token for 7 s with a 5 s max TTL: no new login (logs:\n%s)", e.logs)
	}
	if !strings.Contains(e.logs.String(), "token renewed") {
		t.Fatalf("the token was never renewed (logs:\n%s)", e.logs)
	}
	if strings.Contains(e.logs.String(), "token was refused") {
		t.Fatalf("the token expired before the new login (logs:\n%s)", e.logs)
	}

	// Revoke the current token: the next call is refused, logs in again
	// and succeeds.
	cur := vault.ClientToken(b)
	if err := e.admin.Auth().Token().RevokeTree(cur); err != nil {
		t.Fatal(err)
	}
	if err := signFor(t, b, vs[0]); err != nil {
		t.Fatalf("after revocation: %v", err)
	}
	if vault.ClientToken(b) == cur {
		t.Fatal("still using the revoked token")
	}

	// A wrong secret ID: ErrPermission, with no secret in the error.
	if err := os.WriteFile(secretFile, []byte("not-the-secret-id"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := e.open("hashivault://" + name)
	_, err = bad.Versions(ctxTimeout(t, 5*time.Second))
	if !errors.Is(err, backends.ErrPermission) {
		t.Fatalf("wrong secret ID: %v, want ErrPermission", err)
	}
	if strings.Contains(err.Error(), "not-the-secret-id") || strings.Contains(e.logs.String(), secretID) {
		t.Fatal("the secret ID reached an error or a log line")
	}
}

func toStrings(v any) []string {
	var out []string
	if l, ok := v.([]any); ok {
		for _, x := range l {
			s, _ := x.(string)
			out = append(out, s)
		}
	}
	return out
}

// TestStaticTokenRenewal: a renewable VAULT_TOKEN with a 2 s TTL keeps
// working for 5 s because the backend renews it.
func TestStaticTokenRenewal(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for token renewals")
	}
	e := newEnv(t)
	name := keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	e.policy("least-"+name, leastPolicy(t, "transit", name))
	tok := e.token(map[string]any{"policies": []string{"least-" + name}, "ttl": "2s", "renewable": true})
	t.Setenv("VAULT_TOKEN", tok)
	b := e.open("hashivault://" + name)
	vs, err := b.Versions(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	signDuring(t, b, vs[0], 5*time.Second)
	if !strings.Contains(e.logs.String(), "token renewed") {
		t.Fatalf("no renewal logged:\n%s", e.logs)
	}
	if strings.Contains(e.logs.String(), tok) {
		t.Fatal("the token reached a log line")
	}
}

// tokenReview is a stand-in for the Kubernetes TokenReview API on
// 127.0.0.1: Vault's Kubernetes auth method asks it whether a service
// account token is valid. It accepts the tokens it has been given.
type tokenReview struct {
	srv   *httptest.Server
	mu    sync.Mutex
	valid map[string]bool
	seen  []string
}

func newTokenReview(t *testing.T) *tokenReview {
	tr := &tokenReview{valid: map[string]bool{}}
	tr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
			http.NotFound(w, r)
			return
		}
		var req struct {
			Spec struct {
				Token string `json:"token"`
			} `json:"spec"`
		}
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		tr.mu.Lock()
		ok := tr.valid[req.Spec.Token]
		tr.seen = append(tr.seen, req.Spec.Token)
		tr.mu.Unlock()
		status := map[string]any{"authenticated": false}
		if ok {
			status = map[string]any{"authenticated": true, "user": map[string]any{"username": "system:serviceaccount:kmsgate:gateway", "uid": "uid-1234"}}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": map[string]any{}, "status": status})
	}))
	t.Cleanup(tr.srv.Close)
	return tr
}

func (tr *tokenReview) accept(tok string) { tr.mu.Lock(); tr.valid[tok] = true; tr.mu.Unlock() }

func (tr *tokenReview) reviewed(tok string) bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, s := range tr.seen {
		if s == tok {
			return true
		}
	}
	return false
}

// serviceAccountToken returns a legacy Kubernetes service account JWT for
// kmsgate/gateway signed by key.
func serviceAccountToken(t *testing.T, key *ecdsa.PrivateKey, id string) string {
	t.Helper()
	tok, err := jwt.NewBuilder().
		Issuer("kubernetes/serviceaccount").
		Subject("system:serviceaccount:kmsgate:gateway").
		JwtID(id).
		Claim("kubernetes.io/serviceaccount/namespace", "kmsgate").
		Claim("kubernetes.io/serviceaccount/secret.name", "gateway-token-abcde").
		Claim("kubernetes.io/serviceaccount/service-account.name", "gateway").
		Claim("kubernetes.io/serviceaccount/service-account.uid", "uid-1234").
		Build()
	if err != nil {
		t.Fatal(err)
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(jwa.ES256, key))
	if err != nil {
		t.Fatal(err)
	}
	return string(signed)
}

// TestKubernetesLogin logs in with Vault's real Kubernetes auth method
// (v0.6.0, built into the test Vault), which checks the service account
// JWT's signature against the configured key and asks a TokenReview
// stand-in on 127.0.0.1. The token file is read again at each login, as
// the kubelet rotates projected tokens.
func TestKubernetesLogin(t *testing.T) {
	e := newEnv(t)
	name := keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	e.policy("least-"+name, leastPolicy(t, "transit", name))
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	tr := newTokenReview(t)
	mount := e.enableAuth(t, "kubernetes")
	e.write("auth/"+mount+"/config", map[string]any{
		"kubernetes_host": tr.srv.URL,
		"pem_keys":        []string{string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))},
	})
	e.write("auth/"+mount+"/role/gateway", map[string]any{
		"bound_service_account_names":      []string{"gateway"},
		"bound_service_account_namespaces": []string{"kmsgate"},
		"token_policies":                   []string{"least-" + name},
		"token_ttl":                        "1h",
	})
	jwt1 := serviceAccountToken(t, saKey, "one")
	tr.accept(jwt1)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(jwt1), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(vault.EnvAuth, "kubernetes")
	t.Setenv(vault.EnvAuthMount, mount)
	t.Setenv(vault.EnvRole, "gateway")
	t.Setenv(vault.EnvK8sTokenPath, tokenFile)
	t.Cleanup(vault.SetReloginMinAge(0))

	b := e.open("hashivault://" + name)
	vs, err := b.Versions(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatalf("versions after Kubernetes login: %v\n%s", err, e.logs)
	}
	if err := signFor(t, b, vs[0]); err != nil {
		t.Fatal(err)
	}
	if !tr.reviewed(jwt1) {
		t.Fatal("Vault did not review the service account token")
	}

	// The kubelet rotates the token; the old one stops being valid. After
	// the Vault token is revoked the backend logs in with the new file.
	jwt2 := serviceAccountToken(t, saKey, "two")
	tr.accept(jwt2)
	if err := os.WriteFile(tokenFile, []byte(jwt2), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.Auth().Token().RevokeTree(vault.ClientToken(b)); err != nil {
		t.Fatal(err)
	}
	if err := signFor(t, b, vs[0]); err != nil {
		t.Fatalf("after revocation: %v", err)
	}
	if !tr.reviewed(jwt2) {
		t.Fatal("the new login did not use the rotated service account token")
	}

	// A token of a service account the role does not allow: ErrPermission.
	t.Setenv(vault.EnvRole, "no-such-role")
	other := e.open("hashivault://" + name)
	if _, err := other.Versions(ctxTimeout(t, 5*time.Second)); !errors.Is(err, backends.ErrPermission) {
		t.Fatalf("unknown role: %v, want ErrPermission", err)
	}
	if strings.Contains(e.logs.String(), jwt2) {
		t.Fatal("the service account token reached a log line")
	}
}

// TestLoginHeaders checks, with a recording proxy in front of the real
// Vault, that VAULT_NAMESPACE reaches both the login and the calls made with
// its token, that VAULT_WRAP_TTL does not wrap any answer, and that the
// root token left in VAULT_TOKEN is never sent when a login method is set.
// (Vault 1.4 open source has no namespaces: the proxy removes the header
// after recording it.)
func TestLoginHeaders(t *testing.T) {
	e := newEnv(t)
	name := keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	e.policy("least-"+name, leastPolicy(t, "transit", name))
	mount := e.enableAuth(t, "approle")
	e.write("auth/"+mount+"/role/gateway", map[string]any{"token_policies": []string{"least-" + name}, "token_ttl": "1h"})
	s, err := e.admin.Logical().Read("auth/" + mount + "/role/gateway/role-id")
	if err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(t.TempDir(), "secret-id")
	secretID := e.write("auth/"+mount+"/role/gateway/secret-id", nil).Data["secret_id"].(string)
	if err := os.WriteFile(secretFile, []byte(secretID), 0o600); err != nil {
		t.Fatal(err)
	}
	type seen struct{ path, namespace, wrapTTL, token string }
	var mu sync.Mutex
	var requests []seen
	proxy := newFaultProxy(t, e.addr)
	proxy.observe = func(r *http.Request) {
		mu.Lock()
		requests = append(requests, seen{r.URL.Path, r.Header.Get("X-Vault-Namespace"), r.Header.Get("X-Vault-Wrap-TTL"), r.Header.Get("X-Vault-Token")})
		mu.Unlock()
		r.Header.Del("X-Vault-Namespace")
	}
	t.Setenv("VAULT_ADDR", proxy.srv.URL)
	t.Setenv("VAULT_NAMESPACE", "team-a")
	t.Setenv("VAULT_WRAP_TTL", "60s")
	t.Setenv(vault.EnvAuth, "approle")
	t.Setenv(vault.EnvAuthMount, mount)
	t.Setenv(vault.EnvRoleID, s.Data["role_id"].(string))
	t.Setenv(vault.EnvSecretIDFile, secretFile)

	b := e.open("hashivault://" + name)
	vs, err := b.Versions(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := signFor(t, b, vs[0]); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var login, keys, sign bool
	for _, r := range requests {
		if r.namespace != "team-a" || r.wrapTTL != "" {
			t.Errorf("%s: namespace %q, wrap TTL %q", r.path, r.namespace, r.wrapTTL)
		}
		switch {
		case strings.HasSuffix(r.path, "/login"):
			login = true
			if r.token != "" {
				t.Errorf("the login sent a token")
			}
		case strings.Contains(r.path, "/transit/"):
			keys = keys || strings.Contains(r.path, "/keys/")
			sign = sign || strings.Contains(r.path, "/sign/")
			if r.token == "" || r.token == e.admin.Token() {
				t.Errorf("%s: sent the root token or none", r.path)
			}
		}
	}
	if !login || !keys || !sign {
		t.Fatalf("requests seen: %+v", requests)
	}
}
