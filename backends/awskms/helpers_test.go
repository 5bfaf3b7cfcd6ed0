package awskms_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsgate/kmsgate/backends"
	_ "github.com/kmsgate/kmsgate/backends/awskms"
	"github.com/kmsgate/kmsgate/backends/backendtest"
)

// localKMSEnv names the variable scripts/test.d/20-awskms.sh sets to the
// base URL of the local-kms process (http://127.0.0.1:PORT).
const localKMSEnv = "KMSGATE_TEST_LOCALKMS"

// testRegion is the region local-kms puts in its ARNs (the localkms
// command's default).
const testRegion = "eu-west-2"

// localKMS returns the local-kms base URL after pointing the AWS SDK's
// default chain at static test credentials and the test region, with every
// source that could reach the network (instance metadata, profiles) off.
func localKMS(t testing.TB) string {
	t.Helper()
	addr := backendtest.Require(t, localKMSEnv)
	awsTestEnv(t, true)
	return addr
}

// awsTestEnv sets the environment the SDK's default chain reads. With
// creds false no credentials can be found anywhere.
func awsTestEnv(t testing.TB, creds bool) {
	t.Helper()
	id, secret := "", ""
	if creds {
		id, secret = "AKIDKMSGATETEST", "kmsgate-test-secret"
	}
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":                      id,
		"AWS_SECRET_ACCESS_KEY":                  secret,
		"AWS_SESSION_TOKEN":                      "",
		"AWS_REGION":                             testRegion,
		"AWS_DEFAULT_REGION":                     "",
		"AWS_PROFILE":                            "",
		"AWS_CONFIG_FILE":                        "/nonexistent/kmsgate-test/config",
		"AWS_SHARED_CREDENTIALS_FILE":            "/nonexistent/kmsgate-test/credentials",
		"AWS_EC2_METADATA_DISABLED":              "true",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI":     "",
		"AWS_WEB_IDENTITY_TOKEN_FILE":            "",
		"AWS_ENDPOINT_URL":                       "",
		"AWS_ENDPOINT_URL_KMS":                   "",
		"AWS_MAX_ATTEMPTS":                       "",
		"AWS_RETRY_MODE":                         "",
	} {
		t.Setenv(k, v)
	}
}

// admin is a plain AWS SDK client of local-kms that tests use to create,
// alias, disable and delete keys: the operator's side, not the gateway's.
type admin struct {
	t testing.TB
	c *kms.Client
}

func newAdmin(t testing.TB, endpoint string) *admin {
	t.Helper()
	return &admin{t: t, c: sdkClient(endpoint)}
}

// sdkClient returns a bare SDK client of an endpoint with static test
// credentials and the SDK's default settings, except for an idle connection
// pool as large as the backend's (the default keeps 10 per host), so that
// concurrent benchmarks compare like with like.
func sdkClient(endpoint string) *kms.Client {
	creds := aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{AccessKeyID: "AKIDKMSGATETEST", SecretAccessKey: "kmsgate-test-secret", Source: "test"}, nil
	})
	hc := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 256, 256
	})
	return kms.NewFromConfig(aws.Config{Region: testRegion, Credentials: aws.NewCredentialsCache(creds), HTTPClient: hc}, func(o *kms.Options) {
		o.BaseEndpoint = aws.String(endpoint)
	})
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// createKey creates a key and returns its metadata.
func (a *admin) createKey(spec types.KeySpec, usage types.KeyUsageType) *types.KeyMetadata {
	a.t.Helper()
	out, err := a.c.CreateKey(ctxT(a.t), &kms.CreateKeyInput{KeySpec: spec, KeyUsage: usage, Description: aws.String("kmsgate test " + a.t.Name())})
	if err != nil {
		a.t.Fatalf("create %s %s key: %v", spec, usage, err)
	}
	return out.KeyMetadata
}

// p256 creates an ECC_NIST_P256 SIGN_VERIFY key.
func (a *admin) p256() *types.KeyMetadata {
	a.t.Helper()
	return a.createKey(types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify)
}

// alias points alias name at a key.
func (a *admin) alias(name, keyID string) {
	a.t.Helper()
	if _, err := a.c.CreateAlias(ctxT(a.t), &kms.CreateAliasInput{AliasName: aws.String(name), TargetKeyId: aws.String(keyID)}); err != nil {
		a.t.Fatalf("create alias %s: %v", name, err)
	}
}

func (a *admin) disable(keyID string) {
	a.t.Helper()
	if _, err := a.c.DisableKey(ctxT(a.t), &kms.DisableKeyInput{KeyId: aws.String(keyID)}); err != nil {
		a.t.Fatalf("disable %s: %v", keyID, err)
	}
}

func (a *admin) enable(keyID string) {
	a.t.Helper()
	if _, err := a.c.EnableKey(ctxT(a.t), &kms.EnableKeyInput{KeyId: aws.String(keyID)}); err != nil {
		a.t.Fatalf("enable %s: %v", keyID, err)
	}
}

func (a *admin) scheduleDeletion(keyID string) {
	a.t.Helper()
	if _, err := a.c.ScheduleKeyDeletion(ctxT(a.t), &kms.ScheduleKeyDeletionInput{KeyId: aws.String(keyID), PendingWindowInDays: aws.Int32(7)}); err != nil {
		a.t.Fatalf("schedule deletion of %s: %v", keyID, err)
	}
}

// publicKey fetches a key's public key directly, for comparison with what
// the backend reports.
func (a *admin) publicKey(keyID string) *ecdsa.PublicKey {
	a.t.Helper()
	out, err := a.c.GetPublicKey(ctxT(a.t), &kms.GetPublicKeyInput{KeyId: aws.String(keyID)})
	if err != nil {
		a.t.Fatalf("get public key of %s: %v", keyID, err)
	}
	pub, err := x509.ParsePKIXPublicKey(out.PublicKey)
	if err != nil {
		a.t.Fatal(err)
	}
	return pub.(*ecdsa.PublicKey)
}

var nonAlias = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// aliasPrefix returns a fresh alias prefix "alias/kmsgate-test/NAME-RANDOM/"
// so that tests sharing one local-kms never see each other's aliases.
func aliasPrefix(t testing.TB) string {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return "alias/kmsgate-test/" + nonAlias.ReplaceAllString(t.Name(), "-") + "-" + hex.EncodeToString(r[:]) + "/"
}

// hostURI returns an awskms URI with endpoint's host: awskms://127.0.0.1:PORT/REF.
func hostURI(t testing.TB, endpoint, ref string) string {
	t.Helper()
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	return "awskms://" + u.Host + "/" + ref
}

// open opens a key URI through the backend registry.
func open(t testing.TB, uri string, opts backends.Options) backends.Backend {
	t.Helper()
	b, err := backends.Open(ctxT(t), uri, opts)
	if err != nil {
		t.Fatalf("open %s: %v", uri, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// waitNextSecond sleeps until the wall clock enters a new second: local-kms
// records creation times in whole seconds, and rotation tests need keys
// whose creation times differ.
func waitNextSecond() {
	now := time.Now()
	time.Sleep(now.Truncate(time.Second).Add(time.Second + 10*time.Millisecond).Sub(now))
}

// proxy is a reverse proxy on 127.0.0.1 in front of local-kms that counts
// calls per operation and injects faults: error answers, latency, hangs and
// rewritten answers.
type proxy struct {
	URL string

	delay atomic.Int64 // nanoseconds added to every request

	mu      sync.Mutex
	faults  []*fault
	counts  map[string]int
	rewrite func(op string, body []byte) []byte
	record  bool
	bodies  map[string][]string // request bodies by operation, when record is set
}

// fault answers the next n calls of operation op (all operations when op is
// "") with an HTTP status and body, or hangs them when hang is set.
type fault struct {
	op     string
	n      int
	status int
	body   string
	hang   bool
}

func newProxy(t testing.TB, target string) *proxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{counts: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 256, 256 // room for 64 concurrent signatures
	rp.Transport = tr
	t.Cleanup(tr.CloseIdleConnections)
	rp.ModifyResponse = func(resp *http.Response) error {
		p.mu.Lock()
		rw := p.rewrite
		p.mu.Unlock()
		if rw == nil {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		body = rw(operation(resp.Request), body)
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op := operation(r)
		// The outbound request gets the body in memory: the transport may
		// read a streamed body after the answer came back, and fails the
		// connection if it was closed by then (see awskms.inMemoryBodies).
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		p.mu.Lock()
		p.counts[op]++
		if p.record {
			p.bodies[op] = append(p.bodies[op], string(body))
		}
		var f *fault
		for _, c := range p.faults {
			if c.n > 0 && (c.op == "" || c.op == op) {
				c.n--
				f = c
				break
			}
		}
		p.mu.Unlock()
		if d := time.Duration(p.delay.Load()); d > 0 {
			tm := time.NewTimer(d)
			select {
			case <-tm.C:
			case <-r.Context().Done():
				tm.Stop()
				return
			}
		}
		switch {
		case f == nil:
			rp.ServeHTTP(w, r)
		case f.hang:
			select {
			case <-r.Context().Done():
			case <-time.After(30 * time.Second):
			}
		default:
			w.Header().Set("Content-Type", "application/x-amz-json-1.1")
			w.WriteHeader(f.status)
			_, _ = io.WriteString(w, f.body)
		}
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// operation is the KMS operation of a request, from X-Amz-Target.
func operation(r *http.Request) string {
	return strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "TrentService.")
}

// inject queues a fault.
func (p *proxy) inject(f fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = append(p.faults, &f)
}

// clearFaults drops the queued faults and the rewrite.
func (p *proxy) clearFaults() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults, p.rewrite = nil, nil
}

// setRewrite rewrites the body of every answer passed through.
func (p *proxy) setRewrite(fn func(op string, body []byte) []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rewrite = fn
}

// recordRequests makes the proxy keep request bodies (see requests).
func (p *proxy) recordRequests() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record, p.bodies = true, map[string][]string{}
}

// requests returns the recorded request bodies of op.
func (p *proxy) requests(op string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.bodies[op]...)
}

// count returns how many calls of op reached the proxy.
func (p *proxy) count(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[op]
}

// resetCounts zeroes the counters.
func (p *proxy) resetCounts() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.counts = map[string]int{}
}

// awsError is the body of an AWS JSON protocol error answer.
func awsError(code string) string {
	return fmt.Sprintf(`{"__type":%q,"message":"injected by the kmsgate test proxy"}`, code)
}

// countKeys returns how many keys a JWKS document holds.
func countKeys(t testing.TB, doc []byte) int {
	t.Helper()
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		t.Fatalf("JWKS %s: %v", doc, err)
	}
	return len(set.Keys)
}

// delayProxy is a TCP proxy on 127.0.0.1 that delays every chunk the
// server sends by a fixed latency, as a network round trip would: a cheap
// way to give local-kms the latency of a remote service without spending
// the CPU of an HTTP proxy on the same machine as the code measured.
type delayProxy struct {
	Addr string // host:port
}

func newDelayProxy(t testing.TB, target string, latency time.Duration) *delayProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	done := make(chan struct{})
	t.Cleanup(func() {
		close(done)
		ln.Close()
		mu.Lock()
		for _, c := range conns { // idle keep-alive connections of the clients
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", u.Host)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Add(2)
			go func() { // client to server, at once
				defer wg.Done()
				// Plain reads and writes: io.Copy between two TCP
				// connections splices, which serialised concurrent
				// connections here.
				_, _ = io.Copy(struct{ io.Writer }{s}, struct{ io.Reader }{c})
				s.Close()
			}()
			go func() { // server to client, each chunk latency later
				defer wg.Done()
				defer c.Close()
				type chunk struct {
					b  []byte
					at time.Time
				}
				q := make(chan chunk, 1024)
				go func() {
					defer close(q)
					buf := make([]byte, 32<<10)
					for {
						n, err := s.Read(buf)
						if n > 0 {
							q <- chunk{append([]byte(nil), buf[:n]...), time.Now().Add(latency)}
						}
						if err != nil {
							return
						}
					}
				}()
				for ch := range q {
					select {
					case <-time.After(time.Until(ch.at)):
					case <-done:
						s.Close()
						return
					}
					if _, err := c.Write(ch.b); err != nil {
						s.Close()
						return
					}
				}
			}()
		}
	}()
	return &delayProxy{Addr: ln.Addr().String()}
}
