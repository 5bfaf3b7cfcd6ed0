// Package azurekv is the Azure Key Vault backend: it signs with EC P-256 keys
// of an Azure Key Vault or Managed HSM (key types EC and EC-HSM, with the
// sign operation) and reports their versions as key versions.
//
// Key URIs:
//
//	azurekv://VAULT.vault.azure.net/keys/NAME
//	    every version of key NAME is a key version
//	azurekv://VAULT.vault.azure.net/keys/NAME/VERSION
//	    exactly that version
//	azurekv://POOL.managedhsm.azure.net/keys/NAME[/VERSION]
//	    the same for a Managed HSM
//
// The sovereign clouds' hosts (vault.azure.cn, vault.usgovcloudapi.net and
// their managedhsm counterparts) are accepted too.
//
// Credentials come from azidentity's DefaultAzureCredential: environment
// (AZURE_CLIENT_ID with a secret or certificate), workload identity (AKS),
// managed identity, then the Azure CLI and Developer CLI. The token's scope
// and tenant come from the vault's bearer challenge, as the SDK does it.
//
// The only query parameter is endpoint=https://HOST[:PORT], which sends every
// request to another base URL instead of https://VAULT…/ (an emulator, a test
// server or a proxy). Without it, the environment variable
// KMSGATE_AZUREKV_ENDPOINT is used when set. With an endpoint, the SDK's
// check that the challenge's resource matches the vault's domain is off
// (the endpoint's host is not under it). KMSGATE_AZUREKV_CACERT names a PEM
// file of extra certificate authorities to trust for the vault's TLS, and
// KMSGATE_AZUREKV_TOKEN a fixed bearer token, accepted only when the endpoint
// is on this machine (127.0.0.0/8, ::1, localhost): emulators and test
// servers have no identity provider to get a token from.
//
// Versions come from the key's version list (every page). A version is
// usable when it is enabled, its exp (if any) has not passed and its nbf (if
// any) has come; one whose nbf is still ahead is published but does not sign
// (backends.StateVerifyOnly); a disabled or expired one is left out of the
// key set. The key type must be EC or EC-HSM on P-256 with the sign
// operation. Signing sends ES256 over the digest to the explicit version;
// the answer must name that version in its kid and carry a 64-byte R||S
// signature, and the keyring verifies it against the version's public key
// before a token leaves the gateway.
//
// The SDK's own retries are off: each attempt gets a deadline that fits the
// caller's, throttling (429, honouring Retry-After when it fits the
// deadline), 5xx answers and timeouts are retried a bounded number of times
// within the caller's deadline, and the failures map to the typed errors.
package azurekv

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/kmsgate/kmsgate/backends"
)

// Scheme is the key URI scheme of this backend.
const Scheme = "azurekv"

// Environment variables read by Open.
const (
	// EndpointEnv overrides the base URL requests go to when the key URI
	// has no endpoint parameter.
	EndpointEnv = "KMSGATE_AZUREKV_ENDPOINT"
	// CACertEnv names a PEM file of extra certificate authorities trusted
	// for the vault's (or the endpoint's) TLS certificate.
	CACertEnv = "KMSGATE_AZUREKV_CACERT"
	// TokenEnv is a fixed bearer token, accepted only with a loopback
	// endpoint (emulators and test servers).
	TokenEnv = "KMSGATE_AZUREKV_TOKEN"
)

// Defaults for the timing of calls to Key Vault.
const (
	// DefaultTimeout bounds a whole Sign or Versions call whose context has
	// no deadline of its own.
	DefaultTimeout = 10 * time.Second
	// DefaultAttemptTimeout bounds one attempt within a call, so that a
	// stuck attempt leaves time to retry within the caller's deadline.
	DefaultAttemptTimeout = 2 * time.Second
	// DefaultAttempts is how many calls are made in all when they fail with
	// a retryable error (throttling, 5xx, timeout).
	DefaultAttempts = 4
)

// maxVersions bounds the versions read from one listing, so that a service
// that keeps returning pages cannot hold a refresh forever.
const maxVersions = 10000

// maxIdleConns is how many idle connections the HTTP client keeps to the
// vault: enough for the concurrency a gateway signs at, so that signing does
// not open a new connection per call.
const maxIdleConns = 256

func init() { backends.Register(Scheme, Open) }

// vaultSuffixes are the DNS suffixes of Key Vault and Managed HSM hosts in
// the public and sovereign clouds.
var vaultSuffixes = []string{
	".vault.azure.net", ".managedhsm.azure.net",
	".vault.azure.cn", ".managedhsm.azure.cn",
	".vault.usgovcloudapi.net", ".managedhsm.usgovcloudapi.net",
}

var (
	// A vault name is 3-24 letters, digits and dashes; a Managed HSM name
	// is up to 24 as well.
	vaultLabelRE = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9-]{1,22}[A-Za-z0-9])$`)
	// Key names are 1-127 letters, digits and dashes.
	keyNameRE = regexp.MustCompile(`^[A-Za-z0-9-]{1,127}$`)
	// Versions are 32 hexadecimal digits.
	versionRE = regexp.MustCompile(`^[0-9A-Fa-f]{32}$`)
)

// Backend is one azurekv key URI. It is safe for concurrent use.
type Backend struct {
	client *azkeys.Client
	http   *http.Client
	log    *slog.Logger
	caller *backends.Caller

	host     string // the vault's host from the URI
	base     string // the base URL requests go to (https://HOST or the endpoint)
	baseHost string // base's host[:port], without the default port, as kids name it
	name     string // key name
	pinned   string // version when the URI names one
	display  string // the URI without its query, for messages

	mu     sync.Mutex
	info   map[string]keyInfo // by version; refreshed when attributes.updated changes
	warned map[string]bool
}

// Open is the backends.Opener of the azurekv scheme. It parses the URI,
// sets up the credential and the client; it makes no call to Azure.
func Open(ctx context.Context, u *url.URL, opts backends.Options) (backends.Backend, error) {
	t, err := parseURI(u)
	if err != nil {
		return nil, err
	}
	if t.endpoint == "" {
		if ep := os.Getenv(EndpointEnv); ep != "" {
			if t.endpoint, err = checkEndpoint(ep); err != nil {
				return nil, fmt.Errorf("azurekv: %s: %w: %v", EndpointEnv, backends.ErrConfig, err)
			}
		}
	}
	base := "https://" + t.host
	if t.endpoint != "" {
		base = t.endpoint
	}
	tr, err := transport()
	if err != nil {
		return nil, err
	}
	httpClient := &http.Client{Transport: tr}
	cred, err := credential(t.endpoint, httpClient)
	if err != nil {
		return nil, err
	}
	client, err := azkeys.NewClient(base, cred, &azkeys.ClientOptions{
		ClientOptions: azcore.ClientOptions{
			// The backend's call loop owns retries, within the deadline.
			Retry:     policy.RetryOptions{MaxRetries: -1},
			Transport: httpClient,
			Telemetry: policy.TelemetryOptions{ApplicationID: "kmsgate"},
		},
		// The challenge names the vault's domain (vault.azure.net), which an
		// endpoint override is not under.
		DisableChallengeResourceVerification: t.endpoint != "",
	})
	if err != nil {
		return nil, fmt.Errorf("azurekv: %s: create client: %w", t.display, err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	bu, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("azurekv: %s: %w: base URL %q: %v", t.display, backends.ErrInvalidURI, base, err)
	}
	log := logger.With("backend", Scheme)
	return &Backend{
		client: client,
		http:   httpClient,
		log:    log,
		caller: &backends.Caller{
			Kind: Scheme, Timeout: DefaultTimeout, AttemptTimeout: DefaultAttemptTimeout,
			Retry:    backends.Retry{Attempts: DefaultAttempts, Base: 25 * time.Millisecond, Max: time.Second},
			Limiter:  backends.NewLimiter(opts.QPS),
			Classify: classify,
			After:    retryAfter,
			OnFailure: func(err error, retry bool) {
				log.Debug("Key Vault call failed", "kind", backends.Kind(err), "retryable", retry, "err", err.Error())
			},
		},
		host:     t.host,
		base:     base,
		baseHost: hostPort(bu),
		name:     t.name,
		pinned:   t.version,
		display:  t.display,
		info:     map[string]keyInfo{},
		warned:   map[string]bool{},
	}, nil
}

// target is a parsed key URI.
type target struct {
	host, name, version, endpoint, display string
}

// parseURI checks an azurekv URI and splits it into its parts.
func parseURI(u *url.URL) (target, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("key %q: %w: %s", backends.Redact(u.String()), backends.ErrInvalidURI, fmt.Sprintf(format, args...))
	}
	const want = "want azurekv://VAULT.vault.azure.net/keys/NAME[/VERSION] (or a Managed HSM host, NAME.managedhsm.azure.net)"
	if u.Scheme != Scheme {
		return target{}, bad("scheme %q, want %s", u.Scheme, Scheme)
	}
	if u.User != nil || u.Opaque != "" || u.Fragment != "" || u.Port() != "" {
		return target{}, bad("%s", want)
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return target{}, bad("no vault host: %s", want)
	}
	ok := false
	for _, s := range vaultSuffixes {
		if label, found := strings.CutSuffix(host, s); found && vaultLabelRE.MatchString(label) {
			ok = true
		}
	}
	if !ok {
		return target{}, bad("%q is not a Key Vault or Managed HSM host (VAULT.vault.azure.net, NAME.managedhsm.azure.net or a sovereign cloud's); use ?endpoint= for an emulator", host)
	}
	parts := strings.Split(strings.TrimPrefix(u.EscapedPath(), "/"), "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] != "keys" {
		return target{}, bad("path %q: %s", u.EscapedPath(), want)
	}
	t := target{host: host, name: parts[1]}
	if !keyNameRE.MatchString(t.name) {
		return target{}, bad("key name %q: want 1-127 letters, digits and dashes", t.name)
	}
	if len(parts) == 3 {
		t.version = strings.ToLower(parts[2])
		if !versionRE.MatchString(t.version) {
			return target{}, bad("version %q: want 32 hexadecimal digits", parts[2])
		}
	}
	for k, vs := range u.Query() {
		if k != "endpoint" {
			return target{}, bad("unknown parameter %q (the only one is endpoint)", k)
		}
		if len(vs) != 1 {
			return target{}, bad("endpoint given %d times", len(vs))
		}
		ep, err := checkEndpoint(vs[0])
		if err != nil {
			return target{}, bad("endpoint: %v", err)
		}
		t.endpoint = ep
	}
	t.display = "azurekv://" + host + "/keys/" + t.name
	if t.version != "" {
		t.display += "/" + t.version
	}
	return t, nil
}

// checkEndpoint checks an endpoint override, an https base URL without a
// path, and returns it without a trailing slash.
func checkEndpoint(ep string) (string, error) {
	e, err := url.Parse(ep)
	if err != nil {
		return "", fmt.Errorf("%q is not a URL: %v", ep, err)
	}
	if e.Scheme != "https" {
		return "", fmt.Errorf("%q: want https://HOST[:PORT] (Key Vault clients send bearer tokens only over https)", ep)
	}
	if e.Host == "" || e.User != nil || strings.Trim(e.Path, "/") != "" || e.RawQuery != "" || e.Fragment != "" {
		return "", fmt.Errorf("%q: want https://HOST[:PORT] with no path, query or user", ep)
	}
	return "https://" + e.Host, nil
}

// isLoopback reports whether an endpoint URL's host is on this machine.
func isLoopback(endpoint string) bool {
	e, err := url.Parse(endpoint)
	if err != nil {
		return false
	}
	host := e.Hostname()
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// transport is an HTTP transport with room for concurrent signing and the
// extra certificate authorities of KMSGATE_AZUREKV_CACERT.
func transport() (*http.Transport, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = maxIdleConns
	tr.MaxIdleConnsPerHost = maxIdleConns
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if path := os.Getenv(CACertEnv); path != "" {
		pem, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("azurekv: %s: %w: %v", CACertEnv, backends.ErrConfig, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("azurekv: %s: %w: %s holds no PEM certificate", CACertEnv, backends.ErrConfig, path)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return tr, nil
}

// credential returns the token credential: a fixed token from
// KMSGATE_AZUREKV_TOKEN for a loopback endpoint, otherwise
// DefaultAzureCredential.
func credential(endpoint string, httpClient *http.Client) (azcore.TokenCredential, error) {
	if tok := os.Getenv(TokenEnv); tok != "" {
		if endpoint == "" || !isLoopback(endpoint) {
			return nil, fmt.Errorf("azurekv: %w: %s is accepted only with an endpoint on this machine (?endpoint=https://127.0.0.1:PORT or %s); real vaults take tokens from DefaultAzureCredential", backends.ErrConfig, TokenEnv, EndpointEnv)
		}
		return markedCredential{staticToken(tok)}, nil
	}
	cred, err := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{
		ClientOptions: azcore.ClientOptions{Transport: httpClient},
	})
	if err != nil {
		return nil, fmt.Errorf("azurekv: %w: DefaultAzureCredential: %w", backends.ErrPermission, err)
	}
	return markedCredential{cred}, nil
}

// staticToken is a fixed bearer token for emulators and test servers.
type staticToken string

// GetToken implements azcore.TokenCredential.
func (s staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// Kind implements backends.Backend.
func (b *Backend) Kind() string { return Scheme }

// Ordering implements backends.Backend: versions rotate by creation time.
func (b *Backend) Ordering() backends.Ordering { return backends.ByCreation }

// Remote implements backends.Backend: Key Vault signs outside the process.
func (b *Backend) Remote() bool { return true }

// HonorsDeadline implements backends.DeadlineBound: every call carries the
// caller's deadline and retries stop before it, so the keyring may call Sign
// inline.
func (b *Backend) HonorsDeadline() bool { return true }

// Name returns the key URI without its query.
func (b *Backend) Name() string { return b.display }

// Close implements backends.Backend; it drops idle connections.
func (b *Backend) Close() error {
	b.http.CloseIdleConnections()
	return nil
}

// withTimeout gives ctx the backend's default deadline when it has none.
func (b *Backend) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return b.caller.WithTimeout(ctx)
}

// keyInfo is what GetKey told about one version: its public key, or why it
// cannot sign.
type keyInfo struct {
	updated time.Time        // attributes.updated when read
	pub     *ecdsa.PublicKey // nil when unusable
	err     error            // why the version cannot sign (ErrKeyType), nil when pub is set
}
