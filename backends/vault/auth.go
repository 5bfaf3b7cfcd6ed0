package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/api/auth/approle"
	"github.com/hashicorp/vault/api/auth/kubernetes"

	"github.com/kmsgate/kmsgate/backends"
)

// Environment variables that choose and configure the Vault auth method.
const (
	// EnvAuth chooses the auth method: "token" (default), "kubernetes" or
	// "approle".
	EnvAuth = "KMSGATE_VAULT_AUTH"
	// EnvAuthMount names the auth mount when it is not the method's default
	// ("kubernetes" or "approle").
	EnvAuthMount = "KMSGATE_VAULT_AUTH_MOUNT"
	// EnvRole is the Kubernetes auth role.
	EnvRole = "KMSGATE_VAULT_ROLE"
	// EnvK8sTokenPath is the file holding the pod's service account token.
	EnvK8sTokenPath = "KMSGATE_VAULT_K8S_TOKEN_PATH"
	// EnvRoleID is the AppRole role ID.
	EnvRoleID = "KMSGATE_VAULT_APPROLE_ROLE_ID"
	// EnvSecretIDFile is the file holding the AppRole secret ID.
	EnvSecretIDFile = "KMSGATE_VAULT_APPROLE_SECRET_ID_FILE"
)

// DefaultK8sTokenPath is where Kubernetes mounts the service account token.
const DefaultK8sTokenPath = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// Timing of logins and renewals.
const (
	// backgroundTimeout bounds one background login or token lookup.
	backgroundTimeout = 10 * time.Second
	// backoffMin and backoffMax bound the wait between failed background
	// logins or lookups.
	backoffMin = time.Second
	backoffMax = 30 * time.Second
)

// reloginMinAge: a login token refused by Vault is dropped (and the backend
// logs in again) only when it is at least this old, so that a policy that
// really denies a path cannot cause a storm of logins. A variable for tests.
var reloginMinAge = 10 * time.Second

// authConfig is the auth method configuration read from the environment.
type authConfig struct {
	Method       string // token, kubernetes, approle
	Mount        string
	Role         string
	K8sTokenPath string
	RoleID       string
	SecretIDFile string
}

func envAuthConfig() authConfig {
	return authConfig{
		Method:       strings.ToLower(strings.TrimSpace(os.Getenv(EnvAuth))),
		Mount:        strings.Trim(os.Getenv(EnvAuthMount), "/"),
		Role:         os.Getenv(EnvRole),
		K8sTokenPath: os.Getenv(EnvK8sTokenPath),
		RoleID:       os.Getenv(EnvRoleID),
		SecretIDFile: os.Getenv(EnvSecretIDFile),
	}
}

// loginFunc logs in to Vault with client (which carries no token) and
// returns the login answer.
type loginFunc func(ctx context.Context, client *api.Client) (*api.Secret, error)

// authenticator keeps the client's token valid. With a static token
// (VAULT_TOKEN) it only renews it when it is renewable. With a login method
// it logs in on first use, renews the login token with a LifetimeWatcher, and
// logs in again before the token can no longer be renewed or after Vault
// refused it.
type authenticator struct {
	client *api.Client
	method string
	login  loginFunc // nil for a static token
	log    *slog.Logger

	loginMu  sync.Mutex // serialises logins
	mu       sync.Mutex
	current  string    // the login token in use; "" when a login is needed
	loggedIn time.Time // when current was obtained
	watchGen int       // generation of the running watcher; bumped to stop it

	bg     context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newAuthenticator(client *api.Client, log *slog.Logger, cfg authConfig) (*authenticator, error) {
	a := &authenticator{client: client, log: log, method: cfg.Method}
	a.bg, a.cancel = context.WithCancel(context.Background())
	switch cfg.Method {
	case "", "token":
		a.method = "token"
		if client.Token() == "" {
			return nil, fmt.Errorf("%w: VAULT_TOKEN is unset (or set %s to kubernetes or approle)", backends.ErrPermission, EnvAuth)
		}
	case "kubernetes":
		if cfg.Role == "" {
			return nil, fmt.Errorf("%w: %s=kubernetes needs %s (the Vault role)", backends.ErrConfig, EnvAuth, EnvRole)
		}
		path := cfg.K8sTokenPath
		if path == "" {
			path = DefaultK8sTokenPath
		}
		mount := cfg.Mount
		if mount == "" {
			mount = "kubernetes"
		}
		a.login = func(ctx context.Context, c *api.Client) (*api.Secret, error) {
			// The service account token is read at every login: projected
			// tokens are rotated by the kubelet.
			m, err := kubernetes.NewKubernetesAuth(cfg.Role, kubernetes.WithServiceAccountTokenPath(path), kubernetes.WithMountPath(mount))
			if err != nil {
				return nil, fmt.Errorf("%w: read the service account token %s: %v", backends.ErrPermission, path, err)
			}
			return m.Login(ctx, c)
		}
	case "approle":
		if cfg.RoleID == "" || cfg.SecretIDFile == "" {
			return nil, fmt.Errorf("%w: %s=approle needs %s and %s", backends.ErrConfig, EnvAuth, EnvRoleID, EnvSecretIDFile)
		}
		mount := cfg.Mount
		if mount == "" {
			mount = "approle"
		}
		a.login = func(ctx context.Context, c *api.Client) (*api.Secret, error) {
			m, err := approle.NewAppRoleAuth(cfg.RoleID, &approle.SecretID{FromFile: cfg.SecretIDFile}, approle.WithMountPath(mount))
			if err != nil {
				return nil, fmt.Errorf("%w: AppRole secret ID file %s: %v", backends.ErrPermission, cfg.SecretIDFile, err)
			}
			return m.Login(ctx, c)
		}
	default:
		return nil, fmt.Errorf("%w: %s=%q: want token, kubernetes or approle", backends.ErrConfig, EnvAuth, cfg.Method)
	}
	if a.login != nil {
		// Only the login token is sent, never one left in VAULT_TOKEN.
		client.ClearToken()
	}
	return a, nil
}

// start begins the background renewal of a static token.
func (a *authenticator) start() {
	if a.login == nil {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.renewStatic()
		}()
	}
}

// stop ends the background work and waits for it.
func (a *authenticator) stop() {
	a.cancel()
	a.wg.Wait()
}

// token makes sure the client has a token, logging in if needed, and
// returns it.
func (a *authenticator) token(ctx context.Context) (string, error) {
	if a.login == nil {
		return a.client.Token(), nil
	}
	a.mu.Lock()
	tok := a.current
	a.mu.Unlock()
	if tok != "" {
		return tok, nil
	}
	a.loginMu.Lock()
	defer a.loginMu.Unlock()
	a.mu.Lock()
	tok = a.current
	a.mu.Unlock()
	if tok != "" {
		return tok, nil
	}
	return a.doLogin(ctx)
}

// doLogin logs in, installs the new token and starts its renewal. The
// caller holds loginMu.
func (a *authenticator) doLogin(ctx context.Context) (string, error) {
	if a.bg.Err() != nil {
		return "", fmt.Errorf("vault: %s login: backend closed", a.method)
	}
	lc, err := a.client.Clone()
	if err != nil {
		return "", fmt.Errorf("vault: %s login: %w", a.method, err)
	}
	// The clone reads VAULT_TOKEN and VAULT_WRAP_TTL again: a login sends
	// no token and needs an unwrapped answer.
	lc.ClearToken()
	noWrapping(lc)
	secret, err := a.login(ctx, lc)
	if err != nil {
		return "", loginError(a.method, err)
	}
	if secret == nil || secret.Auth == nil || secret.Auth.ClientToken == "" {
		return "", fmt.Errorf("vault: %s login: %w: the answer holds no token", a.method, backends.ErrPermission)
	}
	tok := secret.Auth.ClientToken
	a.client.SetToken(tok)
	a.mu.Lock()
	a.current, a.loggedIn = tok, time.Now()
	a.watchGen++
	gen := a.watchGen
	a.mu.Unlock()
	a.log.Info("vault: logged in", "method", a.method, "ttl", time.Duration(secret.Auth.LeaseDuration)*time.Second, "renewable", secret.Auth.Renewable)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.watchLogin(secret, gen)
	}()
	return tok, nil
}

// loginError maps a failed login: Vault refusing the credentials (400 for
// an unknown role or secret ID, 403) is ErrPermission, the rest as for any
// call.
func loginError(method string, err error) error {
	what := "vault: " + method + " login"
	var re *api.ResponseError
	if errors.As(err, &re) && (re.StatusCode == 400 || re.StatusCode == 401 || re.StatusCode == 403) {
		return fmt.Errorf("%s: %w: Vault answered %d: %s", what, backends.ErrPermission, re.StatusCode, strings.Join(re.Errors, "; "))
	}
	if errors.Is(err, backends.ErrPermission) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return mapError(what, err)
}

// invalidate handles Vault refusing the login token tok and reports whether
// the call should be tried again. A token that has meanwhile been replaced
// (the background login won the race against its expiry) is retried with the
// new one; the current token is dropped, so that the next call logs in
// again, unless it is younger than reloginMinAge (a fresh token that is
// refused lacks the permission). A static token is never retried.
func (a *authenticator) invalidate(tok string) bool {
	if a.login == nil || tok == "" {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.current != tok {
		return true
	}
	if time.Since(a.loggedIn) < reloginMinAge {
		return false
	}
	a.current = ""
	a.watchGen++
	a.log.Warn("vault: the login token was refused; logging in again", "method", a.method)
	return true
}

// stale reports whether gen is no longer the current watcher generation.
func (a *authenticator) stale(gen int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.watchGen != gen
}

// watchLogin renews the login token of secret until it can no longer be
// renewed, then logs in again in the background (retrying with backoff)
// while the old token stays in use. It returns when the authenticator stops
// or a newer login replaces this one.
func (a *authenticator) watchLogin(secret *api.Secret, gen int) {
	if a.watch(secret, gen) {
		return
	}
	for wait := backoffMin; ; wait = min(2*wait, backoffMax) {
		if a.stale(gen) || a.bg.Err() != nil {
			return
		}
		a.loginMu.Lock()
		if a.stale(gen) {
			a.loginMu.Unlock()
			return
		}
		ctx, cancel := context.WithTimeout(a.bg, backgroundTimeout)
		_, err := a.doLogin(ctx)
		cancel()
		a.loginMu.Unlock()
		if err == nil {
			return
		}
		a.log.Warn("vault: login before the token expires failed; retrying", "method", a.method, "err", err.Error())
		if !sleep(a.bg, jitter(wait)) {
			return
		}
	}
}

// watch runs a LifetimeWatcher on secret's token. It returns true when the
// watching should end for good (the authenticator stopped or generation gen
// was replaced) and false when the token can no longer be renewed.
func (a *authenticator) watch(secret *api.Secret, gen int) bool {
	if !secret.Auth.Renewable && secret.Auth.LeaseDuration <= 0 {
		// A token without expiry (such as a root token): nothing to do.
		return true
	}
	w, err := a.client.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: secret})
	if err != nil {
		a.log.Error("vault: cannot watch the token's lifetime", "err", err.Error())
		return true
	}
	go w.Start()
	defer w.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-a.bg.Done():
			return true
		case err := <-w.DoneCh():
			if err != nil {
				a.log.Warn("vault: token renewal failed", "method", a.method, "err", err.Error())
			} else {
				a.log.Info("vault: the token reached the end of its renewable lifetime", "method", a.method)
			}
			return a.stale(gen)
		case r := <-w.RenewCh():
			if r != nil && r.Secret != nil && r.Secret.Auth != nil {
				a.log.Debug("vault: token renewed", "method", a.method, "ttl", time.Duration(r.Secret.Auth.LeaseDuration)*time.Second)
			}
		case <-tick.C:
			if a.stale(gen) {
				return true
			}
		}
	}
}

// renewStatic renews a static token (VAULT_TOKEN) when it is renewable. It
// looks the token up, retrying with backoff while Vault cannot be reached,
// and runs a LifetimeWatcher on it; when the token can no longer be renewed
// it logs when the token expires and stops.
func (a *authenticator) renewStatic() {
	for wait := backoffMin; ; wait = min(2*wait, backoffMax) {
		ctx, cancel := context.WithTimeout(a.bg, backgroundTimeout)
		s, err := a.client.Auth().Token().LookupSelfWithContext(ctx)
		cancel()
		if a.bg.Err() != nil {
			return
		}
		if err == nil && s != nil {
			ttl, renewable, err := tokenLease(s)
			if err != nil {
				a.log.Warn("vault: VAULT_TOKEN lookup", "err", err.Error())
				return
			}
			if !renewable || ttl <= 0 {
				if ttl > 0 {
					a.log.Warn("vault: VAULT_TOKEN is not renewable and expires", "in", ttl)
				}
				return
			}
			tok := a.client.Token()
			secret := &api.Secret{Auth: &api.SecretAuth{ClientToken: tok, Renewable: true, LeaseDuration: int(ttl / time.Second)}}
			if !a.watch(secret, 0) {
				a.log.Warn("vault: VAULT_TOKEN can no longer be renewed; provide a new token before it expires")
			}
			return
		}
		err = mapError("vault: look up VAULT_TOKEN", err)
		if errors.Is(err, backends.ErrPermission) {
			// Either the token is not valid (signing will fail with the
			// same error) or its policies lack auth/token/lookup-self,
			// which the "default" policy grants.
			a.log.Warn("vault: cannot look up VAULT_TOKEN; it will not be renewed", "err", err.Error())
			return
		}
		a.log.Debug("vault: VAULT_TOKEN lookup failed; retrying", "err", err.Error())
		if !sleep(a.bg, jitter(wait)) {
			return
		}
	}
}

// tokenLease returns the remaining TTL and renewability from a token
// lookup answer.
func tokenLease(s *api.Secret) (time.Duration, bool, error) {
	var ttl int64
	switch v := s.Data["ttl"].(type) {
	case json.Number:
		n, err := v.Int64()
		if err != nil {
			return 0, false, fmt.Errorf("ttl %q: %w", v, err)
		}
		ttl = n
	case float64:
		ttl = int64(v)
	case nil:
	default:
		return 0, false, fmt.Errorf("ttl has type %T", v)
	}
	renewable, _ := s.Data["renewable"].(bool)
	return time.Duration(ttl) * time.Second, renewable, nil
}

func jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// sleep waits d or until ctx ends; it reports whether the whole wait passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
