// Package gcpkms is the Google Cloud KMS backend: it signs with EC P-256
// asymmetric-sign CryptoKeyVersions and reports them as key versions.
//
// Key URIs:
//
//	gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K
//	    every version of the CryptoKey is a key version
//	gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N
//	    exactly that version
//
// The only query parameter is endpoint=HOST:PORT, which names a non-default
// endpoint (a Private Service Connect or VPC-SC endpoint, or a test server).
// Without it, the environment variable KMSGATE_GCPKMS_ENDPOINT is used when
// set, and otherwise the public endpoint. Credentials are Application Default
// Credentials over TLS, except for a loopback endpoint (127.0.0.0/8, ::1,
// localhost), which is dialled without TLS and without credentials, as test
// servers are.
//
// Every answer is checked for integrity the way Cloud KMS documents it:
// requests carry digest_crc32c, and the answer must confirm it with
// verified_digest_crc32c, carry a matching signature_crc32c (or pem_crc32c
// for public keys) and name the very version asked for. A failed check is
// retried a bounded number of times within the caller's deadline, then
// reported as backends.ErrIntegrity. The keyring verifies each signature
// against the version's public key before a token leaves the gateway, as for
// every Remote backend.
//
// Calls never use the client library's own retry policy, which can hold a
// call for up to 60 s: each attempt gets a deadline that fits the caller's,
// and a context deadline that passes is reported as backends.ErrUnavailable.
package gcpkms

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kmsgate/kmsgate/backends"
)

// Scheme is the key URI scheme of this backend.
const Scheme = "gcpkms"

// EndpointEnv names the environment variable that overrides the Cloud KMS
// endpoint when the key URI has no endpoint parameter.
const EndpointEnv = "KMSGATE_GCPKMS_ENDPOINT"

// Defaults for the timing of calls to Cloud KMS.
const (
	// DefaultTimeout bounds a whole Sign or Versions call whose context has
	// no deadline of its own.
	DefaultTimeout = 10 * time.Second
	// DefaultAttemptTimeout bounds one attempt within a call, so that one
	// stuck call leaves time to retry.
	DefaultAttemptTimeout = 3 * time.Second
	// DefaultAttempts is how many times a call is made in all when it fails
	// with a retryable error (unavailable, throttled, integrity mismatch).
	DefaultAttempts = 3
	// DefaultPollInterval is how often a PENDING_GENERATION version is
	// polled in the background.
	DefaultPollInterval = 5 * time.Second
	// DefaultPollFor is how long a PENDING_GENERATION version is polled
	// before the poller gives up (the next refresh starts a new one).
	DefaultPollFor = 30 * time.Minute
)

// maxVersions bounds the versions read from one listing, so that a service
// that keeps returning pages cannot hold a refresh forever.
const maxVersions = 10000

func init() { backends.Register(Scheme, Open) }

var (
	keyPathRE     = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$`)
	versionPathRE = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+/cryptoKeyVersions/[1-9][0-9]*$`)
)

// Backend is one gcpkms key URI. It is safe for concurrent use.
type Backend struct {
	client   *kms.KeyManagementClient
	log      *slog.Logger
	key      string // CryptoKey resource name
	pinned   string // CryptoKeyVersion resource name when the URI names one
	endpoint string // "" for the default endpoint

	// caller runs every RPC (see call): deadlines, --backend-qps, retries.
	caller       backends.Caller
	pollInterval time.Duration
	pollFor      time.Duration

	keyChecked atomic.Bool // GetCryptoKey confirmed an ASYMMETRIC_SIGN key

	mu      sync.Mutex
	closed  bool
	pubs    map[string]*ecdsa.PublicKey // public keys by version name; a version's key never changes
	polling map[string]bool             // PENDING_GENERATION versions with a poller running
	warned  map[string]bool             // versions already warned about (other algorithms)

	stats stats

	bg     context.Context
	stop   context.CancelFunc
	pollWG sync.WaitGroup
}

// reconnect is how the gRPC connection to Cloud KMS is made again after it
// failed. gRPC's default backoff grows to 120 s between attempts, so after
// an outage of a minute the backend would stay away for up to two more,
// each call failing at once; capped at 1 s, signing and refreshing come
// back within a second of the endpoint. MinConnectTimeout bounds one
// attempt at a connection whose SYN gets no answer (default 20 s).
var reconnect = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
	MinConnectTimeout: 5 * time.Second,
}

// Open is the backends.Opener of the gcpkms scheme. It parses the URI and
// creates the client; it makes no call to Cloud KMS.
func Open(ctx context.Context, u *url.URL, opts backends.Options) (backends.Backend, error) {
	key, pinned, endpoint, err := parseURI(u)
	if err != nil {
		return nil, err
	}
	if endpoint == "" {
		endpoint = os.Getenv(EndpointEnv)
		if endpoint != "" {
			if err := checkEndpoint(endpoint); err != nil {
				return nil, fmt.Errorf("gcpkms: %s: %w: %v", EndpointEnv, backends.ErrInvalidURI, err)
			}
		}
	}
	// kmsgate exports its own metrics and sets up no OpenTelemetry
	// provider, so the client's default instrumentation would only cost
	// CPU on every call.
	copts := []option.ClientOption{option.WithTelemetryDisabled(), option.WithGRPCDialOption(grpc.WithConnectParams(reconnect))}
	if endpoint != "" {
		copts = append(copts, option.WithEndpoint(endpoint))
		if isLoopback(endpoint) {
			copts = append(copts,
				option.WithoutAuthentication(),
				option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
		}
	}
	client, err := kms.NewKeyManagementClient(ctx, copts...)
	if err != nil {
		return nil, fmt.Errorf("gcpkms: %s: create client (Application Default Credentials): %w: %w", describe(key, pinned), backends.ErrPermission, err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	bg, stop := context.WithCancel(context.Background())
	b := &Backend{
		client:   client,
		log:      logger.With("backend", Scheme),
		key:      key,
		pinned:   pinned,
		endpoint: endpoint,
		caller: backends.Caller{
			Kind:           Scheme,
			Timeout:        DefaultTimeout,
			AttemptTimeout: DefaultAttemptTimeout,
			Retry:          backends.Retry{Attempts: DefaultAttempts, Base: 20 * time.Millisecond, Max: 500 * time.Millisecond},
			Limiter:        backends.NewLimiter(opts.QPS),
			Retryable:      retryable,
		},
		pollInterval: DefaultPollInterval,
		pollFor:      DefaultPollFor,
		pubs:         map[string]*ecdsa.PublicKey{},
		polling:      map[string]bool{},
		warned:       map[string]bool{},
		bg:           bg,
		stop:         stop,
	}
	return b, nil
}

// parseURI splits a gcpkms URI into the CryptoKey name, the pinned version
// name ("" for every version) and the endpoint override.
func parseURI(u *url.URL) (key, pinned, endpoint string, err error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("key %q: %w: %s", backends.Redact(u.String()), backends.ErrInvalidURI, fmt.Sprintf(format, args...))
	}
	if u.Scheme != Scheme {
		return "", "", "", bad("scheme %q, want %s", u.Scheme, Scheme)
	}
	if u.User != nil || u.Port() != "" || u.Opaque != "" || u.Fragment != "" {
		return "", "", "", bad("want gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K[/cryptoKeyVersions/N][?endpoint=HOST:PORT]")
	}
	// gcpkms://projects/… puts "projects" in the host; gcpkms:///projects/…
	// is accepted too.
	name := strings.TrimPrefix(u.Host+u.Path, "/")
	switch {
	case keyPathRE.MatchString(name):
		key = name
	case versionPathRE.MatchString(name):
		pinned = name
		key = name[:strings.LastIndex(name, "/cryptoKeyVersions/")]
	default:
		return "", "", "", bad("%q is not projects/P/locations/L/keyRings/R/cryptoKeys/K or …/cryptoKeys/K/cryptoKeyVersions/N", name)
	}
	q := u.Query()
	for k, vs := range q {
		if k != "endpoint" {
			return "", "", "", bad("unknown parameter %q (the only one is endpoint)", k)
		}
		if len(vs) != 1 {
			return "", "", "", bad("endpoint given %d times", len(vs))
		}
		endpoint = vs[0]
		if err := checkEndpoint(endpoint); err != nil {
			return "", "", "", bad("endpoint: %v", err)
		}
	}
	return key, pinned, endpoint, nil
}

func checkEndpoint(ep string) error {
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return fmt.Errorf("%q is not HOST:PORT: %v", ep, err)
	}
	if host == "" || port == "" {
		return fmt.Errorf("%q is not HOST:PORT", ep)
	}
	return nil
}

// isLoopback reports whether the endpoint's host is a loopback address.
func isLoopback(ep string) bool {
	host, _, err := net.SplitHostPort(ep)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func describe(key, pinned string) string {
	if pinned != "" {
		return pinned
	}
	return key
}

// Kind implements backends.Backend.
func (b *Backend) Kind() string { return Scheme }

// Ordering implements backends.Backend: versions rotate by creation time.
func (b *Backend) Ordering() backends.Ordering { return backends.ByCreation }

// Remote implements backends.Backend: Cloud KMS signs outside the process.
func (b *Backend) Remote() bool { return true }

// HonorsDeadline implements backends.DeadlineBound: every call carries the
// caller's deadline and retries stop before it, so the keyring may call Sign
// inline.
func (b *Backend) HonorsDeadline() bool { return true }

// Name returns the CryptoKey or pinned CryptoKeyVersion resource name.
func (b *Backend) Name() string { return describe(b.key, b.pinned) }

// Close stops the background pollers and closes the connection.
func (b *Backend) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.stop()
	b.pollWG.Wait()
	if err := b.client.Close(); err != nil {
		return fmt.Errorf("gcpkms: close %s: %w", b.Name(), err)
	}
	return nil
}

// retryable reports whether a failed call is worth another attempt: the
// service was unavailable, throttled us, or gave an answer that failed an
// integrity check.
func retryable(err error) bool {
	return errors.Is(err, backends.ErrIntegrity) || errors.Is(err, backends.ErrUnavailable) || errors.Is(err, backends.ErrThrottled)
}
