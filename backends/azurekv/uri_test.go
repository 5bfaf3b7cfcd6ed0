package azurekv

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/kmsgate/kmsgate/backends"
)

func TestParseURI(t *testing.T) {
	ver := "0123456789abcdef0123456789abcdef"
	good := []struct {
		uri                           string
		host, name, version, endpoint string
	}{
		{"azurekv://acme.vault.azure.net/keys/jwt", "acme.vault.azure.net", "jwt", "", ""},
		{"azurekv://Acme.Vault.Azure.Net/keys/jwt/" + strings.ToUpper(ver), "acme.vault.azure.net", "jwt", ver, ""},
		{"azurekv://pool-1.managedhsm.azure.net/keys/signing-key", "pool-1.managedhsm.azure.net", "signing-key", "", ""},
		{"azurekv://acme.vault.azure.cn/keys/jwt", "acme.vault.azure.cn", "jwt", "", ""},
		{"azurekv://acme.vault.azure.net/keys/jwt?endpoint=https://127.0.0.1:8443", "acme.vault.azure.net", "jwt", "", "https://127.0.0.1:8443"},
		{"azurekv://acme.vault.azure.net/keys/jwt?endpoint=https://kv.internal/", "acme.vault.azure.net", "jwt", "", "https://kv.internal"},
	}
	for _, g := range good {
		u, _ := url.Parse(g.uri)
		got, err := parseURI(u)
		if err != nil {
			t.Errorf("%s: %v", g.uri, err)
			continue
		}
		if got.host != g.host || got.name != g.name || got.version != g.version || got.endpoint != g.endpoint {
			t.Errorf("%s: %+v", g.uri, got)
		}
	}
	bad := map[string]string{
		"azurekv://acme.example.com/keys/jwt":                                           "not a Key Vault or Managed HSM host",
		"azurekv://vault.azure.net/keys/jwt":                                            "not a Key Vault",
		"azurekv://acme.vault.azure.net/secrets/jwt":                                    "want azurekv://",
		"azurekv://acme.vault.azure.net/keys":                                           "want azurekv://",
		"azurekv://acme.vault.azure.net/keys/jwt/v1":                                    "32 hexadecimal digits",
		"azurekv://acme.vault.azure.net/keys/jwt/" + ver + "/x":                         "want azurekv://",
		"azurekv://acme.vault.azure.net/keys/j_w_t":                                     "letters, digits and dashes",
		"azurekv://acme.vault.azure.net:443/keys/jwt":                                   "want azurekv://",
		"azurekv://user@acme.vault.azure.net/keys/jwt":                                  "want azurekv://",
		"azurekv://acme.vault.azure.net/keys/jwt?endpoint=http://127.0.0.1":             "https",
		"azurekv://acme.vault.azure.net/keys/jwt?endpoint=https://h/path":               "no path",
		"azurekv://acme.vault.azure.net/keys/jwt?region=x":                              "unknown parameter",
		"azurekv://acme.vault.azure.net/keys/jwt?endpoint=https://a&endpoint=https://b": "2 times",
	}
	for uri, want := range bad {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		_, err = parseURI(u)
		if !errors.Is(err, backends.ErrInvalidURI) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want ErrInvalidURI with %q", uri, err, want)
		}
	}
}

// TestTokenOnlyOnLoopback: a fixed token is refused unless the endpoint is
// on this machine, so it can never be sent to a real vault.
func TestTokenOnlyOnLoopback(t *testing.T) {
	t.Setenv(TokenEnv, "t")
	t.Setenv(EndpointEnv, "")
	t.Setenv(CACertEnv, "")
	for _, uri := range []string{
		"azurekv://acme.vault.azure.net/keys/jwt",
		"azurekv://acme.vault.azure.net/keys/jwt?endpoint=https://kv.internal:8443",
	} {
		_, err := backends.Open(context.Background(), uri, backends.Options{})
		if !errors.Is(err, backends.ErrConfig) || !strings.Contains(err.Error(), TokenEnv) {
			t.Errorf("%s: %v, want ErrConfig naming %s", uri, err, TokenEnv)
		}
	}
	for _, ep := range []string{"https://127.0.0.1:8443", "https://[::1]:8443", "https://localhost"} {
		if _, err := backends.Open(context.Background(), "azurekv://acme.vault.azure.net/keys/jwt?endpoint="+url.QueryEscape(ep), backends.Options{}); err != nil {
			t.Errorf("%s: %v", ep, err)
		}
	}
	// Without a fixed token, DefaultAzureCredential is set up; it makes no
	// call until the first request.
	t.Setenv(TokenEnv, "")
	b, err := backends.Open(context.Background(), "azurekv://acme.vault.azure.net/keys/jwt", backends.Options{})
	if err != nil {
		t.Fatalf("DefaultAzureCredential: %v", err)
	}
	if ab, ok := b.(*Backend); !ok || ab.Kind() != Scheme || !ab.HonorsDeadline() || ab.Name() != "azurekv://acme.vault.azure.net/keys/jwt" {
		t.Fatal("not an azurekv backend")
	}
	t.Setenv(CACertEnv, "/nonexistent/ca.pem")
	if _, err := backends.Open(context.Background(), "azurekv://acme.vault.azure.net/keys/jwt?endpoint=https://127.0.0.1:1", backends.Options{}); !errors.Is(err, backends.ErrConfig) || !strings.Contains(err.Error(), CACertEnv) {
		t.Errorf("missing CA file: %v", err)
	}
}

func response(status int, body string, header http.Header) error {
	resp := &http.Response{StatusCode: status, Status: http.StatusText(status), Header: header, Body: http.NoBody}
	if body != "" {
		resp.Body = nopCloser{strings.NewReader(body)}
	}
	return &azcore.ResponseError{StatusCode: status, RawResponse: resp}
}

type nopCloser struct{ *strings.Reader }

func (nopCloser) Close() error { return nil }

func TestClassify(t *testing.T) {
	kv := func(code, inner, msg string) string {
		s := `{"error":{"code":"` + code + `","message":"` + msg + `"`
		if inner != "" {
			s += `,"innererror":{"code":"` + inner + `"}`
		}
		return s + "}}"
	}
	cases := []struct {
		err  error
		want error
	}{
		{response(429, kv("Throttled", "", "too many"), nil), backends.ErrThrottled},
		{response(401, kv("Unauthorized", "", "AKV10032"), nil), backends.ErrPermission},
		{response(403, kv("Forbidden", "ForbiddenByRbac", "Caller is not authorized"), nil), backends.ErrPermission},
		{response(403, kv("Forbidden", "KeyDisabled", "Operation sign is not allowed on a disabled key."), nil), backends.ErrDisabled},
		{response(403, kv("Forbidden", "", "Operation sign is not allowed on an expired key."), nil), backends.ErrDisabled},
		{response(403, kv("Forbidden", "", "Operation sign is not permitted on this key."), nil), backends.ErrKeyType},
		{response(404, kv("KeyNotFound", "", "A key with (name/id) jwt was not found"), nil), backends.ErrNotFound},
		{response(500, "", nil), backends.ErrUnavailable},
		{response(503, "not json", nil), backends.ErrUnavailable},
		{&credentialError{errors.New("no managed identity")}, backends.ErrPermission},
		{errors.New("dial tcp: connection refused"), backends.ErrUnavailable},
		{context.DeadlineExceeded, backends.ErrUnavailable},
	}
	for _, c := range cases {
		if got := classify(c.err); !errors.Is(got, c.want) {
			t.Errorf("classify(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if got := classify(response(400, kv("BadParameter", "", "bad digest"), nil)); backends.Kind(got) != "unknown" || !strings.Contains(got.Error(), "HTTP 400 BadParameter: bad digest") {
		t.Errorf("400: %v", got)
	}
	if got := classify(context.Canceled); !errors.Is(got, context.Canceled) {
		t.Errorf("cancelled: %v", got)
	}
}

func TestRetryAfter(t *testing.T) {
	h := func(k, v string) http.Header { return http.Header{http.CanonicalHeaderKey(k): {v}} }
	for _, c := range []struct {
		err  error
		want time.Duration
	}{
		{response(429, "", h("Retry-After", "3")), 3 * time.Second},
		{response(429, "", h("retry-after-ms", "250")), 250 * time.Millisecond},
		{response(429, "", h("x-ms-retry-after-ms", "40")), 40 * time.Millisecond},
		{response(429, "", h("Retry-After", "soon")), 0},
		{response(429, "", nil), 0},
		{errors.New("x"), 0},
	} {
		if got := retryAfter(c.err); got != c.want {
			t.Errorf("retryAfter(%v) = %s, want %s", c.err, got, c.want)
		}
	}
	future := time.Now().Add(10 * time.Second).UTC().Format(http.TimeFormat)
	if got := retryAfter(response(429, "", h("Retry-After", future))); got < 8*time.Second || got > 10*time.Second {
		t.Errorf("HTTP-date Retry-After: %s", got)
	}
}
