package gcpkms

import (
	"net/url"
	"strings"
	"testing"

	"github.com/kmsgate/kmsgate/backends/backendtest"
)

// FuzzParseURI checks the gcpkms URI parser: no input panics; a refused URI
// gets ErrInvalidURI with a reason and never shows a credential planted in
// it; an accepted URI names a CryptoKey resource (and, pinned, one of its
// versions), and its canonical form gcpkms:///NAME[?endpoint=E] parses to
// the same key, version and endpoint.
func FuzzParseURI(f *testing.F) {
	const key = "projects/p-1/locations/europe-west1/keyRings/ring_1/cryptoKeys/jwt-key"
	for _, s := range []string{
		"gcpkms://" + key,
		"gcpkms:///" + key,
		"gcpkms://" + key + "/cryptoKeyVersions/12",
		"gcpkms://" + key + "?endpoint=127.0.0.1:9000",
		"gcpkms://" + key + "?endpoint=[::1]:9000",
		"gcpkms://" + key + "?endpoint=cloudkms.example.internal:443",
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/0",
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/",
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k?endpoint=a:1&endpoint=b:2",
		"gcpkms://user:pw@projects/p/locations/l/keyRings/r/cryptoKeys/k",
		"gcpkms://projects:99/p/locations/l/keyRings/r/cryptoKeys/k",
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k#frag",
		"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k",
		"gcpkms:///projects/p%2Fq/locations/l/keyRings/r/cryptoKeys/k",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		for _, s := range append([]string{uri}, backendtest.WithSecret(uri)...) {
			u, err := url.Parse(s)
			if err != nil {
				continue // refused before the backend sees it (see backends.FuzzOpen)
			}
			k, pinned, ep, err := parseURI(u)
			if err != nil {
				backendtest.CheckRefusal(t, uri, s, err)
				continue
			}
			if !keyPathRE.MatchString(k) {
				t.Fatalf("%q: key %q is not a CryptoKey name", s, k)
			}
			if pinned != "" && (!versionPathRE.MatchString(pinned) || !strings.HasPrefix(pinned, k+"/cryptoKeyVersions/")) {
				t.Fatalf("%q: version %q is not a version of %q", s, pinned, k)
			}
			if ep != "" && checkEndpoint(ep) != nil {
				t.Fatalf("%q: endpoint %q accepted but not HOST:PORT", s, ep)
			}
			canon := &url.URL{Scheme: Scheme, Path: "/" + describe(k, pinned)}
			if ep != "" {
				canon.RawQuery = url.Values{"endpoint": {ep}}.Encode()
			}
			cu, err := url.Parse(canon.String())
			if err != nil {
				t.Fatalf("%q: canonical form %q does not parse: %v", s, canon, err)
			}
			k2, p2, ep2, err := parseURI(cu)
			if err != nil || k2 != k || p2 != pinned || ep2 != ep {
				t.Fatalf("%q parsed to %q %q %q, but its canonical form %q to %q %q %q, %v", s, k, pinned, ep, canon, k2, p2, ep2, err)
			}
		}
	})
}
