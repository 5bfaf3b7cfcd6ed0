// Package vault is the HashiCorp Vault Transit backend: it signs with the
// versions of an ecdsa-p256 Transit key and reports them as key versions.
//
// Key URI:
//
//	hashivault://NAME            the Transit key NAME on the mount "transit"
//	hashivault://NAME?mount=PATH the same key name on another Transit mount
//
// Every version of the key is a key version; its ID is "NAME/vN" (N is the
// Transit version number) and its creation time is the version's
// creation_time. Only ecdsa-p256 keys are accepted; any other key type is
// refused with backends.ErrKeyType. Versions below min_decryption_version
// are reported as disabled and are not published; published versions below
// min_encryption_version or min_available_version are reported as
// backends.StateVerifyOnly (in the JWKS, never signing).
//
// The connection comes from the standard Vault environment read by
// github.com/hashicorp/vault/api: VAULT_ADDR, VAULT_CACERT, VAULT_CAPATH,
// VAULT_CLIENT_CERT, VAULT_CLIENT_KEY, VAULT_SKIP_VERIFY,
// VAULT_TLS_SERVER_NAME and VAULT_NAMESPACE. The client library's own
// retries (VAULT_MAX_RETRIES) and response wrapping (VAULT_WRAP_TTL) are
// turned off: this package retries by itself within each call's deadline,
// and VAULT_CLIENT_TIMEOUT is replaced by those deadlines.
//
// Authentication is chosen with KMSGATE_VAULT_AUTH:
//
//	token (default)  VAULT_TOKEN; a renewable token is renewed in the background
//	kubernetes       login with the pod's service account token:
//	                 KMSGATE_VAULT_ROLE (required), KMSGATE_VAULT_K8S_TOKEN_PATH
//	                 (default /var/run/secrets/kubernetes.io/serviceaccount/token)
//	approle          login with KMSGATE_VAULT_APPROLE_ROLE_ID and the secret ID in
//	                 the file KMSGATE_VAULT_APPROLE_SECRET_ID_FILE
//
// KMSGATE_VAULT_AUTH_MOUNT names the auth mount when it is not the method's
// default ("kubernetes" or "approle"). A login token is renewed with a
// LifetimeWatcher and the backend logs in again before it can no longer be
// renewed; the service account token and the secret ID are read again at
// each login. The first login happens on the first call, so that a gateway
// can start while Vault is down.
//
// Signing calls transit/sign/NAME with prehashed=true,
// hash_algorithm=sha2-256, marshaling_algorithm=jws and the explicit
// key_version, and requires the version in the answer's "vault:vN:" prefix
// (and key_version, when the server returns it) to be the one asked for. The
// keyring verifies each signature against that version's public key, as for
// every Remote backend.
//
// Errors map to the typed errors of package backends: 403 is ErrPermission,
// a missing key is ErrNotFound, 429 is ErrThrottled, and a sealed,
// unreachable or failing (5xx) Vault is ErrUnavailable; 429, 5xx and
// connection failures are retried with backoff within the call's deadline.
//
// The least Vault policy the gateway needs is in policy.hcl: read on
// MOUNT/keys/NAME and update on MOUNT/sign/NAME. Looking up and renewing its
// own token (auth/token/lookup-self, renew-self) is allowed by Vault's
// built-in "default" policy.
//
// Tested against a real Vault v1.4.0 server (testvault/, a nested module
// started by scripts/test.d/30-vault.sh); newer servers also return
// key_version with each signature, which is checked too.
package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsgate/kmsgate/backends"
)

// Scheme is the key URI scheme of this backend.
const Scheme = "hashivault"

// DefaultMount is the Transit mount used when the URI has no mount parameter.
const DefaultMount = "transit"

// Defaults for the timing of calls to Vault.
const (
	// DefaultTimeout bounds a whole Sign or Versions call whose context has
	// no deadline of its own.
	DefaultTimeout = 10 * time.Second
	// DefaultAttemptTimeout bounds one HTTP attempt within a call, so that
	// one stuck request leaves time to retry.
	DefaultAttemptTimeout = 3 * time.Second
	// DefaultAttempts is how many times a call is made in all when it fails
	// with a retryable error (429, 5xx, sealed, connection failure).
	DefaultAttempts = 4
)

// maxIdleConns is how many idle connections to Vault are kept, so that many
// concurrent signatures reuse connections instead of opening new ones.
const maxIdleConns = 128

func init() { backends.Register(Scheme, Open) }

// Backend is one hashivault key URI. It is safe for concurrent use.
type Backend struct {
	client *api.Client
	auth   *authenticator
	name   string // Transit key name
	mount  string // Transit mount path, without slashes at either end

	keysPath string // MOUNT/keys/NAME
	signPath string // MOUNT/sign/NAME

	// caller runs every Vault request (see call): deadlines,
	// --backend-qps, retries.
	caller backends.Caller

	closeOnce sync.Once
}

// Open is the backends.Opener of the hashivault scheme. It parses the URI,
// reads the Vault environment and creates the client; it makes no call to
// Vault (the first login, if any, happens on the first call).
func Open(ctx context.Context, u *url.URL, opts backends.Options) (backends.Backend, error) {
	name, mount, err := parseURI(u)
	if err != nil {
		return nil, err
	}
	client, err := newClient()
	if err != nil {
		return nil, fmt.Errorf("vault: %s: %w", describe(name, mount), err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("backend", "vault", "key", describe(name, mount))
	auth, err := newAuthenticator(client, logger, envAuthConfig())
	if err != nil {
		return nil, fmt.Errorf("vault: %s: %w", describe(name, mount), err)
	}
	b := &Backend{
		client:   client,
		auth:     auth,
		name:     name,
		mount:    mount,
		keysPath: mount + "/keys/" + name,
		signPath: mount + "/sign/" + name,
		caller: backends.Caller{
			Kind:           "vault",
			Timeout:        DefaultTimeout,
			AttemptTimeout: DefaultAttemptTimeout,
			Retry:          backends.Retry{Attempts: DefaultAttempts},
			Limiter:        backends.NewLimiter(opts.QPS),
			Retryable:      retryable,
		},
	}
	auth.start()
	return b, nil
}

// newClient returns a Vault client configured from the standard environment,
// without the library's own retries and without response wrapping.
func newClient() (*api.Client, error) {
	if addr := os.Getenv(api.EnvVaultAddress); addr != "" {
		if u, err := url.Parse(addr); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("%w: VAULT_ADDR %q must be a URL with a scheme and host, such as https://127.0.0.1:8200", backends.ErrConfig, addr)
		}
	}
	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("%w: the Vault environment (VAULT_ADDR, VAULT_CACERT, VAULT_CAPATH, …): %v", backends.ErrConfig, cfg.Error)
	}
	cfg.MaxRetries = 0
	// No client-wide timeout (VAULT_CLIENT_TIMEOUT): every call carries its
	// own deadline. The library cancels that timeout when a raw request
	// returns, before the body is read, which throws away the connection
	// (measured: a new TCP connection per signature). The HTTP client's own
	// timeout stays as a backstop for the background token renewals.
	cfg.Timeout = 0
	cfg.HttpClient.Timeout = time.Minute
	if t, ok := cfg.HttpClient.Transport.(*http.Transport); ok {
		t.MaxIdleConns = maxIdleConns
		t.MaxIdleConnsPerHost = maxIdleConns
	}
	// Clones (made for logins) keep the namespace and VAULT_HEADERS.
	cfg.CloneHeaders = true
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: create the Vault client from the VAULT_* environment: %v", backends.ErrConfig, err)
	}
	noWrapping(client)
	return client, nil
}

// noWrapping turns off response wrapping, which VAULT_WRAP_TTL would turn on
// for every request: kmsgate needs the answers themselves.
func noWrapping(c *api.Client) {
	c.SetWrappingLookupFunc(func(string, string) string { return "" })
}

// Kind implements backends.Backend.
func (b *Backend) Kind() string { return "vault" }

// Ordering implements backends.Backend: Transit versions are ordered by
// creation time.
func (b *Backend) Ordering() backends.Ordering { return backends.ByCreation }

// Remote implements backends.Backend: Vault signs outside this process.
func (b *Backend) Remote() bool { return true }

// HonorsDeadline implements backends.DeadlineBound: every call carries the
// caller's deadline and retries stop before it, so the keyring may call Sign
// inline.
func (b *Backend) HonorsDeadline() bool { return true }

// Close stops the token renewal and releases idle connections.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.auth.stop()
		if t, ok := b.client.CloneConfig().HttpClient.Transport.(*http.Transport); ok {
			t.CloseIdleConnections()
		}
	})
	return nil
}

// String names the backend's key for logs and errors.
func (b *Backend) String() string { return describe(b.name, b.mount) }

func describe(name, mount string) string {
	if mount == DefaultMount {
		return "hashivault://" + name
	}
	return "hashivault://" + name + "?mount=" + mount
}

// call runs one Vault operation through the backend's Caller (deadlines,
// rate limit, retries). Each attempt first gets the login token (logging in
// when needed); when Vault refuses a login token, it is dropped and the
// attempt is retried once with a new login.
func (b *Backend) call(ctx context.Context, op func(ctx context.Context) error) error {
	return b.caller.Do(ctx, func(ctx context.Context) error {
		tok, err := b.auth.token(ctx)
		if err != nil {
			return err
		}
		err = op(ctx)
		if errors.Is(err, backends.ErrPermission) && b.auth.invalidate(tok) {
			return fmt.Errorf("%w (logging in again)", errors.Join(err, errRelogin))
		}
		return err
	})
}
