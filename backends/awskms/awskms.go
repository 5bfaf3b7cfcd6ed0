// Package awskms is the AWS KMS backend: it signs with ECC_NIST_P256
// SIGN_VERIFY KMS keys and reports them as key versions.
//
// Key URIs:
//
//	awskms:///alias/NAME                 the key the alias points to
//	awskms:///KEY-ID                     one key, by id
//	awskms:///arn:aws:kms:R:A:key/ID     one key, by ARN
//	awskms:///arn:aws:kms:R:A:alias/NAME the key an alias ARN points to
//	awskms:///alias/PREFIX/              every key with an alias under the
//	                                     prefix is one key version
//
// AWS has no versions of asymmetric keys, so rotation through an alias
// prefix is a new key with a new alias (alias/jwt/2025-06 next to
// alias/jwt/2025-01); the gateway orders the keys by creation time.
//
// Credentials and region come from the AWS SDK's default chain (environment,
// shared config and credentials files, web identity, container and instance
// roles). ?region= or the region of an ARN overrides the region. A URI host
// (awskms://127.0.0.1:4566/…) or ?endpoint=https://… names a non-default
// endpoint, for emulators and private endpoints; a host on this machine is
// spoken to over plain http, any other over https.
//
// Every signature is made with MessageType DIGEST and ECDSA_SHA_256 by the
// explicit key ARN of the version (never through an alias), the answer must
// name that ARN; the keyring verifies each signature against the version's
// public key, fetched on refresh, before it is used. Signing makes exactly one
// call per attempt: ListAliases, DescribeKey and GetPublicKey are made only by
// Versions. Calls are retried, within the caller's deadline, only on
// throttling, 5xx answers and timeouts; the SDK's own retryer is off.
package awskms

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go/logging"

	"github.com/kmsgate/kmsgate/backends"
)

// Scheme is the key URI scheme of this backend.
const Scheme = "awskms"

// Defaults for the timing of calls to AWS KMS.
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

// maxAliases bounds the aliases read by one listing, so that a service that
// keeps returning pages cannot hold a refresh forever.
const maxAliases = 10000

// maxIdleConns is how many idle connections the HTTP client keeps to the
// endpoint: enough for the concurrency a gateway signs at, so that signing
// does not open a new connection per call.
const maxIdleConns = 256

func init() { backends.Register(Scheme, Open) }

// Backend is one awskms key URI. It is safe for concurrent use.
type Backend struct {
	client *kms.Client
	log    *slog.Logger
	target target
	// caller runs every AWS call: deadlines, --backend-qps, retries. Each
	// op makes exactly one SDK call and returns its error unclassified.
	caller backends.Caller

	mu   sync.Mutex                                  // serialises writers of pubs
	pubs atomic.Pointer[map[string]*ecdsa.PublicKey] // public keys by key ARN; a key's public key never changes
}

// Open is the backends.Opener of the awskms scheme. It parses the URI and
// creates the client; it makes no call to AWS.
func Open(ctx context.Context, u *url.URL, opts backends.Options) (backends.Backend, error) {
	t, err := parseURI(u)
	if err != nil {
		return nil, err
	}
	load := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if t.region != "" {
		load = append(load, config.WithRegion(t.region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, load...)
	if err != nil {
		return nil, fmt.Errorf("awskms: %s: load the AWS configuration: %w", t, err)
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("awskms: %s: %w: no AWS region: add ?region=REGION to the URI, use an ARN, or set AWS_REGION or a profile's region", t, backends.ErrInvalidURI)
	}
	// The SDK's transport (proxy from the environment, TLS 1.2+, dial
	// timeouts, AWS_CA_BUNDLE) with room for concurrent signing.
	tr := awshttp.NewBuildableClient().GetTransport()
	if bc, ok := cfg.HTTPClient.(*awshttp.BuildableClient); ok {
		tr = bc.GetTransport()
	}
	tr.MaxIdleConns = maxIdleConns
	tr.MaxIdleConnsPerHost = maxIdleConns
	cfg.HTTPClient = &http.Client{Transport: inMemoryBodies{tr}}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("backend", Scheme)
	// The SDK's own warnings go to the gateway's structured log, not to
	// stderr; request and response logging (ClientLogMode) stays off.
	cfg.Logger = sdkLogger{logger}
	cfg.ClientLogMode = 0
	if cfg.Credentials != nil {
		cfg.Credentials = credentialsProvider{cfg.Credentials} // the default chain's cache stays inside
	}
	client := kms.NewFromConfig(cfg, func(o *kms.Options) {
		if t.endpoint != "" {
			o.BaseEndpoint = aws.String(t.endpoint)
		}
		o.Retryer = aws.NopRetryer{}
		o.RetryMaxAttempts = 0
	})
	b := &Backend{client: client, log: logger, target: t}
	b.caller = backends.Caller{
		Kind:           Scheme,
		Timeout:        DefaultTimeout,
		AttemptTimeout: DefaultAttemptTimeout,
		Retry:          backends.Retry{Attempts: DefaultAttempts, Base: 25 * time.Millisecond, Max: time.Second},
		Limiter:        backends.NewLimiter(opts.QPS),
		Classify:       classify,
		Retryable:      retryable,
		OnFailure: func(err error, retryable bool) {
			b.log.Debug("AWS KMS call failed", "kind", backends.Kind(err), "retryable", retryable, "err", err.Error())
		},
	}
	b.pubs.Store(&map[string]*ecdsa.PublicKey{})
	if t.endpoint != "" {
		if e, _ := url.Parse(t.endpoint); e.Scheme == "http" && !isLoopbackURL(t.endpoint) {
			b.log.Warn("AWS KMS endpoint is plain http to another machine: requests, including any session token, are not encrypted", "endpoint", t.endpoint)
		}
	}
	return b, nil
}

// Kind implements backends.Backend.
func (b *Backend) Kind() string { return Scheme }

// Ordering implements backends.Backend: keys are ordered by creation time.
func (b *Backend) Ordering() backends.Ordering { return backends.ByCreation }

// Remote implements backends.Backend.
func (b *Backend) Remote() bool { return true }

// HonorsDeadline implements backends.DeadlineBound: every call carries the
// caller's deadline and retries stop before it, so the keyring may call Sign
// inline.
func (b *Backend) HonorsDeadline() bool { return true }

// Close implements backends.Backend; it drops idle connections.
func (b *Backend) Close() error {
	if c, ok := b.client.Options().HTTPClient.(*http.Client); ok {
		c.CloseIdleConnections()
	}
	return nil
}

// maxRequestBody bounds the request bodies inMemoryBodies copies; KMS
// requests of this backend are a few hundred bytes.
const maxRequestBody = 1 << 20

// inMemoryBodies is an http.RoundTripper that hands the transport a copy of
// the request body held in memory. The SDK closes the body it passed as soon
// as the response headers arrive; when the transport still reads it then (to
// check for data past Content-Length), the read fails and the transport
// closes the connection under the response being read, which shows up as
// "use of closed network connection" in a 200 answer (aws-sdk-go-v2 issues
// 1825 and 2737). The SDK's own retryer papers over it by retrying; this
// backend's retries are only for throttling, 5xx and timeouts, so the cause is
// removed instead.
type inMemoryBodies struct{ next http.RoundTripper }

// CloseIdleConnections closes the idle connections of the wrapped transport
// (http.Client.CloseIdleConnections looks for this method).
func (t inMemoryBodies) CloseIdleConnections() {
	if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// RoundTrip implements http.RoundTripper.
func (t inMemoryBodies) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return t.next.RoundTrip(req)
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, maxRequestBody+1))
	req.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	if len(body) > maxRequestBody {
		return nil, fmt.Errorf("request body larger than %d bytes", maxRequestBody)
	}
	r := *req // a RoundTripper must not change the caller's request
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	return t.next.RoundTrip(&r)
}

// sdkLogger passes the AWS SDK's log lines to slog: warnings as warnings,
// anything else at debug level.
type sdkLogger struct{ l *slog.Logger }

// Logf implements the SDK's logging.Logger.
func (s sdkLogger) Logf(c logging.Classification, format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	if c == logging.Warn {
		s.l.Warn(msg, "source", "aws-sdk")
		return
	}
	s.l.Debug(msg, "source", "aws-sdk")
}
