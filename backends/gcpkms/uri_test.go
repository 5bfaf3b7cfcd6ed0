package gcpkms

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/kmsgate/kmsgate/backends"
)

func TestParseURI(t *testing.T) {
	const key = "projects/p-1/locations/europe-west1/keyRings/ring_1/cryptoKeys/jwt-key"
	for _, tc := range []struct {
		uri, key, pinned, endpoint string
	}{
		{"gcpkms://" + key, key, "", ""},
		{"gcpkms:///" + key, key, "", ""},
		{"gcpkms://" + key + "/cryptoKeyVersions/12", key, key + "/cryptoKeyVersions/12", ""},
		{"gcpkms://" + key + "?endpoint=127.0.0.1:9000", key, "", "127.0.0.1:9000"},
		{"gcpkms://" + key + "?endpoint=cloudkms.example.internal:443", key, "", "cloudkms.example.internal:443"},
		{"gcpkms://" + key + "?endpoint=[::1]:9000", key, "", "[::1]:9000"},
	} {
		u, err := url.Parse(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		k, p, ep, err := parseURI(u)
		if err != nil || k != tc.key || p != tc.pinned || ep != tc.endpoint {
			t.Errorf("%s: got %q %q %q %v", tc.uri, k, p, ep, err)
		}
	}
	for uri, want := range map[string]string{
		"gcpkms://projects/p/locations/l/keyRings/r":                                        "is not projects/P/",
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/":                            "is not projects/P/",
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/":        "is not projects/P/",
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/0":       "is not projects/P/",
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/x":       "is not projects/P/",
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k/extra":                     "is not projects/P/",
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k?endpoint=nohost":           "endpoint",
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k?endpoint=:443":             "endpoint",
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k?region=x":                  `unknown parameter "region"`,
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k?endpoint=a:1&endpoint=b:2": "endpoint given 2 times",
		"gcpkms://user:pw@projects/p/locations/l/keyRings/r/cryptoKeys/k":                   "want gcpkms://",
		"gcpkms://projects:99/p/locations/l/keyRings/r/cryptoKeys/k":                        "want gcpkms://",
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k#frag":                      "want gcpkms://",
	} {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		_, _, _, err = parseURI(u)
		if !errors.Is(err, backends.ErrInvalidURI) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want ErrInvalidURI with %q", uri, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "pw") {
			t.Errorf("%s: error shows the password: %v", uri, err)
		}
	}
}

func TestLoopback(t *testing.T) {
	for ep, want := range map[string]bool{
		"127.0.0.1:1": true, "127.1.2.3:1": true, "[::1]:1": true, "localhost:1": true,
		"10.0.0.1:443": false, "cloudkms.googleapis.com:443": false, "localhost.example.com:1": false,
	} {
		if got := isLoopback(ep); got != want {
			t.Errorf("isLoopback(%s) = %v", ep, got)
		}
	}
}

func TestEndpointEnv(t *testing.T) {
	const key = "gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k"
	t.Setenv(EndpointEnv, "127.0.0.1:1234")
	b, err := backends.Open(context.Background(), key, backends.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if ep := b.(*Backend).endpoint; ep != "127.0.0.1:1234" {
		t.Fatalf("endpoint %q from %s", ep, EndpointEnv)
	}
	// The URI's parameter wins over the environment.
	b2, err := backends.Open(context.Background(), key+"?endpoint=127.0.0.1:99", backends.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if ep := b2.(*Backend).endpoint; ep != "127.0.0.1:99" {
		t.Fatalf("endpoint %q", ep)
	}
	t.Setenv(EndpointEnv, "not an endpoint")
	if _, err := backends.Open(context.Background(), key, backends.Options{}); !errors.Is(err, backends.ErrInvalidURI) || !strings.Contains(err.Error(), EndpointEnv) {
		t.Fatalf("bad %s: %v", EndpointEnv, err)
	}
}

// TestNoCredentials: without Application Default Credentials and without a
// loopback endpoint, opening fails with a clear error instead of signing
// anonymously.
func TestNoCredentials(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", dir+"/missing.json")
	t.Setenv("HOME", dir)
	t.Setenv("CLOUDSDK_CONFIG", dir)
	t.Setenv("GCE_METADATA_HOST", "127.0.0.1:1") // never reach a real metadata server
	t.Setenv(EndpointEnv, "")
	_, err := backends.Open(context.Background(), "gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k", backends.Options{})
	if !errors.Is(err, backends.ErrPermission) || !strings.Contains(err.Error(), "Application Default Credentials") {
		t.Fatalf("no credentials: %v", err)
	}
}
